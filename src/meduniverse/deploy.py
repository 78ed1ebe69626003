"""Deployment across hospitals on Flower's Deployment Engine: one SuperLink (the server) and one SuperNode per site.

* ``credentials``: a CA, the SuperLink's TLS certificate, and per site an authentication key pair (OpenSSH
  ECDSA P-384, registered with the SuperLink) and a TLS certificate for the node's own local API.
* ``prepare``: from a federation TOML, the *shared* federation (no site data paths), the server's pool files
  and, for a demo on one machine, each site's private file.
* ``superlink`` / ``register`` / ``node`` / ``run``: start the server with TLS and node authentication,
  register the sites' public keys, start a site's SuperNode on its own data only, and launch a run.

Each step checks what it needs first (files, keys, the SuperLink's reachability and certificate) and stops
with an error naming what is wrong, before it starts or writes anything. ``python -m meduniverse.deploy``
runs the same commands as ``meduniverse deploy``.
"""

from dataclasses import asdict
import json
import os
from pathlib import Path
import re
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from typing import Any
import urllib.error
import urllib.request

from rich.console import Console
from rich.text import Text
import typer

from meduniverse.errors import ConfigError, DataError, MeduniverseError

CONNECTION = "meduniverse"  # the SuperLink connection's name in FLWR_HOME/config.toml
DEFAULT_SUPERLINK = "127.0.0.1:8000"
SITE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
FINISHED = "finished"

APP_PYPROJECT = """\
# The Flower App that `flwr run` ships: only this file. The code is the installed meduniverse package,
# which must be importable wherever the SuperLink and the SuperNodes run.
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


class DeployError(MeduniverseError):
    """A deployment step cannot proceed (the message names the file, the address or the site)."""


# --------------------------------------------------------------------------------------------- environment

def flower_env(flwr_home: Path | None = None, **extra: str) -> dict[str, str]:
    """The environment for Flower's commands: this interpreter's bin first on PATH (Flower spawns
    flower-superexec, flwr-serverapp and flwr-clientapp by name), no telemetry, no update checks."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update({"FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1", "PYTHONUNBUFFERED": "1", **extra})
    if flwr_home is not None:
        env["FLWR_HOME"] = str(Path(flwr_home).resolve())
    return env


def tool(name: str) -> str:
    """A Flower command next to this interpreter, else on PATH."""
    local = Path(sys.executable).parent / name
    if local.is_file():
        return str(local)
    found = shutil.which(name)
    if not found:
        raise DeployError(f"'{name}' not found: install meduniverse (it brings Flower) in this environment")
    return found


def _run(cmd: list[str], what: str, **kwargs) -> subprocess.CompletedProcess:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, check=False, **kwargs)
    except FileNotFoundError as exc:
        raise DeployError(f"{what}: '{cmd[0]}' not found") from exc
    if out.returncode != 0:
        detail = (out.stderr.strip() or out.stdout.strip()).splitlines()
        raise DeployError(f"{what} failed: {detail[-1] if detail else f'exit status {out.returncode}'}")
    return out


