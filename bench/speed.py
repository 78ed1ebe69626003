"""Speed against the machine's own limit: matmul peak, model FLOP utilisation per phase, bf16,
channels_last and torch.compile, the federation's overhead against a plain loop, and scaling.

    python bench/speed.py peak phases variants       # minutes, one process, nothing else running
    python bench/speed.py phases_fp32 phases_bf16    # every phase at one precision, then the other
    python bench/speed.py overhead --config demo     # a Flower run against a plain in-process loop
    python bench/speed.py overhead --config shared8 --flower-run RUN_DIR   # a finished run's time
    python bench/speed.py scaling                     # 8 -> 32 -> 64 sites, pool x1 and x4
    python bench/speed.py scaling_disk                # the same, teacher outputs on disk
    python bench/speed.py precision [--add] RUN_DIR...  # default runs against the fp32 seeds
    python bench/speed.py allocator                   # a server step with malloc's defaults, kept
    python bench/speed.py allocator_warm              # the same, twice in a thread, as in a run
    python bench/speed.py arena                       # training steps in a thread: malloc arenas
    python bench/speed.py distill_steps [SRC...]      # distillation steps' memory, 8 -> 64 sites
    python bench/speed.py server_memory [SRC...]      # a whole server step's memory, 8 -> 64 sites

Each part merges its figures into bench/results/speed.json (with the command, commit and machine;
under PART_amx on a processor with AMX bf16 units, PART_avx512 on one with avx512_bf16 only);
`python bench/speed.py plot` draws the scaling rows into bench/results/speed.png.
"""

from collections.abc import Callable
from dataclasses import replace
import gc
import json
import os
from pathlib import Path
import resource
import subprocess
import sys
import threading
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from meduniverse.core.checkpoints import Checkpoints
from meduniverse.core.config import FederationConfig
from meduniverse.core.config_file import config_from_dict, load_config
from meduniverse.core.device import Compute, computing, cpu_bf16, keep_freed_memory
from meduniverse.core.files import read_json, write_json
from meduniverse.core.progress import RunProgress
from meduniverse.core.provenance import git_commit, machine_info
from meduniverse.core.seeds import derive_seed
from meduniverse.core.tasks import task_type
from meduniverse.federation.client_app import site_model
from meduniverse.federation.server_app import stage_zero
from meduniverse.interfaces.cli import demo_config_path
from meduniverse.method.distill import pool_logits
from meduniverse.method.mim import pretrain_mim
from meduniverse.method.server import SiteUpdate, server_step
from meduniverse.method.site import evaluate_arm, finetune, stage_method, train_local, train_site
from meduniverse.method.supervised import evaluate
from meduniverse.models.heads import DecoderHead
from meduniverse.models.universal import build_model, encoder_part, part_of, site_state
from meduniverse.results.run import run
from meduniverse.sites.pool import build_pool
from meduniverse.sites.sources import SiteData, load_site
from processors import MACHINE, SUFFIX, kinds

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "results" / "speed.json"
SHARED = ROOT.parent / "shared" / "data"


def shared8(*overrides: str) -> FederationConfig:
    return load_config(ROOT / "configs" / "shared8.toml", [f"data_root='{SHARED}'", *overrides])


def sharded(config: FederationConfig, sites: int) -> FederationConfig:
    """`config` with each of its sites split into `sites` / len(config.sites) same-named shards
    (NAME_0, NAME_1, ...): more sites' heads on the same data."""
    shards = sites // len(config.sites)
    return replace(
        config,
        sites=tuple(replace(s, name=f"{s.name}_{k}") for s in config.sites for k in range(shards)),
    )


def part_name(part: str) -> str:
    """`part` as speed.json names it on this processor: `part`_amx with AMX bf16 units,
    `part`_avx512 with avx512_bf16 only, `part` on the AVX2 machines (bf16 costs differ by an
    order between the three)."""
    return part + SUFFIX[cpu_bf16()]


def save(part: str, figures: dict) -> None:
    """Merge `figures` into speed.json under `part_name(part)`."""
    doc = read_json(OUT) if OUT.is_file() else {}
    doc[part_name(part)] = {
        "command": " ".join(["python", "bench/speed.py", *sys.argv[1:]]),
        "commit": git_commit(),
        "machine": machine_info(),
        **figures,
    }
    write_json(OUT, doc)
    print(json.dumps(figures, indent=1)[:3000], file=sys.stderr)


