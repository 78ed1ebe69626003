"""Evaluation arms and the results document (``results.json``)."""

from dataclasses import dataclass
import os
import platform
import subprocess

import numpy as np

from meduniverse.config import FederationConfig
from meduniverse.statistics import bootstrap_ci
from meduniverse.tasks import primary_metric, secondary_metric


@dataclass(frozen=True)
class Arm:
    """An evaluation arm: which weights the sites get, and whether they fine-tune or probe them first."""

    name: str
    weights: str  # 'baseline' (stage-0 encoder, fresh head), 'universal' or a federated competitor (last stage)
    finetune: bool = False
    probe: bool = False  # the encoder of `weights` frozen, a fresh head trained with the fine-tune schedule


METHOD_ARMS = (
    Arm("baseline", "baseline", finetune=True),
    Arm("universal", "universal"),
    Arm("universal_finetuned", "universal", finetune=True),
)

DESCRIPTIONS = {
    "baseline": "MIM encoder (stage 0), fine-tuned per task with early stopping",
    "local": "each site alone from the MIM encoder, fine-tuned with the same early-stopped schedule "
             "(the same computation as baseline: with equal budgets the two arms coincide)",
    "universal": "the universal model as is: one encoder, one head per task",
    "universal_finetuned": "the universal encoder + head, fine-tuned per task with early stopping",
    "fedavg": "Flower FedAvg of the encoder, heads local, as is",
    "fedprox": "Flower FedProx of the encoder, heads local, as is",
    "fedbn": "FedAvg of the encoder except its normalisation layers (site-local), heads local, as is",
    "centralized": "all sites' data pooled, multi-task training from the MIM encoder (the ceiling privacy forbids), as is",
}
ARM_ORDER = ["baseline", "local", "universal", "universal_finetuned", "fedavg", "fedprox", "fedbn", "centralized"]


def arms_for(config: FederationConfig, competitors: bool) -> tuple[Arm, ...]:
    """The arms the sites evaluate: the method's, plus the comparison arms of an experiment."""
    if not competitors:
        return METHOD_ARMS
    return (*METHOD_ARMS, *(Arm(c, c) for c in config.competitors.federated),
            *(Arm(f"{e}_probe", e, probe=True) for e in config.competitors.probes))


def describe_arm(name: str) -> str:
    if name.endswith("_probe"):
        return f"{name[:-6]} encoder frozen, a fresh head per task trained with the fine-tune schedule (linear-probe style)"
    return DESCRIPTIONS.get(name, name)


def arm_order(names) -> list[str]:
    rank = {n: i for i, n in enumerate(ARM_ORDER)}
    return sorted(set(names), key=lambda n: (rank.get(n, len(rank)), n))


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


def arm_summary(runs: list[dict], key: str, second: str) -> dict:
    """One arm on one task over seeds: test primary metric (per seed, mean, 95% bootstrap CI), secondary, val."""
    test = [r[f"test-{key}"] for r in runs]
    return {**summary(test), "ci95": bootstrap_ci(test), second: summary([r[f"test-{second}"] for r in runs]),
            "val": summary([r[f"val-{key}"] for r in runs])}


def results_document(config: FederationConfig, evaluation: dict[str, dict[str, dict]], seeds: list[int], extra: dict,
                     commit: str) -> dict:
    """{"tasks": {SITE: {"task", "metric", "arms": {ARM: {"per_seed", "mean", "ci95", SECONDARY: {...}, "val": {...}}}}}, ...}.

    `evaluation[seed_key][arm][site]` holds the metrics a site returned for that arm.
    """
    tasks = {}
    for site in config.sites:
        key, second = primary_metric(site.task), secondary_metric(site.task)
        arms = {}
        names = arm_order(a for per_seed in evaluation.values() for a in per_seed)
        for arm in names:
            runs = [evaluation[str(seed)][arm][site.name] for seed in seeds
                    if site.name in evaluation.get(str(seed), {}).get(arm, {})]
            if runs:
                arms[arm] = arm_summary(runs, key, second)
        tasks[site.name] = {"task": site.task, "metric": key, "secondary_metric": second, "arms": arms}
    return {"tasks": tasks, "config": config.to_dict(), "commit": commit, "seeds": seeds, **extra}


def format_table(results: dict) -> list[list[str]]:
    """Rows of the per-task table: site, task, metric, then each arm's mean."""
    arms = arm_order(a for entry in results["tasks"].values() for a in entry["arms"])
    rows = [["site", "task", "metric", *arms]]
    for site, entry in results["tasks"].items():
        cells = [f"{entry['arms'][a]['mean']:.3f}" if a in entry["arms"] else "-" for a in arms]
        rows.append([site, entry["task"], entry["metric"], *cells])
    return rows