def _new_dir(out: Path) -> Path:
    """A temporary sibling of `out`, renamed onto it once complete: a failed step leaves nothing behind."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DeployError(f"{out} already exists; choose a new directory (nothing was written)")
    out.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))


def _finish_dir(tmp: Path, out: Path) -> Path:
    if out.is_dir():
        out.rmdir()  # empty (checked by _new_dir)
    os.replace(tmp, out)
    return out


# --------------------------------------------------------------------------------------------- credentials

def _check_sites(sites: list[str]) -> list[str]:
    if not sites:
        raise DeployError("name at least one site")
    for name in sites:
        if not SITE_NAME.match(name):
            raise DeployError(f"site name '{name}': use letters, digits, '_', '.' and '-' only")
    if len(set(sites)) != len(sites):
        raise DeployError(f"site names repeat: {sites}")
    return sites


def _san(hosts: list[str]) -> str:
    entries = []
    for host in hosts:
        try:
            socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
            entries.append(f"IP:{host}")
        except OSError:
            entries.append(f"DNS:{host}")
    return ",".join(entries)


def _certificate(directory: Path, name: str, common_name: str, hosts: list[str], ca: Path, ca_key: Path, days: int) -> None:
    """`name`.pem + `name`.key: an EC P-256 TLS server certificate for `hosts`, signed by the CA."""
    openssl = shutil.which("openssl") or "openssl"
    key, csr, ext = directory / f"{name}.key", directory / f"{name}.csr", directory / f"{name}.ext"
    _run([openssl, "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
          "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={common_name}"], f"openssl (key for {common_name})")
    ext.write_text(f"subjectAltName={_san(hosts)}\nbasicConstraints=critical,CA:FALSE\n"
                   "keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n")
    _run([openssl, "x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
          "-set_serial", f"0x{secrets.token_hex(16)}", "-days", str(days), "-sha256", "-extfile", str(ext),
          "-out", str(directory / f"{name}.pem")], f"openssl (certificate for {common_name})")
    csr.unlink()
    ext.unlink()
    key.chmod(0o600)


def generate_credentials(out: Path, sites: list[str], hosts: list[str] | None = None, days: int = 365) -> Path:
    """Everything TLS and node authentication need, one folder per machine:

        OUT/ca.crt, OUT/ca.key          the certificate authority (keep ca.key with the operator, offline)
        OUT/server/                     for the server: ca.crt, server.pem, server.key, nodes/SITE.pub
        OUT/sites/SITE/                 for each site: ca.crt, node.key + node.pub (its identity, registered
                                        with the SuperLink), tls.pem + tls.key (its SuperNode's local API)

    `hosts`: the names and addresses the SuperLink is reached at (its certificate's subjectAltName).
    """
    sites = _check_sites(list(sites))
    hosts = list(hosts or ["127.0.0.1", "localhost"])
    out = Path(out)
    tmp = _new_dir(out)
    try:
        ca, ca_key = tmp / "ca.crt", tmp / "ca.key"
        openssl = shutil.which("openssl")
        keygen = shutil.which("ssh-keygen")
        if not openssl or not keygen:
            raise DeployError("generating credentials needs 'openssl' and 'ssh-keygen' (OpenSSH) on PATH")
        _run([openssl, "req", "-x509", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
              "-keyout", str(ca_key), "-out", str(ca), "-days", str(days), "-sha256", "-subj", "/CN=meduniverse federation CA",
              "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"],
             "openssl (certificate authority)")
        ca_key.chmod(0o600)
        server = tmp / "server"
        (server / "nodes").mkdir(parents=True)
        shutil.copy(ca, server / "ca.crt")
        _certificate(server, "server", "meduniverse-superlink", hosts, ca, ca_key, days)
        for site in sites:
            folder = tmp / "sites" / site
            folder.mkdir(parents=True)
            shutil.copy(ca, folder / "ca.crt")
            _run([keygen, "-q", "-t", "ecdsa", "-b", "384", "-N", "", "-C", f"meduniverse site {site}",
                  "-f", str(folder / "node")], f"ssh-keygen (key for site '{site}')")
            (folder / "node").rename(folder / "node.key")
            shutil.copy(folder / "node.pub", server / "nodes" / f"{site}.pub")
            _certificate(folder, "tls", f"meduniverse-site-{site}", ["127.0.0.1", "localhost"], ca, ca_key, days)
        (tmp / "README.txt").write_text(
            "server/ goes to the server machine; sites/SITE/ to site SITE only; ca.key stays with the operator.\n"
            f"Sites: {', '.join(sites)}. SuperLink certificate valid for: {', '.join(hosts)}.\n")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return _finish_dir(tmp, out)


# ------------------------------------------------------------------------------------ shared federation, pool

def shared_document(config, pool_files: list[str]) -> dict[str, Any]:
    """The federation every party sees: sites' names, tasks and classes, and the pool as files; no data paths."""
    def plain(obj) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(obj).items() if v is not None}

    pool = plain(config.pool)
    pool.update({"sites": [], "files": pool_files})
    return {"name": config.name, "seed": config.seed,
            "input": {group: plain(spec) for group, spec in config.inputs},
            "pool": pool, "model": plain(config.model), "method": plain(config.method),
            "finetune": plain(config.finetune), "runtime": plain(config.runtime),
            "competitors": plain(config.competitors),
            "sites": [{"name": s.name, "task": s.task, "classes": list(s.classes)} for s in config.sites]}


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(text).stem if "/" in text else text).strip("_")[:60] or "pool"


