"""Where the server keeps the teachers' outputs on the distillation pool during a stage: in memory
(`runtime.teacher_outputs = 'memory'`), or on disk with each batch's rows read when a step needs
them ('disk'), so that the server's memory does not grow with the number of sites."""

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
import tempfile

import numpy as np
import torch

from meduniverse.core.device import PLACES


class DiskRows:
    """Float16 rows in a file, read on demand: `rows[idx]` is the (len(idx), *row_shape) tensor of
    those rows, float16, on `device`.

    Args:
        path: the file, rows one after another.
        row_shape: the shape of one row ((C,) or (C, H, W)).
        device: where the rows read go.
    """

    def __init__(self, path: Path, row_shape: tuple[int, ...], device: torch.device):
        self.path, self.row_shape, self.device = path, row_shape, device
        self.row_bytes = int(np.prod(row_shape)) * 2
        self.rows = path.stat().st_size // self.row_bytes

    def __len__(self) -> int:
        return self.rows

    def __getitem__(self, idx: torch.Tensor) -> torch.Tensor:
        wanted = torch.as_tensor(idx).reshape(-1).tolist()
        out = np.empty((len(wanted), *self.row_shape), dtype=np.float16)
        with self.path.open("rb", buffering=0) as f:
            for i, row in enumerate(wanted):
                if not 0 <= row < self.rows:
                    raise IndexError(f"row {row} of {self.rows} in {self.path.name}")
                f.seek(row * self.row_bytes)
                f.readinto(memoryview(out[i]).cast("B"))
        return torch.from_numpy(out).to(self.device)


class RowWriter:
    """Collects one head's outputs batch by batch: in memory (`folder` None) or appended to
    `folder`/`name`.f16; `done()` gives the whole (N, ...) float16 tensor or its `DiskRows`."""

    def __init__(self, name: str, folder: Path | None, device: torch.device):
        self.parts: list[torch.Tensor] = []
        self.device, self.row_shape, self.count = device, (), 0
        self.path = folder / f"{name}.f16" if folder else None
        self.file = self.path.open("wb") if self.path else None

    def add(self, rows: torch.Tensor) -> None:
        rows = rows.half()
        self.row_shape, self.count = tuple(rows.shape[1:]), self.count + len(rows)
        if self.file is None:
            self.parts.append(rows)
        else:
            self.file.write(rows.cpu().numpy().tobytes())

    def done(self) -> torch.Tensor | DiskRows:
        if self.file is None:
            # outside autocast: CPU autocast's cast rules refuse float16 inputs to cat
            with torch.autocast(self.device.type, enabled=False):
                return torch.cat(self.parts)
        self.file.close()
        return DiskRows(self.path, self.row_shape, self.device)


@contextmanager
def outputs_folder(place: str) -> Iterator[Path | None]:
    """A scratch folder for one stage's outputs ('disk'; removed afterwards), or None ('memory')."""
    if place not in PLACES:
        raise ValueError(f"teacher outputs in '{place}': expected one of {PLACES}")
    if place == "memory":
        yield None
        return
    with tempfile.TemporaryDirectory(prefix="meduniverse-outputs-") as folder:
        yield Path(folder)