def timed(call: Callable[[], object]) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def counted(call: Callable[[], object]) -> float:
    """FLOPs of one call (forward and backward matrix products and convolutions)."""
    with FlopCounterMode(display=False) as counter:
        call()
    return float(counter.get_total_flops())


# ---------------------------------------------------------------------------------------- peak


def peak() -> dict:
    """GFLOP/s of a large matrix product, fp32 and bf16, 1 and 2 threads."""
    out = {}
    for dtype, n in ((torch.float32, 2048), (torch.bfloat16, 512)):
        a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
        for threads in (1, 2):
            torch.set_num_threads(threads)
            a @ b
            seconds = min(timed(lambda a=a, b=b: a @ b) for _ in range(3))
            out[f"{str(dtype)[6:]}_{threads}_threads_gflops"] = 2 * n**3 / seconds / 1e9
    return out


# ---------------------------------------------------------------------------------------- phases


def phase_cases(config: FederationConfig) -> dict[str, tuple[int, Callable[[], object]]]:
    """Per phase of a run: the thread count it runs with and a call that does a small, real piece
    of it on shared8 (each call builds its own fresh model, so repeated calls do the same work)."""
    pool = build_pool(config).images
    site = {s.name: s for s in config.sites}

    def data(name: str) -> SiteData:
        s = site[name]
        return load_site(s, config.pool, config.input_spec(s.task), config.seed)

    one_epoch = replace(config.method, mim_epochs=1, local_epochs=1, distill_epochs=1)
    schedule = replace(config.finetune, max_epochs=1)
    group_of = {s.name: task_type(s.task).group for s in config.sites}

    def mim() -> None:
        model = build_model(config, seed=0)
        pretrain_mim(model.encoder, DecoderHead(model.encoder.widths, 3), pool, one_epoch, 0)

    def local(name: str) -> Callable[[], None]:
        def call() -> None:
            d = data(name)
            model = site_model(config, d, encoder_part(build_model(config, seed=0).state_dict()), 0)
            train_local(model, name, d.splits["train"], one_epoch, 0)

        return call

    def distill() -> None:
        state = build_model(config, seed=0).state_dict()
        updates = [SiteUpdate(s.name, part_of(state, s.name), 100) for s in config.sites]
        server_step(state, updates, replace(config, method=one_epoch), pool, seed=0)

    def tune(name: str) -> Callable[[], None]:
        def call() -> None:
            d = data(name)
            model = site_model(
                config, d, part_of(build_model(config, seed=0).state_dict(), name), 0
            )
            finetune(model, name, d.splits["train"], d.splits["val"], config.method, schedule, 0)

        return call

    def test(name: str) -> Callable[[], None]:
        return lambda: evaluate(build_model(config, seed=0), name, data(name).splits["test"])

    def teachers() -> None:
        pool_logits(build_model(config, seed=0), list(group_of), pool, group_of)

    server, site_threads = config.runtime.server_threads, config.runtime.threads_per_site
    return {
        "mim (server)": (server, mim),
        "local training, classification (pneumonia_xray)": (site_threads, local("pneumonia_xray")),
        "local training, segmentation (fetal_head_us)": (site_threads, local("fetal_head_us")),
        "distillation (server, one epoch)": (server, distill),
        "teacher outputs on the pool (server)": (server, teachers),
        "fine-tune, segmentation (fetal_head_us, one epoch)": (site_threads, tune("fetal_head_us")),
        "evaluation, segmentation (fetal_head_us test)": (site_threads, test("fetal_head_us")),
        "evaluation, classification (pneumonia_xray test)": (site_threads, test("pneumonia_xray")),
    }