def prepare(config, out: Path) -> Path:
    """Split a federation for deployment, into OUT:

        federation.toml   the shared federation (sites' names, tasks, classes; pool.files; no data paths)
        pool/*.npz        the server's unlabelled pool, one file per source (key 'images'): the same pool
                          a simulated run of `config` uses
        sites/SITE.npz    each site's private splits (without the images it lends to the pool), in the
                          MedMNIST-style layout: what that hospital holds; for a demo on one machine

    The pool and every private split are checked disjoint first (SHA-256 of each image).
    """
    import numpy as np

    from meduniverse.data.npz import target_key
    from meduniverse.sites import pool_images_raw, private_raw, verify_disjoint
    import tomli_w

    verify_disjoint(config)
    out = Path(out)
    tmp = _new_dir(out)
    try:
        (tmp / "pool").mkdir()
        (tmp / "sites").mkdir()
        files = []
        for i, (source, images) in enumerate(pool_images_raw(config).items()):
            name = f"pool/{i:02d}-{_slug(source)}.npz"
            np.savez(tmp / name, images=images)
            files.append(name)
        for site in config.sites:
            arrays = {}
            for split, raw in private_raw(site, config.pool, config.seed).items():
                arrays[f"{split}_images"] = raw.images
                arrays[f"{split}_{target_key(site.task)}"] = raw.targets
            np.savez(tmp / "sites" / f"{site.name}.npz", **arrays)
        text = ("# The shared federation for a deployment (meduniverse deploy prepare): every party may read it.\n"
                "# No site's data path: each SuperNode names its own file (--node-config \"site='NAME' data='...'\").\n"
                "# pool.files: relative to this file, on the server machine.\n")
        (tmp / "federation.toml").write_text(text + tomli_w.dumps(shared_document(config, files)))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return _finish_dir(tmp, out)


def federation_text(path: Path, overrides: list[str] | None = None, check_files: bool = True) -> str:
    """A shared federation file as the run config carries it: overrides applied, pool files made absolute.

    It is checked as the server will read it (a site's data path in it is refused)."""
    import tomli_w

    from meduniverse.config import apply_overrides
    from meduniverse.federation.deployment import server_config
    import tomllib

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: federation file not found")
    try:
        raw = apply_overrides(tomllib.loads(path.read_text()), overrides or [])
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from exc
    pool = raw.get("pool", {})
    if isinstance(pool, dict) and isinstance(pool.get("files"), list):
        pool["files"] = [str((path.parent / f).resolve()) if isinstance(f, str) else f for f in pool["files"]]
    text = tomli_w.dumps(raw)
    try:
        server_config(text, check_files=check_files)
    except MeduniverseError as exc:
        raise type(exc)(f"{path}: {exc}") from exc
    return text


# --------------------------------------------------------------------------------------------- checks

def _existing(path: Path | str, what: str) -> Path:
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise DeployError(f"{what} {path} not found")
    return path


def check_superlink(address: str, ca: Path, wait: float = 0.0) -> None:
    """The SuperLink answers on `address` over TLS with a certificate the CA file vouches for.

    Connection errors are retried for `wait` seconds; a certificate that does not verify is not."""
    ca = _existing(ca, "CA certificate")
    try:
        context = ssl.create_default_context(cafile=str(ca))
    except ssl.SSLError as exc:
        raise DeployError(f"CA certificate {ca} is not a PEM certificate ({exc.reason or exc})") from exc
    deadline = time.monotonic() + wait
    while True:
        try:
            with urllib.request.urlopen(f"https://{address}/health", context=context, timeout=10) as response:
                if response.status == 200:
                    return
                raise DeployError(f"the SuperLink at {address} answered /health with HTTP {response.status}")
        except urllib.error.URLError as exc:
            reason = exc.reason
            if isinstance(reason, ssl.SSLCertVerificationError):
                raise DeployError(f"the SuperLink at {address} presented a certificate that {ca} does not vouch for "
                                  f"({reason.verify_message}): wrong certificate, or wrong CA file") from exc
            if isinstance(reason, ssl.SSLError):
                raise DeployError(f"TLS with the SuperLink at {address} failed ({reason.reason or reason}): "
                                  f"is it started with TLS (not --insecure)?") from exc
            if time.monotonic() >= deadline:
                raise DeployError(f"cannot reach the SuperLink at {address}: {reason} "
                                  f"(is it running, and are the host and port right?)") from exc
        except (ConnectionError, TimeoutError, socket.timeout) as exc:
            if time.monotonic() >= deadline:
                raise DeployError(f"cannot reach the SuperLink at {address}: {exc}") from exc
        time.sleep(0.5)


