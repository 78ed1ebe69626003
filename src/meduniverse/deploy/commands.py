"""`meduniverse deploy` (also `python -m meduniverse.deploy`): the deployment steps as commands.

Each step checks what it needs first (files, keys, the SuperLink's reachability and certificate) and
stops with an error naming what is wrong, before it starts or writes anything.
"""

import json
import os
from pathlib import Path
import sys

import typer

from meduniverse.core.config_file import load_config
from meduniverse.core.errors import DeployError, MeduniverseError
from meduniverse.deploy.credentials import generate_credentials
from meduniverse.deploy.environment import flower_env, flower_home
from meduniverse.deploy.flower import (
    CONNECTION,
    FINISHED,
    register_sites,
    superlink_argv,
    supernode_argv,
    write_connection,
)
from meduniverse.deploy.network import check_site_data, check_superlink
from meduniverse.deploy.prepare import prepare
from meduniverse.deploy.runs import start_run, wait_for_run
from meduniverse.federation.shared import federation_text
from meduniverse.interfaces.console import fail, print_table, say
from meduniverse.results.document import format_table

DEFAULT_SUPERLINK = "127.0.0.1:8000"


app = typer.Typer(
    pretty_exceptions_enable=False,
    add_completion=False,
    no_args_is_help=True,
    help="Deploy across hospitals: one SuperLink (server), one SuperNode per site, TLS and node "
    "keys.",
)


def _exec(cmd: list[str], flwr_home: Path | None = None) -> None:
    """Replace this process with a Flower command (SuperLink, SuperNode) in Flower's environment."""
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(cmd[0], cmd, flower_env(flwr_home))


@app.command("credentials")
def credentials_command(
    out_dir: Path = typer.Option(..., "--out", help="New directory for the credentials"),
    sites: list[str] = typer.Option(..., "--site", help="A site's name (repeat for each site)"),
    hosts: list[str] = typer.Option(
        ["127.0.0.1", "localhost"],
        "--host",
        help="Address or DNS name the SuperLink is reached at (repeatable)",
    ),
    days: int = typer.Option(365, help="Validity of the certificates"),
) -> None:
    """A CA, the SuperLink's TLS certificate, and per site a node key pair and a TLS certificate."""
    try:
        path = generate_credentials(out_dir, sites, hosts, days)
    except MeduniverseError as exc:
        fail(exc)
    say(
        f"credentials for {', '.join(sites)} in {path}: {path / 'server'} goes to the server, "
        f"{path / 'sites'}/SITE to each site; keep {path / 'ca.key'} offline"
    )


@app.command("prepare")
def prepare_command(
    config: Path = typer.Argument(..., help="Federation TOML file (with every site's data)"),
    out_dir: Path = typer.Option(..., "--out", help="New directory"),
    overrides: list[str] = typer.Option([], "--set", help="Override a setting"),
) -> None:
    """The shared federation (no data paths), the pool files and each site's private file."""
    try:
        path = prepare(load_config(config, overrides), out_dir)
    except MeduniverseError as exc:
        fail(exc)
    say(
        f"{path / 'federation.toml'} (shared), {path / 'pool'} (server), {path / 'sites'}/SITE.npz "
        "(one per site)"
    )


@app.command("superlink")
def superlink_command(
    server_dir: Path = typer.Option(
        ..., "--credentials", help="The server's credentials folder (OUT/server)"
    ),
    state: Path = typer.Option(
        ..., help="SQLite file for the SuperLink's state (registered nodes, runs)"
    ),
    host: str = typer.Option("127.0.0.1", help="Address to listen on"),
    port: int = typer.Option(8000, help="Port of its HTTPS API (Fleet, Control, Runtime)"),
) -> None:
    """Start the server: Flower's SuperLink with TLS and node authentication (foreground)."""
    try:
        cmd = superlink_argv(server_dir, state, host, port)
        state.parent.mkdir(parents=True, exist_ok=True)
    except MeduniverseError as exc:
        fail(exc)
    _exec(cmd)