def phases(precision: str = "auto") -> dict:
    """Per phase: seconds, model FLOPs and the share of this processor's measured peak at its
    thread count, at `precision` (`runtime.precision`: 'auto', 'fp32' or 'bf16')."""
    config = shared8(f"runtime.precision='{precision}'")
    compute = Compute.of(config.runtime)
    stored = read_json(OUT).get(part_name("peak")) if OUT.is_file() else None
    top = stored or peak()
    dtype = "bfloat16" if compute.precision == "bf16" else "float32"
    rows = []
    for name, (threads, work) in phase_cases(config).items():

        def call(work: Callable[[], object] = work) -> None:
            with compute.autocast():
                work()

        torch.set_num_threads(threads)
        call()  # warm-up (data loading, allocator)
        flops = counted(call)
        seconds = min(timed(call) for _ in range(2))
        gflops = flops / seconds / 1e9
        peak_gflops = top[f"{dtype}_{threads}_threads_gflops"]
        rows.append(
            {
                "phase": name,
                "threads": threads,
                "seconds": seconds,
                "gflop": flops / 1e9,
                "gflops_per_second": gflops,
                "share_of_peak": gflops / peak_gflops,
            }
        )
        print(rows[-1], file=sys.stderr)
    return {"rows": rows, "peak": top, "precision": compute.precision}


# ---------------------------------------------------------------------------------------- variants


def step_time(size: int, batch: int, threads: int, variant: str, reps: int = 5) -> dict:
    """One training step of encoder + segmentation decoder (or classification head at 32 px)."""
    torch.set_num_threads(threads)
    config = shared8()
    model = build_model(config, seed=0)
    name = "fetal_head_us" if size == 128 else "pneumonia_xray"
    x = torch.randn(batch, 3, size, size)
    if variant == "channels_last":
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    forward = torch.compile(model) if variant == "compile" else model
    optimizer = torch.optim.AdamW(model.parameters())

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=variant == "bf16"):
            loss = forward(x, name).float().pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    first = timed(step)
    slow = variant == "bf16" and cpu_bf16() == "none"  # seconds a step on the AVX2 machines
    seconds = min(timed(step) for _ in range(1 if slow else reps))
    return {
        "variant": variant,
        "size": size,
        "batch": batch,
        "threads": threads,
        "first_step_seconds": first,
        "images_per_second": batch / seconds,
    }


def variants() -> dict:
    """fp32 against bf16 autocast, channels_last and torch.compile on one training step."""
    rows = []
    for size, batch in ((32, 64), (128, 16)):
        for variant in ("fp32", "bf16", "channels_last", "compile"):
            rows.append(step_time(size, batch, 2, variant))
            print(rows[-1], file=sys.stderr)
            gc.collect()
    return {"rows": rows}


# ---------------------------------------------------------------------------------------- allocator

SERVER_STEP = "distillation (server, one epoch)"


def server_step_usage(kept: bool, calls: int, threaded: bool) -> list[dict]:
    """`calls` shared8 server steps (teacher outputs, one distillation epoch) one after another
    at 'auto' precision in this process, after `keep_freed_memory` if `kept`, in a thread of their
    own if `threaded` (as Flower's Simulation Engine runs a ServerApp): per call, wall, user and
    system seconds, page faults, peak RSS."""
    config = shared8()
    threads, work = phase_cases(config)[SERVER_STEP]
    applied = keep_freed_memory() if kept else False
    rows: list[dict] = []

    def steps() -> None:
        torch.set_num_threads(threads)
        for call in range(1, calls + 1):
            before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
            with Compute.of(config.runtime).autocast():
                work()
            after = resource.getrusage(resource.RUSAGE_SELF)
            rows.append(
                {
                    "kept": applied,
                    "call": call,
                    "wall_seconds": time.perf_counter() - start,
                    "user_seconds": after.ru_utime - before.ru_utime,
                    "system_seconds": after.ru_stime - before.ru_stime,
                    "page_faults": after.ru_minflt - before.ru_minflt,
                    "peak_rss_mb": after.ru_maxrss / 1024,
                }
            )

    if threaded:
        worker = threading.Thread(target=steps)
        worker.start()
        worker.join()
    else:
        steps()
    return rows


def allocator(reps: int, calls: int, threaded: bool) -> dict:
    """`server_step_usage` with malloc's defaults and with freed memory kept, alternately `reps`
    times, each in a fresh process (mallopt cannot be undone inside one)."""
    rows = []
    for _ in range(reps):
        for kept in (False, True):
            how = ["kept" if kept else "default", str(calls), "thread" if threaded else "main"]
            child = [sys.executable, __file__, "server_step_usage", *how]
            done = subprocess.run(child, capture_output=True, text=True, check=True)
            rows += json.loads(done.stdout.splitlines()[-1])
            print(rows[-calls:], file=sys.stderr)
    precision = Compute.of(shared8().runtime).precision
    return {"phase": SERVER_STEP, "precision": precision, "threaded": threaded, "rows": rows}


