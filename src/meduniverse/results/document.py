"""The results document (``results.json``): per task and arm, every seed's test metric, its mean and
95% CI."""

import numpy as np

from meduniverse.core.arms import arm_order
from meduniverse.core.config import FederationConfig
from meduniverse.core.tasks import task_type
from meduniverse.results.statistics import bootstrap_ci


def summary(values: list[float]) -> dict:
    return {"per_seed": values, "mean": float(np.mean(values)) if values else float("nan")}


def arm_summary(runs: list[dict], key: str, second: str) -> dict:
    """One arm on one task over seeds: test primary metric (per seed, mean, 95% bootstrap CI),
    secondary, val."""
    test = [r[f"test-{key}"] for r in runs]
    return {
        **summary(test),
        "ci95": bootstrap_ci(test),
        second: summary([r[f"test-{second}"] for r in runs]),
        "val": summary([r[f"val-{key}"] for r in runs]),
    }


def task_entry(task: str, arms: dict[str, dict]) -> dict:
    """A task's block of results.json: its type, metric names and arms."""
    kind = task_type(task)
    return {"task": task, "metric": kind.primary, "secondary_metric": kind.secondary, "arms": arms}


def results_document(
    config: FederationConfig,
    evaluation: dict[str, dict[str, dict]],
    seeds: list[int],
    extra: dict,
    commit: str,
) -> dict:
    """{"tasks": {SITE: {"task", "metric", "arms": {ARM: {"per_seed", "mean", "ci95", SECONDARY:
    {...}, "val": {...}}}}}, ...}.

    Args:
        config: the federation (its sites are the tasks).
        evaluation: `evaluation[seed][arm][site]` holds the metrics a site returned for that arm.
        seeds: the seeds, in order.
        extra: more top-level fields.
        commit: the code's commit.
    """
    tasks = {}
    names = arm_order(a for per_seed in evaluation.values() for a in per_seed)
    for site in config.sites:
        kind = task_type(site.task)
        arms = {}
        for arm in names:
            runs = [
                evaluation[str(seed)][arm][site.name]
                for seed in seeds
                if site.name in evaluation.get(str(seed), {}).get(arm, {})
            ]
            if runs:
                arms[arm] = arm_summary(runs, kind.primary, kind.secondary)
        tasks[site.name] = task_entry(site.task, arms)
    return {"tasks": tasks, "config": config.to_dict(), "commit": commit, "seeds": seeds, **extra}


def privacy_spent(config: FederationConfig, stages: dict[str, dict]) -> dict:
    """results.json's "privacy" block: with privacy.dp, the target, the clipping norm and each
    site's epsilon (at delta = 1/n, n its train size) after the last stage it trained in."""
    if not config.privacy.dp:
        return {"dp": False}
    spent: dict[str, float] = {}
    for stage in sorted(stages, key=int):
        for site, metrics in stages[stage].get("sites", {}).items():
            if "dp-epsilon" in metrics:
                spent[site] = float(metrics["dp-epsilon"])
    return {
        "dp": True,
        "target_epsilon": config.privacy.epsilon,
        "clip": config.privacy.clip,
        "delta": "1/n per site",
        "epsilon": spent,
    }


def format_table(results: dict) -> list[list[str]]:
    """Rows of the per-task table: site, task, metric, then each arm's mean."""
    arms = arm_order(a for entry in results["tasks"].values() for a in entry["arms"])
    rows = [["site", "task", "metric", *arms]]
    for site, entry in results["tasks"].items():
        cells = [f"{entry['arms'][a]['mean']:.3f}" if a in entry["arms"] else "-" for a in arms]
        rows.append([site, entry["task"], entry["metric"], *cells])
    return rows
