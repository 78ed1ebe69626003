"""Collect one-seed screening runs of `meduniverse run` into one JSON: what each run changed against
a reference run (from the runs' own config.json), the validation and test means of every arm, the
site teachers per stage, and the distillation's fidelity gap (last-stage teachers minus the
universal model as is). Choices are made on the validation columns; test is reported only.

    python bench/screen.py bench/results/screen_issue10.json runs/speed_before runs/screen/S1_es ...
        [--commit RUN_NAME=SHA ...] [--command "how the runs were started"] [--append]
        [--adapt ADAPT_DIR ...]

An --adapt folder (`meduniverse adapt RUN_DIR --out ADAPT_DIR`) adds its run's unseen-site means.
With --append the file's earlier rows stay (a row of the same run name is replaced); each row
names the commit whose configs/shared8.toml its changes are against ('defaults_at').
"""

import argparse
from dataclasses import asdict
import json
from pathlib import Path
import subprocess

import numpy as np

from meduniverse.core.checkpoints import Checkpoints
from meduniverse.core.config import (
    FinetuneConfig,
    MethodConfig,
    ModelConfig,
    PoolConfig,
    PrivacyConfig,
)
from meduniverse.core.config_file import load_config
from meduniverse.core.files import write_json
from meduniverse.core.provenance import machine_info
from meduniverse.results.analysis import seed_seconds

ROOT = Path(__file__).resolve().parents[1]


def primary(metrics: dict, prefix: str) -> float:
    """The primary metric (auc or dice) with this prefix ('val-', 'test-', 'received-val-')."""
    return next(v for k, v in metrics.items() if k in (f"{prefix}auc", f"{prefix}dice"))


SECTIONS = {
    "pool": PoolConfig,
    "model": ModelConfig,
    "method": MethodConfig,
    "finetune": FinetuneConfig,
    "privacy": PrivacyConfig,
}


def changes(defaults: dict, config: dict) -> dict:
    """Settings (section.key) a run set away from today's defaults. A setting the run's code did not
    have yet took the value that the code's default still has (new settings default to off)."""
    out = {}
    for section, cls in SECTIONS.items():
        before = defaults.get(section, {})
        now = {**json.loads(json.dumps(asdict(cls()))), **config.get(section, {})}
        out.update({f"{section}.{k}": v for k, v in sorted(now.items()) if before.get(k) != v})
    return out


def run_row(run_dir: Path, defaults: dict, commit: str | None) -> dict:
    """One screening run: its changes, per-stage teachers, arms (val/test mean and per task)."""
    progress = json.loads((run_dir / "checkpoints" / "progress.json").read_text())
    results = json.loads((run_dir / "results.json").read_text())
    stages = {}
    for stage, record in sorted(progress["stages"].items(), key=lambda x: int(x[0])):
        sites = record.get("sites", {})
        if stage == "0" or not sites:
            continue
        stages[stage] = {
            "received_val": float(np.mean([primary(m, "received-val-") for m in sites.values()])),
            "teacher_val": float(np.mean([primary(m, "val-") for m in sites.values()])),
            "teacher_val_per_task": {s: primary(m, "val-") for s, m in sites.items()},
            "teacher_test": float(np.mean([primary(m, "test-") for m in sites.values()])),
            "teacher_test_per_task": {s: primary(m, "test-") for s, m in sites.items()},
            "local_seconds": record.get("local_seconds"),
            "distill_seconds": record.get("distill", {}).get("seconds"),
            # method.teachers = 'best': the sites whose teacher of the stage before won
            "kept_teachers": sorted(s for s, m in sites.items() if m.get("kept-teacher")),
        }
    arms = {}
    for arm, evaluation in progress.get("evaluation", {}).items():
        sites = evaluation["sites"]
        arms[arm] = {
            "val": float(np.mean([primary(m, "val-") for m in sites.values()])),
            "test": float(np.mean([primary(m, "test-") for m in sites.values()])),
            "val_per_task": {s: primary(m, "val-") for s, m in sites.items()},
            "test_per_task": {s: primary(m, "test-") for s, m in sites.items()},
            "seconds": evaluation.get("seconds"),
        }
    last = stages[max(stages, key=int)] if stages else None
    universal = arms.get("universal")
    return {
        "run": run_dir.name,
        # the seed the run ran (`run --seed` overrides the configuration's)
        "seed": (results.get("seeds") or [results["config"]["seed"]])[0],
        "commit": commit or results.get("commit", "unknown"),
        "changes": changes(defaults, results["config"]),
        # a run resumed before 2026-12-06 counted only its last attempt's seconds: at least the
        # work its checkpoints record over every attempt (what finish_run itself writes since)
        "run_seconds": max(results.get("run_seconds", 0.0), seed_seconds(Checkpoints(run_dir))),
        # runs since 9549bbf name their machine; the file's own `machine` is its first rows'
        "machine": results.get("machine"),
        "compute": results.get("compute"),  # the resolved device and precision (since 9549bbf)
        "stages": stages,
        "arms": arms,
        "fidelity_gap_val": last["teacher_val"] - universal["val"] if last and universal else None,
    }


