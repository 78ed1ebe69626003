"""Flower's own commands for a deployment: the SuperLink and SuperNode command lines, the CLI's
connection, node
registration, the Flower App that `flwr run` ships, and a run's status."""

import json
from pathlib import Path
import subprocess
import tempfile
import time

import tomli_w

from meduniverse.core.errors import DeployError
from meduniverse.deploy.environment import flower_env, tool
from meduniverse.deploy.network import existing_file

CONNECTION = "meduniverse"  # the SuperLink connection's name in FLWR_HOME/config.toml
FINISHED = "finished"

APP_PYPROJECT = """\
# The Flower App that `flwr run` ships: only this file. The code is the installed meduniverse
# package, which must be importable wherever the SuperLink and the SuperNodes run.
[project]
name = "meduniverse-app"
version = "0.1.0"
description = "meduniverse: a universal medical imaging model from many hospitals' private data"
license = "Apache-2.0"
dependencies = []

[tool.flwr.app]
publisher = "meduniverse"
fab-include = ["pyproject.toml"{extra_include}]

[tool.flwr.app.components]
serverapp = "{serverapp}"
clientapp = "{clientapp}"

[tool.flwr.app.config]
federation = ""   # the shared federation TOML, as text (meduniverse deploy run fills it in)
run-dir = ""      # absolute path on the server machine
seed = -1         # -1: the federation's seed
"""


def superlink_argv(
    server_dir: Path, state: Path | None = None, host: str = "127.0.0.1", port: int = 8000
) -> list[str]:
    """flower-superlink with TLS on its one API (Fleet, Control, Runtime), node authentication, no
    runtime
    dependency installation, and its state (registered nodes, runs) in `state` so that it survives a
    restart."""
    server_dir = Path(server_dir)
    files = [
        existing_file(server_dir / n, "server credential")
        for n in ("ca.crt", "server.pem", "server.key")
    ]
    cmd = [
        tool("flower-superlink"),
        "--ssl-ca-certfile",
        str(files[0]),
        "--ssl-certfile",
        str(files[1]),
        "--ssl-keyfile",
        str(files[2]),
        "--enable-supernode-auth",
        "--disable-runtime-dependency-installation",
        "--host",
        host,
        "--port",
        str(port),
    ]
    if state is not None:
        cmd += ["--database", str(Path(state).resolve())]
    return cmd


def supernode_argv(
    site_dir: Path,
    site: str,
    data: Path | None,
    superlink: str,
    port: int,
    extra_node_config: str = "",
) -> list[str]:
    """flower-supernode for one site: its key, the CA to check the SuperLink, TLS on its own local
    API,
    and a node config naming its site and its own data file only."""
    site_dir = Path(site_dir)
    ca, key, pem, tls_key = (
        existing_file(site_dir / n, f"site '{site}' credential")
        for n in ("ca.crt", "node.key", "tls.pem", "tls.key")
    )
    node_config = f"site='{site}'" + (f" data='{Path(data).resolve()}'" if data is not None else "")
    if extra_node_config:
        node_config += f" {extra_node_config}"
    return [
        tool("flower-supernode"),
        "--superlink",
        superlink,
        "--root-certificates",
        str(ca),
        "--auth-supernode-private-key",
        str(key),
        "--ssl-certfile",
        str(pem),
        "--ssl-keyfile",
        str(tls_key),
        "--ssl-ca-certfile",
        str(ca),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--node-config",
        node_config,
    ]


def write_connection(flwr_home: Path, superlink: str, ca: Path) -> Path:
    """FLWR_HOME/config.toml naming one SuperLink connection (Flower's CLI would otherwise start a
    local one)."""
    ca = existing_file(ca, "CA certificate")
    flwr_home = Path(flwr_home)
    flwr_home.mkdir(parents=True, exist_ok=True)
    path = flwr_home / "config.toml"
    path.write_text(
        tomli_w.dumps(
            {
                "superlink": {
                    "default": CONNECTION,
                    CONNECTION: {"address": superlink, "root-certificates": str(ca)},
                }
            }
        )
    )
    return path


def _flwr_json(args: list[str], flwr_home: Path, what: str, timeout: float = 120) -> dict:
    out = subprocess.run(
        [tool("flwr"), *args, "--format", "json"],
        capture_output=True,
        text=True,
        check=False,
        env=flower_env(flwr_home),
        timeout=timeout,
    )
    text = out.stdout.strip()
    start = text.find("{")
    try:
        doc = json.loads(text[start:]) if start >= 0 else {}
    except json.JSONDecodeError:
        doc = {}
    if out.returncode != 0 or not doc.get("success", False):
        reason = (
            doc.get("error-message")
            or (out.stderr.strip() or text or f"exit status {out.returncode}").splitlines()[-1]
        )
        raise DeployError(f"{what} failed: {reason}")
    return doc


