"""Long-running SuperLink and SuperNode processes: start them, and stop them with everything they
started."""

import contextlib
import os
from pathlib import Path
import signal
import subprocess

from meduniverse.deploy.environment import flower_env


def spawn(
    cmd: list[str], log: Path, flwr_home: Path | None = None, cwd: Path | None = None
) -> subprocess.Popen:
    """Start a long-running command in its own session, its output appended to `log`.

    Args:
        cmd: the command line.
        log: file its output is appended to.
        flwr_home: Flower's home for the process (FLWR_HOME).
        cwd: its working directory.
    """
    log = Path(log)
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as sink:
        return subprocess.Popen(
            cmd,
            stdout=sink,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=flower_env(flwr_home),
            cwd=cwd,
            start_new_session=True,
        )


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants (Flower starts its SuperExec in a session of its own, and the
    SuperExec starts the ServerApp or ClientApp processes). Linux /proc; elsewhere only `pid`."""
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
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, sig)


def stop(process: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 20) -> int | None:
    """Stop a spawned SuperLink or SuperNode and everything it started.

    SIGTERM lets it shut down cleanly (a SuperNode leaves the federation at once); SIGKILL kills the
    whole tree at once, like a machine that dies. Whatever is left after `timeout` s is killed."""
    tree = process_tree(process.pid)
    _signal(tree if sig == signal.SIGKILL else [process.pid], sig)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=timeout)
    _signal(tree, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=timeout)
    return process.returncode
