"""What produced a result: the code's commit and the machine."""

import os
import platform
import subprocess


def git_commit() -> str:
    """HEAD of the working tree, with '-dirty' if tracked files differ from it; 'unknown' outside
    git."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=False
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        ).stdout.strip()
        return (
            out.stdout.strip() + ("-dirty" if dirty else "") if out.returncode == 0 else "unknown"
        )
    except OSError:
        return "unknown"


def machine_info() -> dict:
    """What a benchmark ran on."""
    import torch

    from meduniverse.core.device import cpu_bf16

    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "bf16_matrix_units": cpu_bf16() == "amx",  # AMX units (files before cpu_bf16 had this)
        "cpu_bf16": cpu_bf16(),  # 'amx', 'avx512' or 'none': what precision 'auto' picks
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def provenance(what: str, command: str) -> dict:
    """The head of a benchmark's JSON: what it measures (the first line of `what`, e.g. the
    script's docstring), the command, the commit and the machine."""
    return {
        "what": what.strip().splitlines()[0],
        "command": command,
        "commit": git_commit(),
        "machine": machine_info(),
    }
