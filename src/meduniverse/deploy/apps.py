"""The Flower apps for the Deployment Engine: `flwr run` loads `server_app` and `client_app` from
here.

What each side is told, and by whom:

* the run config (the app's ``[tool.flwr.app.config]``, fused with ``flwr run --run-config``), the
same for
  the server and every node: ``federation``, the text of the *shared* federation TOML (sites' names,
  tasks
  and classes, the input specs, the model, the method; never a site's data path), ``run-dir``
  (absolute,
  on the server machine) and ``seed`` (-1: the federation's own);
* each SuperNode's ``--node-config "site='NAME' data='/path/NAME.npz'"``: which site it is and its
own
  data file. Only that node ever sees that path.

The server never opens a site's data: its pool comes from ``pool.files`` (``meduniverse deploy
prepare`` exports it), and a shared federation that names a site's data file is refused.
"""

from pathlib import Path
import time
from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from meduniverse.core.config import FederationConfig
from meduniverse.core.errors import ConfigError, StageError
from meduniverse.core.files import write_json
from meduniverse.core.progress import RunProgress, log
from meduniverse.core.provenance import git_commit
from meduniverse.federation.client_app import make_client_app
from meduniverse.federation.exchange import handshake
from meduniverse.federation.server_app import run_federation
from meduniverse.federation.shared import server_config, site_config
from meduniverse.results.run import check_same_run, finish_run, run_log
from meduniverse.sites.pool import build_pool


def node_federation(context: Context) -> FederationConfig:
    """ClientApp config source: the shared federation reduced to this node's site and its own data
    file."""
    node = context.node_config
    if "site" not in node:
        raise ConfigError(
            "this SuperNode's --node-config names no site: start it with "
            "--node-config \"site='NAME' data='/path/to/NAME.npz'\""
        )
    data = node.get("data")
    return site_config(
        str(context.run_config.get("federation", "")),
        str(node["site"]),
        None if data is None else str(data),
    )


def run_settings(run_config: dict[str, Any]) -> tuple[FederationConfig, Path, int]:
    """The server's reading of the run config: the federation, the run directory and the seed."""
    config = server_config(str(run_config.get("federation", "")))
    run_dir = str(run_config.get("run-dir", ""))
    if not run_dir or not Path(run_dir).is_absolute():
        raise ConfigError(
            f"run config 'run-dir' must be an absolute path on the server machine, got {run_dir!r}"
        )
    seed = int(run_config.get("seed", -1))
    return config, Path(run_dir), config.seed if seed < 0 else seed


def check_registered_names(grid: Grid, roster: dict[int, str]) -> str:
    """A node registered under a site's name (flwr supernode register --name) must not answer as
    another site.

    Returns a line for the log: which node each site is, and its registered name."""
    names = {node.node_id: node.name for node in grid.get_nodes()}
    for node, site in roster.items():
        if names.get(node) and names[node] != site:
            raise StageError(
                f"node {node}, registered as '{names[node]}', answered as site '{site}': refused"
            )
    return ", ".join(
        f"{site} = node {node} (registered as '{names.get(node) or '?'}')"
        for node, site in sorted(roster.items(), key=lambda x: x[1])
    )


def serve(grid: Grid, context: Context) -> None:
    """The deployed server: check everything, then the same flow as `meduniverse run`, then model
    and results.

    Nothing is written to the run directory before the run config, the pool files and every site's
    handshake have passed. Every error propagates, so Flower marks the run failed (`flwr ls`:
    finished:failed).
    """
    started, commit = time.perf_counter(), git_commit()
    config, run_dir, seed = run_settings(context.run_config)
    check_same_run(run_dir, config)
    pool = build_pool(config)
    roster = handshake(grid, config)
    nodes = check_registered_names(grid, roster)
    with run_log(run_dir, deployed=True):
        try:
            log.info(
                "deployed run %s: sites %s, seed %d, run directory %s",
                config.name,
                ", ".join(sorted(roster.values())),
                seed,
                run_dir,
            )
            log.info("nodes: %s", nodes)
            write_json(run_dir / "config.json", config.to_dict())
            run_federation(
                grid, config, run_dir, seed, pool, RunProgress(enabled=False), roster=roster
            )
            finish_run(run_dir, config, seed, started, commit, {"deployment": True})
        except BaseException as exc:
            log.error("deployed run failed: %s", exc)
            raise


server_app = ServerApp()


@server_app.main()
def _main(grid: Grid, context: Context) -> None:
    serve(grid, context)


client_app = make_client_app(node_federation)
