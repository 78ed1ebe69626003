"""The deployment steps' environment: Flower's commands, subprocesses and staging directories."""

import os
from pathlib import Path
import shutil
import subprocess
import sys
import tempfile

from meduniverse.core.errors import DeployError


def flower_env(flwr_home: Path | None = None, **extra: str) -> dict[str, str]:
    """The environment for Flower's commands: this interpreter's bin first on PATH (Flower spawns
    flower-superexec, flwr-serverapp and flwr-clientapp by name), no telemetry, no update checks."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(
        {
            "FLWR_TELEMETRY_ENABLED": "0",
            "FLWR_DISABLE_UPDATE_CHECK": "1",
            "PYTHONUNBUFFERED": "1",
            **extra,
        }
    )
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
        raise DeployError(
            f"'{name}' not found: install meduniverse (it brings Flower) in this environment"
        )
    return found


def run_tool(cmd: list[str], what: str, **kwargs) -> subprocess.CompletedProcess:
    """Run a command to completion; a non-zero exit raises DeployError with `what` and its last line
    of output."""
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, check=False, **kwargs)
    except FileNotFoundError as exc:
        raise DeployError(f"{what}: '{cmd[0]}' not found") from exc
    if out.returncode != 0:
        detail = (out.stderr.strip() or out.stdout.strip()).splitlines()
        raise DeployError(
            f"{what} failed: {detail[-1] if detail else f'exit status {out.returncode}'}"
        )
    return out


def new_dir(out: Path) -> Path:
    """A temporary sibling of `out`, renamed onto it once complete: a failed step leaves nothing
    behind."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DeployError(f"{out} already exists; choose a new directory (nothing was written)")
    out.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))


def finish_dir(tmp: Path, out: Path) -> Path:
    """Rename the completed staging directory `tmp` (from `new_dir`) onto `out`."""
    if out.is_dir():
        out.rmdir()  # empty (checked by new_dir)
    os.replace(tmp, out)
    return out


def flower_home(flwr_home: Path | None) -> Path:
    """The Flower CLI's home: the option, else $MEDUNIVERSE_FLWR_HOME, else ~/.meduniverse/flwr."""
    return Path(
        flwr_home
        or os.environ.get("MEDUNIVERSE_FLWR_HOME")
        or Path.home() / ".meduniverse" / "flwr"
    ).resolve()
