"""`python -m meduniverse`: the same commands as `meduniverse`."""

from meduniverse.interfaces.cli import main

main()
