"""`python -m meduniverse.deploy`: the same commands as `meduniverse deploy`."""

from meduniverse.deploy.commands import app

app()
