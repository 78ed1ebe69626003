"""Where the tensors live and at which precision the model computes: `runtime.device` and
`runtime.precision`.

`auto` picks CUDA when it is there, else the CPU; precision `auto` picks bf16 autocast on CUDA and
on CPUs with bf16 arithmetic (AMX tiles or avx512_bf16 instructions), fp32 on the others. Measured
(bench/results/speed.json): on an AVX2 machine a bf16 convolution takes 14x and a bf16 matrix
product 90x the fp32 time; on an AMX machine bf16 trains the encoder 2x faster at 128 px than fp32,
and one shared8 seed took 26 min (31 min in fp32 on the AVX2 machine); on an avx512_bf16 machine
without AMX every phase runs 1.4-1.7x faster in bf16 (PART_avx512 rows).

`computing` sets a process up for a handler or a step: its threads, malloc keeping freed memory
in the server's process (`keep_freed_memory`), and the autocast.
"""

from collections.abc import Iterator
from contextlib import contextmanager
import ctypes
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch

from meduniverse.core.config import RuntimeConfig
from meduniverse.core.errors import ConfigError

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16")
PLACES = ("memory", "disk")  # where a server step keeps the teachers' outputs


def resolve_device(name: str) -> torch.device:
    """The device `runtime.device` names: 'auto' (CUDA if available, else CPU), 'cpu' or 'cuda'."""
    if name not in DEVICES:
        raise ConfigError(f"runtime.device '{name}' unknown (allowed: {', '.join(DEVICES)})")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "runtime.device is 'cuda' but this machine has no CUDA device PyTorch can use; "
            "set runtime.device = 'auto' or 'cpu'"
        )
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@cache
def cpu_bf16() -> str:
    """The processor's bf16 arithmetic (Linux /proc/cpuinfo; 'none' elsewhere): 'amx' (bf16
    matrix tiles), 'avx512' (avx512_bf16 vector instructions, no tiles) or 'none'."""
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return "none"
    return "amx" if "amx_bf16" in flags else "avx512" if "avx512_bf16" in flags else "none"


def resolve_precision(name: str, device: torch.device) -> str:
    """'fp32' or 'bf16' for `runtime.precision` on `device`."""
    if name not in PRECISIONS:
        raise ConfigError(f"runtime.precision '{name}' unknown (allowed: {', '.join(PRECISIONS)})")
    if name != "auto":
        return name
    return "bf16" if device.type == "cuda" or cpu_bf16() != "none" else "fp32"


@dataclass(frozen=True)
class Compute:
    """Where a process computes: its device and precision ('fp32' or 'bf16')."""

    device: torch.device
    precision: str

    @classmethod
    def of(cls, runtime: RuntimeConfig) -> "Compute":
        """The process's compute from `runtime.device` and `runtime.precision`."""
        device = resolve_device(runtime.device)
        return cls(device, resolve_precision(runtime.precision, device))

    def describe(self) -> dict[str, str]:
        """The resolved device and precision, for results.json."""
        return {"device": str(self.device), "precision": self.precision}

    @contextmanager
    def autocast(self) -> Iterator[None]:
        """bf16 autocast of the eligible operations (convolutions, matrix products), or nothing.

        One context spans a whole handler (training loops, evaluations, weights loaded in place),
        so autocast's cache of bf16 weight copies is off: with it, every forward pass inside the
        context would reuse the copies cast on the first one, blind to the optimiser's updates."""
        if self.precision != "bf16":
            yield
            return
        with torch.autocast(self.device.type, dtype=torch.bfloat16, cache_enabled=False):
            yield


CPU = Compute(torch.device("cpu"), "fp32")

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # glibc's mallopt parameters (malloc.h)


@cache
def keep_freed_memory() -> bool:
    """Have glibc's malloc keep freed memory for reuse instead of handing it back to the kernel:
    no block of its own mapping (M_MMAP_MAX = 0), the heap's free top returned only past 1 GiB.
    PyTorch's CPU tensors come from malloc; by default every large one (an activation of a server
    step's batch) is a fresh mapping that the kernel zeroes page by page when it is first written.
    Measured on shared8 server steps in bf16 on 2 threads (bench/speed.py allocator,
    allocator_warm): in the main thread 176-201 s -> 143-146 s (20-26 million page faults -> 0.6);
    in a thread of its own, as a ServerApp runs, 223 -> 179 s for the first step, 186 -> 171 s for
    the second (2-4 million page faults remain there, and the step is slower than in the main
    thread either way). Costs about 0.3 GB of peak memory. Returns whether it applied (glibc
    only: elsewhere nothing changes)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError, TypeError):  # not glibc, or no C library to load
        return False
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, 1 << 30))


@contextmanager
def computing(runtime: RuntimeConfig, threads: int, keep_memory: bool) -> Iterator[Compute]:
    """This process set to compute one handler or step: `threads` torch threads, freed memory kept
    if `keep_memory` (`keep_freed_memory`: the server's process, not a site's: a site process that
    trains several sites one after another with DP-SGD grew to 8-10 GB with it, and Ray killed it),
    and the compute `runtime` names (its autocast around the body)."""
    torch.set_num_threads(threads)
    if keep_memory:
        keep_freed_memory()
    compute = Compute.of(runtime)
    with compute.autocast():
        yield compute
