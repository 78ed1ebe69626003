"""The Flower apps for the Deployment Engine: `flwr run` loads `server_app` and `client_app` from here.

What each side is told, and by whom:

* the run config (the app's ``[tool.flwr.app.config]``, fused with ``flwr run --run-config``), the same for
  the server and every node: ``federation``, the text of the *shared* federation TOML (sites' names, tasks
  and classes, the input specs, the model, the method; never a site's data path), ``run-dir`` (absolute,
  on the server machine) and ``seed`` (-1: the federation's own);
* each SuperNode's ``--node-config "site='NAME' data='/path/NAME.npz'"``: which site it is and its own
  data file. Only that node ever sees that path.

The server never opens a site's data: its pool comes from ``pool.files`` (``meduniverse deploy prepare``
exports it), and a shared federation that names a site's data file is refused.
"""

from dataclasses import replace
import logging
from pathlib import Path
import time
import tomllib
from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from meduniverse.checkpoints import Checkpoints
from meduniverse.config import FederationConfig, parse_config
from meduniverse.errors import ConfigError, DataError, StageError
from meduniverse.federation.client_app import make_client_app
from meduniverse.progress import RunProgress, log

RUN_CONFIG_DEFAULTS: dict[str, Any] = {"federation": "", "run-dir": "", "seed": -1}
PRIVATE_SOURCES = ("path", "medmnist", "medmnist_root", "medmnist_size")
SHARED = "the shared federation (run config 'federation')"


def federation_document(text: str) -> dict[str, Any]:
    if not text.strip():
        raise ConfigError(f"{SHARED} is empty: launch the run with 'meduniverse deploy run FEDERATION.toml ...'")
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{SHARED} is not valid TOML ({exc})") from exc


def _site_tables(raw: dict[str, Any]) -> list[dict[str, Any]]:
    sites = raw.get("sites")
    if not isinstance(sites, list) or not all(isinstance(s, dict) for s in sites):
        raise ConfigError(f"{SHARED}: needs [[sites]] tables")
    return sites


def server_config(text: str, check_files: bool = True) -> FederationConfig:
    """The federation as the server sees it: every site's name, task and classes, none of their data.

    A site's data source may only be `synthetic` (generated, nothing private on disk); sites without a source
    hold their data on their own node. The pool must come from files (or synthetic sites), which must exist
    (`check_files`) on the server machine.
    """
    raw = federation_document(text)
    private = []
    for table in _site_tables(raw):
        named = [k for k in PRIVATE_SOURCES if k in table]
        if named:
            raise ConfigError(f"{SHARED}: site '{table.get('name')}' names its data ({', '.join(named)}); in a deployment "
                              f"only the site's own node names its file (--node-config \"data='...'\"); "
                              f"'meduniverse deploy prepare' writes a shared federation without data paths")
        if "synthetic" not in table:
            private.append(table.get("name"))
            table["path"] = "held-by-the-site.npz"  # satisfies the one-source check, removed below; never opened
    files = raw.get("pool", {}).get("files", []) if isinstance(raw.get("pool"), dict) else []
    relative = [f for f in files if isinstance(f, str) and not Path(f).expanduser().is_absolute()]
    if relative:
        raise ConfigError(f"{SHARED}: pool.files must be absolute paths on the server machine, got {relative}")
    config = parse_config(raw, SHARED, Path("/"))
    for name in config.pool.sites:
        if name in private:
            raise ConfigError(f"{SHARED}: pool.sites names '{name}', whose data only its own node holds; "
                              f"export the pool to files (meduniverse deploy prepare) and list them in pool.files")
    for path in config.pool.files if check_files else ():
        if not path.is_file():
            raise DataError(f"{path}: server pool file not found (pool.files of {SHARED})")
    return replace(config, sites=tuple(replace(s, path=None) if s.name in private else s for s in config.sites))


def site_config(text: str, site: str, data: str | None, base: Path | None = None) -> FederationConfig:
    """The federation as one node sees it: only its own site, reading only its own data file (`data`)."""
    raw = federation_document(text)
    tables = {str(t.get("name")): t for t in _site_tables(raw)}
    if site not in tables:
        raise ConfigError(f"this node's site '{site}' is not in {SHARED} (sites: {', '.join(tables)})")
    own = dict(tables[site])
    if data is not None:
        for key in (*PRIVATE_SOURCES, "synthetic"):
            own.pop(key, None)
        path = Path(data).expanduser()
        path = path if path.is_absolute() else (base or Path.cwd()) / path
        if not path.is_file():
            raise DataError(f"site '{site}': data file {path} not found (this node's --node-config data)")
        own["path"] = str(path)
    elif "synthetic" not in own:
        raise ConfigError(f"site '{site}': this node was given no data file; start its SuperNode with "
                          f"--node-config \"site='{site}' data='/path/to/{site}.npz'\"")
    raw["sites"] = [own]
    pool = dict(raw.get("pool", {}))
    pool["sites"] = [s for s in pool.get("sites", []) if s == site]  # a pool site lends the same images as always
    pool["files"] = []  # the server's business
    raw["pool"] = pool
    raw.pop("data_root", None)
    return parse_config(raw, f"{SHARED} at site '{site}'", base or Path.cwd())


