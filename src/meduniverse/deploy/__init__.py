"""Deployment across hospitals on Flower's Deployment Engine: one SuperLink (the server) and one
SuperNode per site.

* `credentials`: a CA, the SuperLink's TLS certificate, per site a node key pair and a TLS
certificate.
* `prepare`: the shared federation (no data paths), the server's pool files and each site's private
file.
* `network`: checks of the SuperLink's reachability and certificate, and of a site's data file.
* `flower`: Flower's commands (SuperLink, SuperNode, registration, `flwr run` and a run's status).
* `processes`: starting and stopping those processes.
* `commands`: the `meduniverse deploy` commands; `apps`: the ServerApp and ClientApp that `flwr run`
loads.
"""
