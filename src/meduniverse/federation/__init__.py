"""Flower wiring: sites are ClientApps, the server is a ServerApp whose strategy distils site
models."""