ARENA_STEPS = """
import ctypes, json, resource, sys, threading, time
import torch
from meduniverse.core.device import keep_freed_memory
from meduniverse.models.encoder import CNNEncoder
mode, where = sys.argv[1], sys.argv[2]
if mode != "default":  # before any thread starts
    keep_freed_memory()
if mode == "one_arena":
    ctypes.CDLL(None).mallopt(-8, 1)  # M_ARENA_MAX: every thread shares the main arena
torch.set_num_threads(2)
encoder, head = CNNEncoder(3), torch.nn.Conv2d(256, 1, 1)
optimizer = torch.optim.AdamW([*encoder.parameters(), *head.parameters()])
x, row = torch.randn(96, 3, 128, 128), {"malloc": mode, "where": where}
def steps():
    for i in range(5):  # the first one warms up
        if i == 1:
            before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = head(encoder(x)[-1]).float().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = resource.getrusage(resource.RUSAGE_SELF)
    row["wall_seconds"] = time.perf_counter() - start
    row["page_faults"] = after.ru_minflt - before.ru_minflt
if where == "thread":
    worker = threading.Thread(target=steps)
    worker.start()
    worker.join()
else:
    steps()
print(json.dumps(row))
"""


def arena(reps: int = 3) -> dict:
    """Four bf16 training steps of the encoder (batch 96 at 128 px, 2 threads) in the main thread
    or in a thread started after malloc's settings: defaults, freed memory kept (`keep_freed_memory`
    as it is), and kept with one arena for every thread (M_ARENA_MAX = 1), each in a fresh
    process, the cases in turn `reps` times. Tells whether a thread's own arena is what keeps
    faulting memory in."""
    rows = []
    cases = [("kept", "main"), ("default", "thread"), ("kept", "thread"), ("one_arena", "thread")]
    for mode, where in cases * reps:
        child = [sys.executable, "-c", ARENA_STEPS, mode, where]
        done = subprocess.run(child, capture_output=True, text=True, check=True)
        rows.append(json.loads(done.stdout.splitlines()[-1]))
        print(rows[-1], file=sys.stderr)
    return {"batch": 96, "size": 128, "threads": 2, "steps": 4, "rows": rows}


def resident(field: str = "VmRSS") -> float:
    """This process's `field` of /proc/self/status in MB (VmRSS: resident now; VmHWM: the peak)."""
    status = Path("/proc/self/status").read_text().splitlines()
    return int(next(line for line in status if line.startswith(field + ":")).split()[1]) / 1024


def restart_peak() -> float:
    """Start this process's peak (VmHWM) again from its resident memory now, which it returns."""
    Path("/proc/self/clear_refs").write_text("5")
    return resident()


def step_figures(times: list[float], before: float) -> dict:
    """A fresh-process child's figures: seconds per step after the first two (`times`: when each
    step ended), its resident memory `before` the steps (`restart_peak`), the peak since then and
    how far it rose."""
    peak = resident("VmHWM")
    return {
        "seconds_per_step": (times[-1] - times[1]) / (len(times) - 2),
        "rss_before_mb": before,
        "peak_rss_mb": peak,
        "step_growth_mb": peak - before,
    }


DISTILL_STEPS = """
import json, sys, time
import torch
sys.path.insert(0, sys.argv[2])  # the package tree measured, before bench/
from meduniverse.core.device import Compute, keep_freed_memory
from meduniverse.core.tasks import task_type
from meduniverse.method.distill import distill, pool_logits
from meduniverse.models.universal import build_model
from speed import restart_peak, shared8, sharded, step_figures
keep_freed_memory()
config = sharded(shared8("method.distill_epochs=1"), int(sys.argv[1]))
torch.set_num_threads(config.runtime.server_threads)
steps, m, generator = 12, config.method, torch.Generator().manual_seed(0)
shapes = {"classification": (steps * m.batch_size, 3, 32, 32),
          "segmentation": (steps * m.seg_batch_size, 3, 128, 128)}
pool = {g: torch.randint(0, 256, s, dtype=torch.uint8, generator=generator)
        for g, s in shapes.items()}
group_of = {s.name: task_type(s.task).group for s in config.sites}
student = build_model(config, seed=0)
times = []
with Compute.of(config.runtime).autocast():
    logits = pool_logits(student, list(group_of), pool, group_of)
    before = restart_peak()
    on_step = lambda *_: times.append(time.perf_counter())
    distill(student, logits, logits, pool, group_of, m, 0, on_step=on_step)
print(json.dumps({"sites": len(config.sites), "steps": steps, **step_figures(times, before)}))
"""