@app.command("register")
def register_command(
    credentials_dir: Path = typer.Option(
        ..., "--credentials", help="OUT/server (or OUT) of 'deploy credentials'"
    ),
    superlink_address: str = typer.Option(
        DEFAULT_SUPERLINK, "--superlink", help="HOST:PORT of the SuperLink"
    ),
    ca: Path = typer.Option(None, help="CA certificate (default: CREDENTIALS/ca.crt)"),
    sites: list[str] = typer.Option([], "--site", help="Only these sites (default: every key)"),
    wait: float = typer.Option(60.0, help="Seconds to wait for the SuperLink to come up"),
    flwr_home: Path = typer.Option(None, help="Flower CLI home (default: ~/.meduniverse/flwr)"),
) -> None:
    """Register sites' public keys with the SuperLink: only their SuperNodes can join."""
    home = flower_home(flwr_home)
    try:
        ca = ca or credentials_dir / "ca.crt"
        check_superlink(superlink_address, ca, wait)
        write_connection(home, superlink_address, ca)
        ids = register_sites(credentials_dir, home, sites or None)
    except MeduniverseError as exc:
        fail(exc)
    for site, node in ids.items():
        say(f"registered site '{site}': node id {node}")


@app.command("node")
def node_command(
    site: str = typer.Option(..., help="This site's name, as in the federation"),
    data: Path = typer.Option(
        ..., help="This site's own data file (npz: train/val/test images + labels or masks)"
    ),
    site_dir: Path = typer.Option(
        ..., "--credentials", help="This site's credentials folder (OUT/sites/SITE)"
    ),
    superlink_address: str = typer.Option(
        DEFAULT_SUPERLINK, "--superlink", help="HOST:PORT of the SuperLink"
    ),
    port: int = typer.Option(
        9101, help="Port of this SuperNode's own local API (one per SuperNode on a host)"
    ),
    wait: float = typer.Option(60.0, help="Seconds to wait for the SuperLink to come up"),
    flwr_home: Path = typer.Option(
        None, help="This node's Flower home (default: ~/.meduniverse/node-SITE)"
    ),
) -> None:
    """Start a site: its SuperNode, on its own data only (runs in the foreground)."""
    try:
        data = check_site_data(site, data)
        cmd = supernode_argv(site_dir, site, data, superlink_address, port)
        check_superlink(superlink_address, site_dir / "ca.crt", wait)
    except MeduniverseError as exc:
        fail(exc)
    _exec(cmd, Path(flwr_home or Path.home() / ".meduniverse" / f"node-{site}"))


@app.command("run")
def run_command(
    federation: Path = typer.Argument(
        ..., help="The shared federation TOML (from 'deploy prepare')"
    ),
    run_dir: Path = typer.Option(
        ..., "--out", help="Run directory on the server machine (re-use it to resume)"
    ),
    superlink_address: str = typer.Option(
        DEFAULT_SUPERLINK, "--superlink", help="HOST:PORT of the SuperLink"
    ),
    ca: Path = typer.Option(..., help="CA certificate"),
    seed: int = typer.Option(-1, help="Seed (default: the federation's)"),
    overrides: list[str] = typer.Option(
        [], "--set", help="Override a setting, e.g. --set runtime.min_sites=2"
    ),
    wait: bool = typer.Option(True, help="Wait for the run to finish and print its results"),
    wait_server: float = typer.Option(
        60.0, "--wait-server", help="Seconds to wait for the SuperLink to come up"
    ),
    flwr_home: Path = typer.Option(None, help="Flower CLI home (default: ~/.meduniverse/flwr)"),
) -> None:
    """Launch the federation on the SuperLink (flwr run), wait, and print the per-task table."""
    home = flower_home(flwr_home)
    try:
        text = federation_text(federation, overrides)
        check_superlink(superlink_address, ca, wait_server)
        write_connection(home, superlink_address, ca)
        run_id = start_run(text, run_dir, home, seed)
        say(
            f"run {run_id} started (flwr ls {CONNECTION} --run-id {run_id}; flwr log {run_id} "
            f"{CONNECTION} --show; "
            f"FLWR_HOME={home})"
        )
        if not wait:
            return
        run = wait_for_run(run_id, home)
    except MeduniverseError as exc:
        fail(exc)
    if run["status"] != f"{FINISHED}:completed":
        fail(
            DeployError(
                f"run {run_id} {run['status']}: {run.get('status-details') or 'see flwr log'}"
            )
        )
    results = Path(run_dir) / "results.json"
    if results.is_file():  # the operator is on the server machine
        print_table(
            format_table(json.loads(results.read_text())), f"run {run_id}: test metric per task"
        )
    say(f"run {run_id} completed: {run_dir} (results.json, model/, log.txt, checkpoints/)")
