"""Evaluation arms and the results document (``results.json``)."""

from dataclasses import dataclass
import os
import platform
import subprocess

import numpy as np

from meduniverse.config import FederationConfig
from meduniverse.tasks import primary_metric, secondary_metric


@dataclass(frozen=True)
class Arm:
    """An evaluation arm: which weights the sites get, and whether they fine-tune them first."""

    name: str
    weights: str  # 'baseline' (stage 0 encoder, fresh head) or 'universal' (last stage: encoder + head)
    finetune: bool


ARMS = (
    Arm("baseline", "baseline", True),
    Arm("universal", "universal", False),
    Arm("universal_finetuned", "universal", True),
)


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=False)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, timeout=10, check=False).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "") if out.returncode == 0 else "unknown"
    except OSError:
        return "unknown"


def machine_info() -> dict:
    """What a benchmark ran on."""
    import torch

    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version()}


def summary(values: list[float]) -> dict:
    return {"per_seed": values, "mean": float(np.mean(values)) if values else float("nan")}


def results_document(config: FederationConfig, evaluation: dict[str, dict[str, dict]], seeds: list[int], extra: dict,
                     commit: str) -> dict:
    """{"tasks": {SITE: {"task", "metric", "arms": {ARM: {"per_seed", "mean", SECONDARY: {...}, "val": {...}}}}}, ...}.

    `evaluation[seed_key][arm][site]` holds the metrics a site returned for that arm.
    """
    tasks = {}
    for site in config.sites:
        key, second = primary_metric(site.task), secondary_metric(site.task)
        arms = {}
        for arm in ARMS:
            runs = [evaluation[str(seed)][arm.name][site.name] for seed in seeds
                    if site.name in evaluation.get(str(seed), {}).get(arm.name, {})]
            if not runs:
                continue
            arms[arm.name] = {
                **summary([r[f"test-{key}"] for r in runs]),
                second: summary([r[f"test-{second}"] for r in runs]),
                "val": summary([r[f"val-{key}"] for r in runs]),
            }
        tasks[site.name] = {"task": site.task, "metric": key, "secondary_metric": second, "arms": arms}
    return {"tasks": tasks, "config": config.to_dict(), "commit": commit, "seeds": seeds, **extra}


def format_table(results: dict) -> list[list[str]]:
    """Rows of the per-task table: site, task, metric, then each arm's mean."""
    arms = [a.name for a in ARMS]
    rows = [["site", "task", "metric", *arms]]
    for site, entry in results["tasks"].items():
        cells = [f"{entry['arms'][a]['mean']:.3f}" if a in entry["arms"] else "-" for a in arms]
        rows.append([site, entry["task"], entry["metric"], *cells])
    return rows