def register_sites(
    credentials: Path, flwr_home: Path, sites: list[str] | None = None
) -> dict[str, int]:
    """Register each site's public key (credentials/server/nodes/SITE.pub, or
    credentials/sites/SITE/node.pub)
    with the SuperLink under the site's name. Only registered keys can join. Returns site -> node
    id."""
    credentials = Path(credentials)
    folder = (
        credentials / "nodes"
        if (credentials / "nodes").is_dir()
        else credentials / "server" / "nodes"
    )
    keys = {p.stem: p for p in sorted(folder.glob("*.pub"))} if folder.is_dir() else {}
    if not keys:
        raise DeployError(f"no public keys in {folder} (made by 'meduniverse deploy credentials')")
    sites = sites or list(keys)
    out = {}
    for site in sites:
        if site not in keys:
            raise DeployError(f"site '{site}': no public key {folder / (site + '.pub')}")
        doc = _flwr_json(
            ["supernode", "register", str(keys[site]), CONNECTION, "--name", site],
            flwr_home,
            f"registering site '{site}'",
        )
        out[site] = int(doc["node-id"])
    return out


def list_nodes(flwr_home: Path) -> list[dict]:
    return _flwr_json(["supernode", "list", CONNECTION], flwr_home, "listing SuperNodes").get(
        "nodes", []
    )


def wait_for_nodes(flwr_home: Path, nodes: dict[str, int], timeout: float = 120) -> None:
    """Until the SuperNode of every site in `nodes` (site -> node id, from register_sites) is
    online."""
    deadline = time.monotonic() + timeout
    while True:
        online = {
            str(n.get("node-id")) for n in list_nodes(flwr_home) if n.get("status") == "online"
        }
        missing = sorted(site for site, node in nodes.items() if str(node) not in online)
        if not missing:
            return
        if time.monotonic() > deadline:
            raise DeployError(f"SuperNodes not online after {timeout:.0f} s: {missing}")
        time.sleep(2.0)


def write_app(
    directory: Path,
    serverapp: str = "meduniverse.deploy.apps:server_app",
    clientapp: str = "meduniverse.deploy.apps:client_app",
    include: list[str] = (),
) -> Path:
    """The Flower App directory `flwr run` ships (a pyproject.toml, plus `include`d modules)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    extra = "".join(f', "{name}"' for name in include)
    text = APP_PYPROJECT.format(serverapp=serverapp, clientapp=clientapp, extra_include=extra)
    path = directory / "pyproject.toml"
    if not path.is_file() or path.read_text() != text:
        path.write_text(text)
    return directory


def start_run(
    federation: str, run_dir: Path, flwr_home: Path, seed: int = -1, app: Path | None = None
) -> int:
    """`flwr run` of the meduniverse app with the shared federation text, the run directory and the
    seed."""
    app = app or write_app(Path(flwr_home) / "meduniverse-app")
    with tempfile.NamedTemporaryFile("w", suffix=".toml", prefix="run-config-", delete=False) as f:
        f.write(
            tomli_w.dumps(
                {"federation": federation, "run-dir": str(Path(run_dir).resolve()), "seed": seed}
            )
        )
    try:
        doc = _flwr_json(
            ["run", str(app), CONNECTION, "--run-config", f.name], flwr_home, "flwr run"
        )
    finally:
        Path(f.name).unlink(missing_ok=True)
    return int(doc["run-id"])


def run_status(run_id: int, flwr_home: Path) -> dict:
    runs = _flwr_json(
        ["ls", CONNECTION, "--run-id", str(run_id)], flwr_home, f"status of run {run_id}"
    ).get("runs", [])
    if not runs:
        raise DeployError(f"run {run_id}: unknown to the SuperLink")
    return runs[0]


def wait_for_run(run_id: int, flwr_home: Path, timeout: float = 86400, poll: float = 2.0) -> dict:
    """Until the run is finished; returns its `flwr ls` record (status
    finished:completed|failed|stopped)."""
    deadline = time.monotonic() + timeout
    while True:
        run = run_status(run_id, flwr_home)
        if str(run.get("status", "")).startswith(FINISHED):
            return run
        if time.monotonic() > deadline:
            raise DeployError(
                f"run {run_id} not finished after {timeout:.0f} s (status {run.get('status')})"
            )
        time.sleep(poll)
