"""What an experiment's checkpoints and results say beyond the per-task table: validation curves
over stages, costs, distillation fidelity, paired tests and the arms' budgets."""

import numpy as np

from meduniverse.core.arms import ARMS, FEDERATED, FINETUNE, MODELS, POOLED, PROBE
from meduniverse.core.checkpoints import Checkpoints
from meduniverse.core.config import FederationConfig
from meduniverse.core.tasks import task_type
from meduniverse.results.statistics import paired_test, per_task_test

OURS = ("universal", "universal_finetuned")
# (ours, other): the paired tests of an experiment; a pair whose arms did not run is left out
COMPARISONS = [
    *((ours, other) for ours in OURS for other in ("baseline", "fedavg", "local")),
    ("universal", "ditto"),
    ("universal", "fedrep"),
    ("universal_finetuned", "fedavg_finetuned"),
    ("universal_finetuned", "centralized_finetuned"),
]


def federated_models(config: FederationConfig) -> list[str]:
    return ["universal", *config.competitors.federated]


def curves(config: FederationConfig, ckpts: list[Checkpoints]) -> dict:
    """Per task and federated model, the validation metric of the model after each stage 1..S.

    After stage s < S it is what the site scored on receiving stage s's model (stage s+1's train
    reply);
    after stage S it is the final evaluation of the arm as is.
    """
    S, out = config.method.stages, {}
    for site in config.sites:
        key, entry = task_type(site.task).primary, {}
        for model in federated_models(config):
            rows = []
            for ckpt in ckpts:
                records, final = (
                    ckpt.records(model),
                    ckpt.evaluation(S).get(model, {}).get(site.name),
                )
                if final is None:
                    continue
                rows.append(
                    [
                        records[str(s + 1)]["sites"][site.name][f"received-val-{key}"]
                        for s in range(1, S)
                    ]
                    + [final[f"val-{key}"]]
                )
            if rows:
                entry[model] = {
                    "stages": list(range(1, S + 1)),
                    "mean": np.mean(rows, axis=0).tolist(),
                    "per_seed": rows,
                }
        out[site.name] = entry
    return out


def costs(config: FederationConfig, ckpts: list[Checkpoints]) -> dict:
    """Seconds per federated model (mean over seeds) and, per stage, bytes each way and each site's
    training seconds (first seed); seconds of stage 0 and of every evaluation."""
    first, out = ckpts[0], {}
    for model in federated_models(config):
        stages = {}
        for s, record in first.records(model).items():
            if s == "0":  # the shared MIM stage, reported as stage_0_mim
                continue
            stages[s] = {
                "seconds": record["seconds"],
                "bytes_to_sites": record["bytes_to_sites"],
                "bytes_from_sites": record["bytes_from_sites"],
                "site_seconds": {site: m["train-seconds"] for site, m in record["sites"].items()},
            }
        seconds = np.mean(
            [sum(r["seconds"] for s, r in c.records(model).items() if s != "0") for c in ckpts]
        )
        out[model] = {"seconds": float(seconds), "stages": stages}
    out["stage_0_mim"] = {
        "seconds": float(np.mean([c.stage_record(0)["seconds"] for c in ckpts])),
        "stages": {},
    }
    for arm in first.evaluation_seconds():
        seconds = float(np.mean([c.evaluation_seconds().get(arm, np.nan) for c in ckpts]))
        out.setdefault(f"evaluation:{arm}", {"seconds": seconds, "stages": {}})
    return out


def fidelity(config: FederationConfig, ckpts: list[Checkpoints], tasks: dict) -> None:
    """Per task: the last stage's site teacher on test, and the universal model's distance to it
    (means over seeds)."""
    S = config.method.stages
    for site in config.sites:
        key = task_type(site.task).primary
        teacher = float(
            np.mean([c.stage_record(S)["sites"][site.name][f"test-{key}"] for c in ckpts])
        )
        arms = tasks[site.name]["arms"]
        tasks[site.name]["fidelity"] = {
            "teacher_test": teacher,
            **{f"{arm}_minus_teacher": arms[arm]["mean"] - teacher for arm in OURS if arm in arms},
            **{
                f"universal_minus_{arm}": arms["universal"]["mean"] - arms[arm]["mean"]
                for arm in ("baseline", "universal_finetuned", "centralized")
                if arm in arms and "universal" in arms
            },
        }


def statistics(tasks: dict) -> tuple[dict, dict]:
    """The `tests` block (Wilcoxon over (task, seed) pairs of each of COMPARISONS whose arms ran)
    and per-task paired t-tests."""
    tests, per_task = {}, {}
    for ours, other in COMPARISONS:
        a, b = [], []
        for site, entry in tasks.items():
            arms = entry["arms"]
            if ours in arms and other in arms:
                a += arms[ours]["per_seed"]
                b += arms[other]["per_seed"]
                per_task.setdefault(site, {})[f"{ours}_vs_{other}"] = per_task_test(
                    arms[ours]["per_seed"], arms[other]["per_seed"]
                )
        if a:
            tests[f"{ours}_vs_{other}"] = paired_test(a, b)
    return tests, per_task


def budget(arm: str, config: FederationConfig) -> dict:
    """What an arm's computation was allowed: its model's training and the fine-tune, from the
    registry's flags."""
    m, f = config.method, config.finetune
    entry, model = ARMS[arm], MODELS[ARMS[arm].model]
    out: dict = {}
    if model.training == FEDERATED:
        out.update(
            {
                "stages": m.stages,
                "local_training": m.local_training,
                "local_epochs_per_stage": m.local_epochs,
                "min_steps_per_epoch": m.min_steps_per_epoch,
                "lr": m.lr,
                "batch_size": m.batch_size,
                "seg_batch_size": m.seg_batch_size,
            }
        )
    elif model.training == POOLED:
        out["steps"] = "per task: stages x local training steps of that site, interleaved"
    for setting in model.settings:
        section, key = setting.split(".")
        out[key] = getattr(getattr(config, section), key)
    if entry.mode in (FINETUNE, PROBE):
        out["finetune"] = {
            "max_epochs": f.max_epochs,
            "patience": f.patience,
            "max_steps_per_epoch": f.max_steps_per_epoch,
            "lr": f.lr,
            "optimizer": "AdamW",
            "early_stopping": "validation primary metric, best epoch kept",
        }
    if entry.mode == PROBE:
        out["encoder"] = "frozen"
    return out


def seed_seconds(ckpt: Checkpoints) -> float:
    """Seconds of work of one seed, from its checkpoint records (so also right for a resumed run):
    every stage of every model and every evaluation (without the engine's start-up)."""
    progress = ckpt.progress()
    stages = [r for r in progress["stages"].values()] + [
        r for arm in progress["arms"].values() for r in arm.values()
    ]
    return sum(r["seconds"] for r in stages) + sum(ckpt.evaluation_seconds().values())