def node_federation(context: Context) -> FederationConfig:
    """ClientApp config source: the shared federation reduced to this node's site and its own data file."""
    node = context.node_config
    if "site" not in node:
        raise ConfigError("this SuperNode's --node-config names no site: start it with "
                          "--node-config \"site='NAME' data='/path/to/NAME.npz'\"")
    data = node.get("data")
    return site_config(str(context.run_config.get("federation", "")), str(node["site"]), None if data is None else str(data))


def run_settings(run_config: dict[str, Any]) -> tuple[FederationConfig, Path, int]:
    """The server's reading of the run config: the federation, the run directory and the seed."""
    config = server_config(str(run_config.get("federation", "")))
    run_dir = str(run_config.get("run-dir", ""))
    if not run_dir or not Path(run_dir).is_absolute():
        raise ConfigError(f"run config 'run-dir' must be an absolute path on the server machine, got {run_dir!r}")
    seed = int(run_config.get("seed", -1))
    return config, Path(run_dir), config.seed if seed < 0 else seed


def check_registered_names(grid: Grid, roster: dict[int, str]) -> str:
    """A node registered under a site's name (flwr supernode register --name) must not answer as another site.

    Returns a line for the log: which node each site is, and its registered name."""
    names = {node.node_id: node.name for node in grid.get_nodes()}
    for node, site in roster.items():
        if names.get(node) and names[node] != site:
            raise StageError(f"node {node}, registered as '{names[node]}', answered as site '{site}': refused")
    return ", ".join(f"{site} = node {node} (registered as '{names.get(node) or '?'}')"
                     for node, site in sorted(roster.items(), key=lambda x: x[1]))


class _RunDirLog(logging.FileHandler):
    """run_dir/log.txt, opened (and run_dir created) only when the first record comes."""

    def __init__(self, path: Path):
        self.target = path
        super().__init__(path, delay=True)
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))

    def _open(self):
        self.target.parent.mkdir(parents=True, exist_ok=True)
        return super()._open()


def serve(grid: Grid, context: Context) -> None:
    """The deployed server: check everything, then the same flow as `meduniverse run`, then model and results.

    Nothing is written to the run directory before the run config, the pool files and every site's handshake
    have passed. Every error propagates, so Flower marks the run failed (`flwr ls`: finished:failed).
    """
    from meduniverse.evaluation import git_commit, results_document
    from meduniverse.federation.server_app import handshake, run_federation
    from meduniverse.files import write_json
    from meduniverse.model_io import save_model
    from meduniverse.models.universal import build_model
    from meduniverse.pipeline import check_same_run

    started = time.perf_counter()
    log.setLevel(logging.INFO)
    config, run_dir, seed = run_settings(context.run_config)
    check_same_run(run_dir, config)
    roster = handshake(grid, config)
    nodes = check_registered_names(grid, roster)
    handler = _RunDirLog(run_dir / "log.txt")
    # the run's log also goes where Flower's own records go (`flwr log RUN_ID`)
    handlers = [handler, *(h for h in logging.getLogger("flwr").handlers if h not in log.handlers)]
    for h in handlers:
        log.addHandler(h)
    try:
        log.info("deployed run %s: sites %s, seed %d, run directory %s", config.name, ", ".join(sorted(roster.values())),
                 seed, run_dir)
        log.info("nodes: %s", nodes)
        write_json(run_dir / "config.json", config.to_dict())
        run_federation(grid, config, run_dir, seed, RunProgress(enabled=False), roster=roster)
        ckpt = Checkpoints(run_dir)
        model = build_model(config)
        model.load_state_dict(ckpt.load_stage(config.method.stages))
        save_model(model, config, run_dir / "model", {"stage": config.method.stages, "seed": seed})
        results = results_document(config, {str(seed): ckpt.evaluation(config.method.stages)}, [seed],
                                   {"stages": ckpt.progress()["stages"], "evaluation_seconds": ckpt.evaluation_seconds(),
                                    "run_seconds": time.perf_counter() - started, "deployment": True}, git_commit())
        write_json(run_dir / "results.json", results)
        log.info("results written to %s", run_dir / "results.json")
    except BaseException as exc:
        log.error("deployed run failed: %s", exc)
        raise
    finally:
        for h in handlers:
            log.removeHandler(h)
        handler.close()


server_app = ServerApp()


@server_app.main()
def _main(grid: Grid, context: Context) -> None:
    serve(grid, context)


client_app = make_client_app(node_federation)