def check_site_data(site: str, data: Path | str) -> Path:
    """A site's own data file exists and holds train/val/test images with labels or masks (MedMNIST layout)."""
    from meduniverse.data.npz import SPLITS, open_npz

    path = Path(data).expanduser().resolve()
    if not path.is_file():
        raise DataError(f"site '{site}': data file {path} not found")
    with open_npz(path) as npz:
        keys = set(npz.files)
    for split in SPLITS:
        if f"{split}_images" not in keys or not {f"{split}_labels", f"{split}_masks"} & keys:
            raise DataError(f"site '{site}': {path} lacks '{split}_images' with '{split}_labels' or "
                            f"'{split}_masks' (has {sorted(keys)})")
    return path


# --------------------------------------------------------------------------------------------- commands

def superlink_command(server_dir: Path, state: Path | None = None, host: str = "127.0.0.1", port: int = 8000) -> list[str]:
    """flower-superlink with TLS on its one API (Fleet, Control, Runtime), node authentication, no runtime
    dependency installation, and its state (registered nodes, runs) in `state` so that it survives a restart."""
    server_dir = Path(server_dir)
    files = [_existing(server_dir / n, "server credential") for n in ("ca.crt", "server.pem", "server.key")]
    cmd = [tool("flower-superlink"), "--ssl-ca-certfile", str(files[0]), "--ssl-certfile", str(files[1]),
           "--ssl-keyfile", str(files[2]), "--enable-supernode-auth", "--disable-runtime-dependency-installation",
           "--host", host, "--port", str(port)]
    if state is not None:
        cmd += ["--database", str(Path(state).resolve())]
    return cmd


def supernode_command(site_dir: Path, site: str, data: Path | None, superlink: str, port: int,
                      extra_node_config: str = "") -> list[str]:
    """flower-supernode for one site: its key, the CA to check the SuperLink, TLS on its own local API,
    and a node config naming its site and its own data file only."""
    site_dir = Path(site_dir)
    ca, key, pem, tls_key = (_existing(site_dir / n, f"site '{site}' credential")
                             for n in ("ca.crt", "node.key", "tls.pem", "tls.key"))
    node_config = f"site='{site}'" + (f" data='{Path(data).resolve()}'" if data is not None else "")
    if extra_node_config:
        node_config += f" {extra_node_config}"
    return [tool("flower-supernode"), "--superlink", superlink, "--root-certificates", str(ca),
            "--auth-supernode-private-key", str(key), "--ssl-certfile", str(pem), "--ssl-keyfile", str(tls_key),
            "--ssl-ca-certfile", str(ca), "--host", "127.0.0.1", "--port", str(port), "--node-config", node_config]


def write_connection(flwr_home: Path, superlink: str, ca: Path) -> Path:
    """FLWR_HOME/config.toml naming one SuperLink connection (Flower's CLI would otherwise start a local one)."""
    import tomli_w

    ca = _existing(ca, "CA certificate")
    flwr_home = Path(flwr_home)
    flwr_home.mkdir(parents=True, exist_ok=True)
    path = flwr_home / "config.toml"
    path.write_text(tomli_w.dumps({"superlink": {"default": CONNECTION,
                                                 CONNECTION: {"address": superlink, "root-certificates": str(ca)}}}))
    return path


def _flwr_json(args: list[str], flwr_home: Path, what: str, timeout: float = 120) -> dict:
    out = subprocess.run([tool("flwr"), *args, "--format", "json"], capture_output=True, text=True, check=False,
                         env=flower_env(flwr_home), timeout=timeout)
    text = out.stdout.strip()
    start = text.find("{")
    try:
        doc = json.loads(text[start:]) if start >= 0 else {}
    except json.JSONDecodeError:
        doc = {}
    if out.returncode != 0 or not doc.get("success", False):
        reason = doc.get("error-message") or (out.stderr.strip() or text or f"exit status {out.returncode}").splitlines()[-1]
        raise DeployError(f"{what} failed: {reason}")
    return doc


