"""Screen distillation settings on one finished run's last stage, in minutes instead of a full run.

The run's last-stage site teachers are retrained once from its stage S-1 model (the same
`train_site`, seeds and settings as in the run) and cached; then each variant distils them into
the stage S-1 model with `server_step` and scores the universal model as is on every site's
validation split (test is reported, never chosen on). Only distillation settings
(`method.distill_*`, `method.retention`, `method.temperature`) may vary: the teachers stay the
run's.

    python bench/screen_distill.py RUN_DIR OUT.json --variant NAME=method.KEY=VALUE[;...] ...
        [--teachers DIR]
"""

import argparse
from dataclasses import replace
from pathlib import Path
import sys
import time
import tomllib

import numpy as np
import torch

from meduniverse.core.checkpoints import Checkpoints
from meduniverse.core.config import FederationConfig
from meduniverse.core.config_file import check_config, config_from_dict
from meduniverse.core.files import read_json, read_tensors, write_json, write_tensors
from meduniverse.core.provenance import git_commit, provenance
from meduniverse.core.seeds import derive_seed
from meduniverse.core.tasks import task_type
from meduniverse.federation.client_app import site_model
from meduniverse.method.server import SiteUpdate, server_step
from meduniverse.method.site import stage_method, train_site
from meduniverse.method.supervised import evaluate
from meduniverse.models.universal import build_model, part_of
from meduniverse.sites.pool import build_pool, own_images
from meduniverse.sites.sources import SiteData, load_site

DISTILLATION = ("distill_", "retention", "temperature")


def variant_config(config: FederationConfig, settings: list[str]) -> FederationConfig:
    """The run's configuration with distillation settings 'method.KEY=VALUE' (TOML values)."""
    method = config.method
    for item in settings:
        key, _, value = item.partition("=")
        section, _, name = key.partition(".")
        if section != "method" or not name.startswith(DISTILLATION):
            sys.exit(f"{item}: only method.distill_*, method.retention, method.temperature vary")
        method = replace(method, **{name: tomllib.loads(f"v = {value}")["v"]})
    varied = replace(config, method=method)
    check_config(varied)
    return varied


def primary(model, site: str, data: SiteData, split: str) -> float:
    return evaluate(model, site, data.splits[split])[task_type(data.task).primary]


def teachers(
    config: FederationConfig, previous: dict, sites: dict[str, SiteData], cache: Path
) -> tuple[list[SiteUpdate], dict[str, float]]:
    """The last stage's site models (trained once, then read from `cache`) and their val scores."""
    stage_seed = derive_seed(config.seed, config.method.stages)
    cache.mkdir(parents=True, exist_ok=True)
    updates, scores = [], {}
    for name, data in sites.items():
        path = cache / f"{name}.safetensors"
        model = site_model(config, data, part_of(previous, name), stage_seed)
        if path.is_file():
            model.load_state_dict(read_tensors(path))
        else:
            started = time.perf_counter()
            method = stage_method(config.method, config.method.stages)
            train_site(model, name, data.splits, method, config.finetune, stage_seed)
            write_tensors(path, model.state_dict())
            print(f"teacher {name}: {time.perf_counter() - started:.0f} s", flush=True)
        scores[name] = primary(model, name, data, "val")
        updates.append(SiteUpdate(name, model.state_dict(), len(data.splits["train"])))
    return updates, scores


def score(config: FederationConfig, state: dict, sites: dict[str, SiteData]) -> dict:
    model = build_model(config)
    model.load_state_dict(state)
    out = {}
    for split in ("val", "test"):
        per_task = {name: primary(model, name, data, split) for name, data in sites.items()}
        out[split], out[f"{split}_per_task"] = float(np.mean(list(per_task.values()))), per_task
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--variant", action="append", default=[], help="NAME=KEY=VALUE[;...]")
    parser.add_argument("--teachers", type=Path, help="teacher cache (default RUN/screen_teachers)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    config = config_from_dict(read_json(args.run / "config.json"), str(args.run / "config.json"))
    last = config.method.stages
    ckpt = Checkpoints(args.run)
    previous = ckpt.load_stage(last - 1)
    pool = build_pool(config)
    own = own_images(config, pool)
    sites = {
        s.name: load_site(s, config.pool, config.input_spec(s.task), config.seed)
        for s in config.sites
    }
    cache = args.teachers or args.run / "screen_teachers"
    updates, teacher_val = teachers(config, previous, sites, cache)
    doc = read_json(args.out) if args.out.is_file() else {}
    doc.update(
        {
            **provenance(
                __doc__, "python bench/screen_distill.py RUN OUT --variant ... (one per row)"
            ),
            "run": args.run.name,
            "stage": last,
            "teacher_val": float(np.mean(list(teacher_val.values()))),
            "teacher_val_per_task": teacher_val,
            "run_universal": score(config, ckpt.load_stage(last), sites),
        }
    )
    rows = doc.setdefault("variants", {})
    for spec in args.variant:
        name, _, settings = spec.partition("=")
        varied = variant_config(config, [s for s in settings.split(";") if s])
        started = time.perf_counter()
        state, stats = server_step(
            previous, updates, varied, pool.images, seed=derive_seed(config.seed, last), own=own
        )
        row = {
            "settings": settings,
            "commit": git_commit(),
            "distill_seconds": time.perf_counter() - started,
        }
        row.update(score(varied, state, sites))
        row["fidelity_gap_val"] = doc["teacher_val"] - row["val"]
        rows[name] = row
        write_json(args.out, doc)
        print(
            f"{name}: val {row['val']:.4f} test {row['test']:.4f} ({stats.steps} steps, "
            f"{row['distill_seconds']:.0f} s)",
            flush=True,
        )


if __name__ == "__main__":
    main()