SERVER_MEMORY = """
import json, sys, time
import torch
sys.path.insert(0, sys.argv[2])  # the package tree measured, before bench/
from meduniverse.core.device import Compute, keep_freed_memory
from meduniverse.method.server import SiteUpdate, server_step
from meduniverse.models.universal import build_model, part_of
from meduniverse.sites.pool import build_pool
from speed import restart_peak, shared8, sharded, step_figures
STEPS = 12
class Enough(Exception):
    pass
times = []
def on_step(step, steps):
    times.append(time.perf_counter())
    if step >= STEPS:
        raise Enough
keep_freed_memory()
config = shared8("method.distill_epochs=1", "runtime.teacher_outputs='disk'")
pool = build_pool(config).images
config = sharded(config, int(sys.argv[1]))
state = build_model(config, seed=0).state_dict()
updates = [SiteUpdate(s.name, part_of(state, s.name), 100) for s in config.sites]
torch.set_num_threads(config.runtime.server_threads)
before = restart_peak()
started = time.perf_counter()
with Compute.of(config.runtime).autocast():
    try:
        server_step(state, updates, config, pool, seed=0, on_step=on_step)
    except Enough:
        pass
print(json.dumps({"sites": len(config.sites), "steps": STEPS,
                  "pool_images": {g: len(x) for g, x in pool.items()},
                  "teacher_outputs_seconds": times[0] - started, **step_figures(times, before)}))
"""