def register_sites(credentials: Path, flwr_home: Path, sites: list[str] | None = None) -> dict[str, int]:
    """Register each site's public key (credentials/server/nodes/SITE.pub, or credentials/sites/SITE/node.pub)
    with the SuperLink under the site's name. Only registered keys can join. Returns site -> node id."""
    credentials = Path(credentials)
    folder = credentials / "nodes" if (credentials / "nodes").is_dir() else credentials / "server" / "nodes"
    keys = {p.stem: p for p in sorted(folder.glob("*.pub"))} if folder.is_dir() else {}
    if not keys:
        raise DeployError(f"no public keys in {folder} (made by 'meduniverse deploy credentials')")
    sites = sites or list(keys)
    out = {}
    for site in sites:
        if site not in keys:
            raise DeployError(f"site '{site}': no public key {folder / (site + '.pub')}")
        doc = _flwr_json(["supernode", "register", str(keys[site]), CONNECTION, "--name", site], flwr_home,
                         f"registering site '{site}'")
        out[site] = int(doc["node-id"])
    return out


def list_nodes(flwr_home: Path) -> list[dict]:
    return _flwr_json(["supernode", "list", CONNECTION], flwr_home, "listing SuperNodes").get("nodes", [])


def wait_for_nodes(flwr_home: Path, nodes: dict[str, int], timeout: float = 120) -> None:
    """Until the SuperNode of every site in `nodes` (site -> node id, from register_sites) is online."""
    deadline = time.monotonic() + timeout
    while True:
        online = {str(n.get("node-id")) for n in list_nodes(flwr_home) if n.get("status") == "online"}
        missing = sorted(site for site, node in nodes.items() if str(node) not in online)
        if not missing:
            return
        if time.monotonic() > deadline:
            raise DeployError(f"SuperNodes not online after {timeout:.0f} s: {missing}")
        time.sleep(2.0)


