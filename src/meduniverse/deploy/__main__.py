"""`python -m meduniverse.deploy`: the same commands as `meduniverse deploy`."""

import sys

from meduniverse.interfaces.cli import main

main(["deploy", *sys.argv[1:]])