def fresh_processes(script: str, trees: list[str], sites: tuple[int, ...] = (8, 32, 64)) -> dict:
    """`script` (DISTILL_STEPS, SERVER_MEMORY) in a fresh process for each package tree in
    `trees` (src folders of checkouts: before and after a change) and each number of sites: the
    JSON line each prints, with the tree's commit."""
    rows = []
    for tree in trees:
        commit = subprocess.run(
            ["git", "-C", tree, "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
        for count in sites:
            child = [sys.executable, "-c", script, str(count), str(Path(tree).resolve())]
            env = {**os.environ, "PYTHONPATH": str(ROOT / "bench")}
            done = subprocess.run(child, capture_output=True, text=True, check=True, env=env)
            rows.append({"package_commit": commit, **json.loads(done.stdout.splitlines()[-1])})
            print(rows[-1], file=sys.stderr)
    return {"rows": rows}


def distill_steps(trees: list[str]) -> dict:
    """Twelve shared8 distillation steps (batch 16 at 128 px and 64 at 32 px, bf16 where 'auto'
    picks it, the server's threads, random pool images, the teachers' outputs in memory) with 8,
    32 and 64 sites' heads, each in a fresh process, with the package of each tree in `trees`:
    seconds per step after the first two, and how far the process's peak memory (VmHWM, reset
    before the steps) rose above its resident memory before them."""
    return fresh_processes(DISTILL_STEPS, trees)


def server_memory(trees: list[str]) -> dict:
    """A shared8 server step on the real pool with 8, 32 and 64 site models (the sites split into
    shards, models freshly initialised, teachers' outputs on disk), each in a fresh process with
    the package of each tree in `trees`: every teacher's and G_{s-1}'s outputs, then the first 12
    distillation steps (whose memory `distill_steps` measures alone). Its time to the first step
    (the teachers' outputs), seconds per step after the first two, and how far the process's
    peak memory (VmHWM, reset before the step) rose above its resident memory before it."""
    return fresh_processes(SERVER_MEMORY, trees)


# ---------------------------------------------------------------------------------------- overhead


def plain_loop(config: FederationConfig, out: Path, seed: int) -> dict:
    """The run's stages and evaluation arms as a plain loop in this process (no Flower, no Ray):
    the same functions and steps, one site after the other with every thread, at the same
    precision."""
    # set up as the ServerApp and the ClientApps are (bf16 autocast where 'auto' says)
    with computing(config.runtime, config.runtime.server_threads, keep_memory=True):
        started = time.perf_counter()
        pool = build_pool(config)
        sites = {
            s.name: load_site(s, config.pool, config.input_spec(s.task), config.seed)
            for s in config.sites
        }
        ckpt = Checkpoints(out)
        stage_zero(config, pool.images, seed, ckpt, RunProgress(enabled=False))
        state = ckpt.load_stage(0)
        timings = {"stage_0": time.perf_counter() - started}
        for stage in range(1, config.method.stages + 1):
            began, updates, stage_seed = time.perf_counter(), [], derive_seed(seed, stage)
            method = stage_method(config.method, stage)
            for name, data in sites.items():
                # what a site's ClientApp does with a train request (handle_train): score the
                # received model, train by the method's local_training, score the teacher
                model = site_model(config, data, part_of(state, name), stage_seed)
                key = task_type(data.task).primary
                evaluate(model, name, data.splits["val"])[key]
                train_site(model, name, data.splits, method, config.finetune, stage_seed)
                evaluate(model, name, data.splits["val"])[key]
                evaluate(model, name, data.splits["test"])[key]
                updates.append(SiteUpdate(name, model.state_dict(), len(data.splits["train"])))
            timings[f"stage_{stage}_local"] = time.perf_counter() - began
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(stage_seed)
                state, stats = server_step(state, updates, config, pool.images, stage_seed)
            timings[f"stage_{stage}_distill"] = stats.seconds
            timings[f"stage_{stage}"] = time.perf_counter() - began
        for arm in config.arms(False):
            began = time.perf_counter()
            for name, data in sites.items():
                weights = (
                    encoder_part(ckpt.load_stage(0))
                    if arm.model == "baseline"
                    else site_state(state, name)
                )
                model = site_model(config, data, weights, seed)
                method, schedule = config.method, config.finetune
                evaluate_arm(model, name, data.splits, arm.mode, method, schedule, seed)
            timings[f"evaluation:{arm.name}"] = time.perf_counter() - began
        timings["total"] = time.perf_counter() - started
        return timings


def work(which: str) -> dict:
    """The model FLOPs of one whole run (the plain loop under a FLOP counter), and the least time
    they take at the measured fp32 peak of every thread."""
    config = load_config(demo_config_path()) if which == "demo" else shared8()
    scratch = ROOT / "runs" / "bench-speed" / f"{which}-counted"
    if scratch.exists():
        import shutil

        shutil.rmtree(scratch)
    with FlopCounterMode(display=False) as counter:
        plain_loop(config, scratch, config.seed)
    flops = float(counter.get_total_flops())
    top = read_json(OUT)["peak"]["float32_2_threads_gflops"] * 1e9
    return {
        "config": which,
        "tflop": flops / 1e12,
        "seconds_at_peak": flops / top,
        "peak_gflops": top / 1e9,
    }


def overhead(which: str, flower_run: Path | None = None) -> dict:
    """Wall time of a whole run on Flower's Simulation Engine against the plain loop. With
    `flower_run`, a finished `meduniverse run` of the same configuration on this machine stands for
    the Flower side (a shared8 seed takes half an hour), and only the plain loop runs here."""
    config = load_config(demo_config_path()) if which == "demo" else shared8()
    scratch = ROOT / "runs" / "bench-speed"
    flower_dir, loop_dir = flower_run or scratch / f"{which}-flower", scratch / f"{which}-loop"
    for d in (loop_dir,) if flower_run else (flower_dir, loop_dir):
        if d.exists():
            import shutil

            shutil.rmtree(d)
    if flower_run:
        done = read_json(flower_run / "results.json")
        where = {"data_root": None, "source": None}  # the same settings, wherever they were read
        # read back as the package reads a config.json: settings the run predates take defaults
        then = config_from_dict(done["config"], str(flower_run)).to_dict()
        same = {**then, **where} == {**config.to_dict(), **where}
        # the same kind of machine: the kernel build in `platform` changes between sessions
        kind = ("processor", "cpus", "bf16_matrix_units", "torch")
        here, there = machine_info(), done.get("machine", {})
        if not same or any(here[k] != there.get(k) for k in kind):
            sys.exit(f"{flower_run}: not a run of the {which} defaults on this kind of machine")
        flower_seconds = done["run_seconds"]
    else:
        flower_seconds = timed(lambda: run(config, flower_dir, show_progress=False))
    loop = plain_loop(config, loop_dir, config.seed)
    return {
        "config": which,
        "flower_run": str(flower_run) if flower_run else None,
        "flower_seconds": flower_seconds,
        "plain_loop_seconds": loop["total"],
        "ratio": flower_seconds / loop["total"],
        "plain_loop_phases": loop,
        "flower_phases": phase_seconds(flower_dir),
    }


def phase_seconds(run_dir: Path) -> dict:
    ckpt = Checkpoints(run_dir)
    out = {}
    for s, r in ckpt.records().items():
        # a stage's round of site training (wall time, sites in parallel) and its distillation
        local, distill = r.get("local_seconds"), r.get("distill", {}).get("seconds")
        out.update({f"stage_{s}_local": local} if local is not None else {})
        out.update({f"stage_{s}_distill": distill} if distill is not None else {})
        out[f"stage_{s}"] = r["seconds"]
    out.update({f"evaluation:{a}": s for a, s in ckpt.evaluation_seconds().items()})
    return out


# -------------------------------------------------------------------------------------- precision


def precision(run_dir: Path) -> dict:
    """A finished `meduniverse run configs/shared8.toml` of the defaults, at whatever precision it
    resolved to, against the fp32 runs of bench/results/confirm_defaults.json: its time and each
    arm's val/test means beside the fp32 run of the same seed and the fp32 seed-to-seed spread."""
    from statistics import stdev

    from screen import run_row

    reference = read_json(OUT.parent / "confirm_defaults.json")
    row = run_row(run_dir, load_config(ROOT / "configs" / "shared8.toml").to_dict(), None)
    if row["changes"]:
        raise SystemExit(f"{run_dir}: not the default configuration ({row['changes']})")
    same = next((r for r in reference["runs"] if r["seed"] == row["seed"]), None)
    if same is None:
        raise SystemExit(f"confirm_defaults.json has no fp32 run of seed {row['seed']}")
    results = read_json(run_dir / "results.json")
    arms = {}
    for arm, now in row["arms"].items():
        fp32 = [r["arms"][arm]["test"] for r in reference["runs"]]
        arms[arm] = {
            "val": now["val"],
            "test": now["test"],
            "fp32_val": same["arms"][arm]["val"],
            "fp32_test": same["arms"][arm]["test"],
            "test_minus_fp32": now["test"] - same["arms"][arm]["test"],
            "fp32_seed_spread_test": stdev(fp32),  # sample std of the fp32 seeds' test means
        }
    return {
        "run": str(run_dir),
        "run_commit": results.get("commit"),
        "seed": row["seed"],
        "compute": results.get("compute"),
        "run_seconds": row["run_seconds"],
        "fp32_run_seconds": same["run_seconds"],
        "fp32_machine": reference["machine"],
        "phases": phase_seconds(run_dir),
        "arms": arms,
    }


# ---------------------------------------------------------------------------------------- scaling


def scaling(place: str = "memory") -> dict:
    """Time of one server step and its peak memory for 8, 32 and 64 site models, pool x1 and x4,
    with the teachers' outputs in `place` (`runtime.teacher_outputs`). The peak is the process's
    since it started, so a row's figure is never below the rows before it."""
    rows = []
    for factor in (1, 4):
        config = shared8(
            f"pool.max_images={4000 * factor}",
            f"pool.segmentation_max={384 * factor}",
            "method.distill_epochs=1",
            f"runtime.teacher_outputs='{place}'",
        )
        pool = build_pool(config).images
        if factor > 1:  # the shared datasets hold no more public images: repeat them, flipped
            pool = {
                g: torch.cat([x if i % 2 == 0 else x.flip(-1) for i in range(factor)])
                for g, x in pool.items()
            }
        for sites in (8, 32, 64) if factor == 1 else (8, 32):
            many = sharded(config, sites)
            state = build_model(many, seed=0).state_dict()
            updates = [SiteUpdate(s.name, part_of(state, s.name), 100) for s in many.sites]
            gc.collect()
            before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            torch.set_num_threads(many.runtime.server_threads)
            seconds = timed(
                lambda m=many, u=updates, st=state, p=pool: server_step(st, u, m, p, seed=0)
            )
            after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            rows.append(
                {
                    "sites": sites,
                    "pool_factor": factor,
                    "teacher_outputs": place,
                    "pool_images": {g: len(x) for g, x in pool.items()},
                    "server_step_seconds": seconds,
                    "peak_rss_mb": after / 1024,
                    "peak_rss_growth_mb": (after - before) / 1024,
                }
            )
            print(rows[-1], file=sys.stderr)
            part = "scaling" if place == "memory" else f"scaling_{place}"
            save(part, {"rows": rows, "complete": False})  # a long part: keep what is done
            del updates, state
    return {"rows": rows, "complete": True}


def plot() -> None:
    """bench/results/speed.png: the scaling rows, server-step time and peak memory against sites."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figures = read_json(OUT)
    rows = [
        {
            **r,
            "outputs": r.get("teacher_outputs", "memory"),
            "machine": MACHINE[kind] or "the AVX2 machine",
            "code": scaled["commit"][:7],
        }
        for part in ("scaling", "scaling_disk")
        for kind, scaled in kinds(figures, part)
        for r in scaled["rows"]
    ]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 4.5))

    def key(r: dict) -> tuple:
        return r["pool_factor"], r["outputs"], r["machine"], r["code"]

    for group in sorted({key(r) for r in rows}):
        mine = [r for r in rows if key(r) == group]
        sites = [r["sites"] for r in mine]
        label = "pool x{}, outputs {} {} ({}, commit {})".format(
            group[0], "on" if group[1] == "disk" else "in", *group[1:]
        )
        left.plot(sites, [r["server_step_seconds"] for r in mine], "o-", label=label)
        right.plot(sites, [r["peak_rss_mb"] for r in mine], "o-", label=label)
    left.set(xlabel="sites", ylabel="server step (s)", title="time")
    right.set(xlabel="sites", ylabel="process peak RSS (MB)", title="server memory")
    for ax in (left, right):
        ax.grid(alpha=0.3)
    fig.legend(*left.get_legend_handles_labels(), loc="lower center", ncol=2, fontsize="small")
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    fig.savefig(OUT.with_suffix(".png"), dpi=120)
    print(OUT.with_suffix(".png"), file=sys.stderr)


PARTS = {
    "peak": peak,
    "phases": phases,
    "phases_fp32": lambda: phases("fp32"),
    "phases_bf16": lambda: phases("bf16"),
    "variants": variants,
    "allocator": lambda: allocator(reps=2, calls=1, threaded=False),
    "allocator_warm": lambda: allocator(reps=1, calls=2, threaded=True),
    "arena": arena,
    "scaling": scaling,
    "scaling_disk": lambda: scaling("disk"),
}
TREE_PARTS = {"distill_steps": distill_steps, "server_memory": server_memory}

if __name__ == "__main__":
    args = sys.argv[1:]
    if args == ["plot"]:
        plot()
    elif args[:1] == ["server_step_usage"]:  # a child of `allocator`
        print(json.dumps(server_step_usage(args[1] == "kept", int(args[2]), args[3] == "thread")))
    elif args[:1] and args[0] in TREE_PARTS:  # parts that measure package trees, given or ours
        save(args[0], TREE_PARTS[args[0]](args[1:] or [str(ROOT / "src")]))
    elif args[:1] == ["precision"]:
        add = args[1:2] == ["--add"]  # after the runs speed.json holds already
        held = read_json(OUT).get(part_name("precision")) if add and OUT.is_file() else None
        if add and held is None:
            sys.exit(f"precision --add: {OUT.name} holds no {part_name('precision')}; run without")
        earlier = held["runs"] if add else []
        save("precision", {"runs": earlier + [precision(Path(a)) for a in args[1 + add :]]})
    elif args[:1] in (["overhead"], ["work"]):
        which = args[args.index("--config") + 1] if "--config" in args else "demo"
        if args[0] == "work":
            save(f"work_{which}", work(which))
        else:
            flower = Path(args[args.index("--flower-run") + 1]) if "--flower-run" in args else None
            save(f"overhead_{which}", overhead(which, flower))
    else:
        for part in args:
            save(part, PARTS[part]())