def unseen(run_dir: Path, adapted: list[dict]) -> dict:
    """The `meduniverse adapt` results (given with --adapt) of this run: per unseen site and arm
    (e.g. 'universal_probe@0.01'), the validation and test means over the adaptation's seeds."""
    mine = [a for a in adapted if Path(a["source_run"]).resolve() == run_dir.resolve()]
    return {
        site: {arm: {"val": r["val"]["mean"], "test": r["mean"]} for arm, r in task["arms"].items()}
        for a in mine
        for site, task in a["tasks"].items()
    }


def parse_runs(
    description: str, command: str, adapt: bool = False, append: bool = False
) -> tuple[argparse.Namespace, dict, dict]:
    """The command line of a collector of runs: OUT RUN_DIR... [--commit RUN=SHA] [--command]
    (with `adapt`, [--adapt ADAPT_DIR]; with `append`, [--append]); returns the arguments, each
    run's commit and configs/shared8.toml's settings."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("out", type=Path)
    parser.add_argument("runs", type=Path, nargs="*" if adapt else "+")
    if adapt:
        parser.add_argument(
            "--adapt", type=Path, action="append", default=[], help="a `meduniverse adapt` --out"
        )
    if append:
        parser.add_argument("--append", action="store_true", help="keep the file's earlier rows")
    parser.add_argument("--commit", action="append", default=[], help="RUN_NAME=SHA")
    parser.add_argument("--command", default=command)
    args = parser.parse_args()
    commits = dict(c.split("=", 1) for c in args.commit)
    return args, commits, load_config(ROOT / "configs" / "shared8.toml").to_dict()


def head_commit() -> str:
    done = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    )
    return done.stdout.strip() or "unknown"


def main() -> None:
    args, commits, defaults = parse_runs(
        __doc__.splitlines()[0],
        "meduniverse run configs/shared8.toml --set ...",
        adapt=True,
        append=True,
    )
    adapted = [json.loads((a / "results.json").read_text()) for a in args.adapt]
    rows = [
        {
            **run_row(r, defaults, commits.get(r.name)),
            "defaults_at": head_commit(),
            "unseen": unseen(r, adapted),
        }
        for r in args.runs
    ]
    seeds, machine = {r["seed"] for r in rows}, machine_info()
    if args.append and args.out.is_file():
        new = {r["run"] for r in rows}
        earlier = json.loads(args.out.read_text())
        # rows written before rows named their seed keep the file's own seed list
        seeds |= set(earlier.get("seeds", []))
        machine = earlier.get("machine", machine)
        rows = [r for r in earlier["runs"] if r["run"] not in new] + rows
    write_json(
        args.out,
        {
            "what": __doc__.splitlines()[0],
            "command": args.command,
            "machine": machine,
            "seeds": sorted(seeds | {r["seed"] for r in rows if "seed" in r}),
            "defaults": "configs/shared8.toml at the commit of this file",
            "runs": rows,
        },
    )
    for row in rows:
        universal = row["arms"].get("universal", {})
        print(
            f"{row['run']:24s} universal val {universal.get('val', float('nan')):.3f} "
            f"gap {row['fidelity_gap_val'] or float('nan'):.3f}  {row['changes']}"
        )


if __name__ == "__main__":
    main()