def write_app(directory: Path, serverapp: str = "meduniverse.federation.deployment:server_app",
              clientapp: str = "meduniverse.federation.deployment:client_app", include: list[str] = ()) -> Path:
    """The Flower App directory `flwr run` ships (a pyproject.toml, plus `include`d module files)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    extra = "".join(f', "{name}"' for name in include)
    text = APP_PYPROJECT.format(serverapp=serverapp, clientapp=clientapp, extra_include=extra)
    path = directory / "pyproject.toml"
    if not path.is_file() or path.read_text() != text:
        path.write_text(text)
    return directory


def start_run(federation: str, run_dir: Path, flwr_home: Path, seed: int = -1, app: Path | None = None) -> int:
    """`flwr run` of the meduniverse app with the shared federation text, the run directory and the seed."""
    import tomli_w

    app = app or write_app(Path(flwr_home) / "meduniverse-app")
    with tempfile.NamedTemporaryFile("w", suffix=".toml", prefix="run-config-", delete=False) as f:
        f.write(tomli_w.dumps({"federation": federation, "run-dir": str(Path(run_dir).resolve()), "seed": seed}))
    try:
        doc = _flwr_json(["run", str(app), CONNECTION, "--run-config", f.name], flwr_home, "flwr run")
    finally:
        Path(f.name).unlink(missing_ok=True)
    return int(doc["run-id"])


def run_status(run_id: int, flwr_home: Path) -> dict:
    runs = _flwr_json(["ls", CONNECTION, "--run-id", str(run_id)], flwr_home, f"status of run {run_id}").get("runs", [])
    if not runs:
        raise DeployError(f"run {run_id}: unknown to the SuperLink")
    return runs[0]


def wait_for_run(run_id: int, flwr_home: Path, timeout: float = 86400, poll: float = 2.0) -> dict:
    """Until the run is finished; returns its `flwr ls` record (status finished:completed|failed|stopped)."""
    deadline = time.monotonic() + timeout
    while True:
        run = run_status(run_id, flwr_home)
        if str(run.get("status", "")).startswith(FINISHED):
            return run
        if time.monotonic() > deadline:
            raise DeployError(f"run {run_id} not finished after {timeout:.0f} s (status {run.get('status')})")
        time.sleep(poll)


# --------------------------------------------------------------------------------------------- processes

def spawn(cmd: list[str], log: Path, flwr_home: Path | None = None, cwd: Path | None = None) -> subprocess.Popen:
    """Start a long-running command in its own session, its output appended to `log`."""
    log = Path(log)
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as sink:
        return subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=flower_env(flwr_home), cwd=cwd, start_new_session=True)


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants (Flower starts its SuperExec in a session of its own, and the SuperExec starts
    the ServerApp or ClientApp processes). Linux /proc; elsewhere only `pid`."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo.extend(children.get(p, []))
    return tree


def _signal(pids: list[int], sig: int) -> None:
    for p in pids:
        try:
            os.kill(p, sig)
        except ProcessLookupError:
            pass


def stop(process: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 20) -> int | None:
    """Stop a spawned SuperLink or SuperNode and everything it started.

    SIGTERM lets it shut down cleanly (a SuperNode leaves the federation at once); SIGKILL kills the whole
    tree at once, like a machine that dies. Whatever is left after `timeout` s is killed."""
    tree = process_tree(process.pid)
    _signal(tree if sig == signal.SIGKILL else [process.pid], sig)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pass
    _signal(tree, signal.SIGKILL)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pass
    return process.returncode


# --------------------------------------------------------------------------------------------- CLI

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Deploy across hospitals: one SuperLink (server), one SuperNode per site, TLS and node keys.")
err = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)


def _fail(exc: Exception) -> None:
    err.print(Text.assemble(("error: ", "red"), str(exc)))  # not markup: messages hold [brackets]
    raise typer.Exit(code=1)


def _home(flwr_home: Path | None) -> Path:
    return Path(flwr_home or os.environ.get("MEDUNIVERSE_FLWR_HOME") or Path.home() / ".meduniverse" / "flwr").resolve()


def _exec(cmd: list[str], flwr_home: Path | None = None) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(cmd[0], cmd, flower_env(flwr_home))


@app.command()
def credentials(out_dir: Path = typer.Option(..., "--out", help="New directory for the credentials"),
                sites: list[str] = typer.Option(..., "--site", help="A site's name (repeat for each site)"),
                hosts: list[str] = typer.Option(["127.0.0.1", "localhost"], "--host",
                                                help="Address or DNS name the SuperLink is reached at (repeatable)"),
                days: int = typer.Option(365, help="Validity of the certificates")) -> None:
    """A CA, the SuperLink's TLS certificate, and per site a node key pair and a TLS certificate."""
    try:
        path = generate_credentials(out_dir, sites, hosts, days)
    except MeduniverseError as exc:
        _fail(exc)
    out.print(f"credentials for {', '.join(sites)} in {path}: {path / 'server'} goes to the server, "
              f"{path / 'sites'}/SITE to each site; keep {path / 'ca.key'} offline")


@app.command("prepare")
def prepare_command(config: Path = typer.Argument(..., help="Federation TOML file (with every site's data)"),
                    out_dir: Path = typer.Option(..., "--out", help="New directory"),
                    overrides: list[str] = typer.Option([], "--set", help="Override a setting")) -> None:
    """The shared federation (no data paths), the server's pool files and each site's private file."""
    from meduniverse.config import load_config

    try:
        path = prepare(load_config(config, overrides), out_dir)
    except MeduniverseError as exc:
        _fail(exc)
    out.print(f"{path / 'federation.toml'} (shared), {path / 'pool'} (server), {path / 'sites'}/SITE.npz (one per site)")


@app.command()
def superlink(server_dir: Path = typer.Option(..., "--credentials", help="The server's credentials folder (OUT/server)"),
              state: Path = typer.Option(..., help="SQLite file for the SuperLink's state (registered nodes, runs)"),
              host: str = typer.Option("127.0.0.1", help="Address to listen on"),
              port: int = typer.Option(8000, help="Port of its HTTPS API (Fleet, Control, Runtime)")) -> None:
    """Start the server: Flower's SuperLink with TLS and node authentication (runs in the foreground)."""
    try:
        cmd = superlink_command(server_dir, state, host, port)
        state.parent.mkdir(parents=True, exist_ok=True)
    except MeduniverseError as exc:
        _fail(exc)
    _exec(cmd)


