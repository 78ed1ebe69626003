"""Flower's own commands for a deployment: the SuperLink and SuperNode command lines, the CLI's
connection to the SuperLink, and node registration."""

import json
from pathlib import Path
import subprocess
import time

import tomli_w

from meduniverse.core.errors import DeployError
from meduniverse.deploy.environment import flower_env, tool
from meduniverse.deploy.network import existing_file

CONNECTION = "meduniverse"  # the SuperLink connection's name in FLWR_HOME/config.toml
FINISHED = "finished"


def superlink_argv(
    server_dir: Path, state: Path | None = None, host: str = "127.0.0.1", port: int = 8000
) -> list[str]:
    """flower-superlink with TLS on its one API (Fleet, Control, Runtime), node authentication, no
    runtime dependency installation, and its state (registered nodes, runs) in `state` so that it
    survives a restart.

    Args:
        server_dir: the server's credentials (ca.crt, server.pem, server.key).
        state: SQLite file for the SuperLink's state (None: in memory).
        host: address to listen on.
        port: port of its HTTPS API.
    """
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
    API, and a node config naming its site and its own data file only.

    Args:
        site_dir: the site's credentials (ca.crt, node.key, tls.pem, tls.key).
        site: the site's name.
        data: the site's own data file (None for a synthetic site).
        superlink: HOST:PORT of the SuperLink.
        port: port of this SuperNode's local API.
        extra_node_config: more node config entries (tests use it).
    """
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


def flwr_json(args: list[str], flwr_home: Path, what: str, timeout: float = 120) -> dict:
    """`flwr ARGS --format json` in Flower's environment; DeployError naming `what` on failure."""
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
    credentials/sites/SITE/node.pub) with the SuperLink under the site's name. Only registered keys
    can join. Returns site -> node id."""
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
        doc = flwr_json(
            ["supernode", "register", str(keys[site]), CONNECTION, "--name", site],
            flwr_home,
            f"registering site '{site}'",
        )
        out[site] = int(doc["node-id"])
    return out


def list_nodes(flwr_home: Path) -> list[dict]:
    return flwr_json(["supernode", "list", CONNECTION], flwr_home, "listing SuperNodes").get(
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
