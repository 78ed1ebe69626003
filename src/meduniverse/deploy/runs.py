"""A deployed run: the Flower App that `flwr run` ships, launching it, and following its status."""

from pathlib import Path
import tempfile
import time

import tomli_w

from meduniverse.core.errors import DeployError
from meduniverse.deploy.flower import CONNECTION, FINISHED, flwr_json

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


def write_app(
    directory: Path,
    serverapp: str = "meduniverse.deploy.apps:server_app",
    clientapp: str = "meduniverse.deploy.apps:client_app",
    include: list[str] = (),
) -> Path:
    """The Flower App directory `flwr run` ships (a pyproject.toml, plus `include`d modules).

    Args:
        directory: where the app goes.
        serverapp, clientapp: 'module:object' of the apps `flwr run` loads.
        include: module files shipped with the app (tests ship a ClientApp of their own).
    """
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
    seed.

    Args:
        federation: the shared federation's text.
        run_dir: the run directory on the server machine.
        flwr_home: the Flower CLI's home (its connection to the SuperLink).
        seed: the run's seed (-1: the federation's).
        app: the Flower App directory (default: written into flwr_home).
    """
    app = app or write_app(Path(flwr_home) / "meduniverse-app")
    with tempfile.NamedTemporaryFile("w", suffix=".toml", prefix="run-config-", delete=False) as f:
        f.write(
            tomli_w.dumps(
                {"federation": federation, "run-dir": str(Path(run_dir).resolve()), "seed": seed}
            )
        )
    try:
        doc = flwr_json(
            ["run", str(app), CONNECTION, "--run-config", f.name], flwr_home, "flwr run"
        )
    finally:
        Path(f.name).unlink(missing_ok=True)
    return int(doc["run-id"])


def run_status(run_id: int, flwr_home: Path) -> dict:
    runs = flwr_json(
        ["ls", CONNECTION, "--run-id", str(run_id)], flwr_home, f"status of run {run_id}"
    ).get("runs", [])
    if not runs:
        raise DeployError(f"run {run_id}: unknown to the SuperLink")
    return runs[0]


def wait_for_run(run_id: int, flwr_home: Path, timeout: float = 86400, poll: float = 2.0) -> dict:
    """Until the run is finished; returns its `flwr ls` record (status
    finished:completed|failed|stopped).

    Args:
        run_id: the run.
        flwr_home: the Flower CLI's home.
        timeout: seconds before giving up.
        poll: seconds between status checks.
    """
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