@app.command()
def register(credentials_dir: Path = typer.Option(..., "--credentials", help="OUT/server (or OUT) of 'deploy credentials'"),
             superlink_address: str = typer.Option(DEFAULT_SUPERLINK, "--superlink", help="HOST:PORT of the SuperLink"),
             ca: Path = typer.Option(None, help="CA certificate (default: CREDENTIALS/ca.crt)"),
             sites: list[str] = typer.Option([], "--site", help="Only these sites (default: every key)"),
             wait: float = typer.Option(60.0, help="Seconds to wait for the SuperLink to come up"),
             flwr_home: Path = typer.Option(None, help="Flower CLI home (default: ~/.meduniverse/flwr)")) -> None:
    """Register sites' public keys with the SuperLink: only their SuperNodes can join."""
    home = _home(flwr_home)
    try:
        ca = ca or credentials_dir / "ca.crt"
        check_superlink(superlink_address, ca, wait)
        write_connection(home, superlink_address, ca)
        ids = register_sites(credentials_dir, home, sites or None)
    except MeduniverseError as exc:
        _fail(exc)
    for site, node in ids.items():
        out.print(f"registered site '{site}': node id {node}")


@app.command()
def node(site: str = typer.Option(..., help="This site's name, as in the federation"),
         data: Path = typer.Option(..., help="This site's own data file (npz: train/val/test images + labels or masks)"),
         site_dir: Path = typer.Option(..., "--credentials", help="This site's credentials folder (OUT/sites/SITE)"),
         superlink_address: str = typer.Option(DEFAULT_SUPERLINK, "--superlink", help="HOST:PORT of the SuperLink"),
         port: int = typer.Option(9101, help="Port of this SuperNode's own local API (one per SuperNode on a host)"),
         wait: float = typer.Option(60.0, help="Seconds to wait for the SuperLink to come up"),
         flwr_home: Path = typer.Option(None, help="This node's Flower home (default: ~/.meduniverse/node-SITE)")) -> None:
    """Start a site: its SuperNode, on its own data only (runs in the foreground)."""
    try:
        data = check_site_data(site, data)
        cmd = supernode_command(site_dir, site, data, superlink_address, port)
        check_superlink(superlink_address, site_dir / "ca.crt", wait)
    except MeduniverseError as exc:
        _fail(exc)
    _exec(cmd, Path(flwr_home or Path.home() / ".meduniverse" / f"node-{site}"))


@app.command("run")
def run_command(federation: Path = typer.Argument(..., help="The shared federation TOML (from 'deploy prepare')"),
                run_dir: Path = typer.Option(..., "--out", help="Run directory on the server machine (re-use it to resume)"),
                superlink_address: str = typer.Option(DEFAULT_SUPERLINK, "--superlink", help="HOST:PORT of the SuperLink"),
                ca: Path = typer.Option(..., help="CA certificate"),
                seed: int = typer.Option(-1, help="Seed (default: the federation's)"),
                overrides: list[str] = typer.Option([], "--set", help="Override a setting, e.g. --set runtime.min_sites=2"),
                wait: bool = typer.Option(True, help="Wait for the run to finish and print its results"),
                wait_server: float = typer.Option(60.0, "--wait-server", help="Seconds to wait for the SuperLink to come up"),
                flwr_home: Path = typer.Option(None, help="Flower CLI home (default: ~/.meduniverse/flwr)")) -> None:
    """Launch the federation on the SuperLink (flwr run), wait for it and print the per-task table."""
    home = _home(flwr_home)
    try:
        text = federation_text(federation, overrides)
        check_superlink(superlink_address, ca, wait_server)
        write_connection(home, superlink_address, ca)
        run_id = start_run(text, run_dir, home, seed)
        out.print(f"run {run_id} started (flwr ls {CONNECTION} --run-id {run_id}; flwr log {run_id} {CONNECTION} --show; "
                  f"FLWR_HOME={home})")
        if not wait:
            return
        run = wait_for_run(run_id, home)
    except MeduniverseError as exc:
        _fail(exc)
    if run["status"] != f"{FINISHED}:completed":
        _fail(DeployError(f"run {run_id} {run['status']}: {run.get('status-details') or 'see flwr log'}"))
    results = Path(run_dir) / "results.json"
    if results.is_file():  # the operator is on the server machine
        from meduniverse.cli import print_table
        from meduniverse.evaluation import format_table

        print_table(format_table(json.loads(results.read_text())), f"run {run_id}: test metric per task")
    out.print(f"run {run_id} completed: {run_dir} (results.json, model/, log.txt, checkpoints/)")


if __name__ == "__main__":
    app()
