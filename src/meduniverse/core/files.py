"""Atomic file writes: a crash never leaves a half-written result, checkpoint or model."""

from collections.abc import Callable
import json
import os
from pathlib import Path
import tempfile
from typing import Any

from safetensors.torch import load_file, save_file
import torch


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call write(tmp) on a temporary file beside path, then rename it over path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, data: Any) -> None:
    atomic_write(
        path,
        lambda tmp: tmp.write_text(
            json.dumps(data, indent=2, sort_keys=False, allow_nan=True) + "\n"
        ),
    )


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def write_tensors(
    path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
) -> None:
    contiguous = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    atomic_write(path, lambda tmp: save_file(contiguous, str(tmp), metadata=metadata))


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))
