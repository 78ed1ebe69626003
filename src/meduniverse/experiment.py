"""`meduniverse experiment`: every arm for N seeds, then confidence intervals, paired tests, curves, costs and the report.

Each seed is one run directory (DIR/seed_K) holding the method, the federated competitors and every evaluation
arm, resumable stage by stage; the centralised ceiling trains in this process on pooled private data (what
privacy forbids in practice: it exists only as the reference).
"""

from pathlib import Path
import sys
import time

import numpy as np
import torch

from meduniverse.checkpoints import Checkpoints
from meduniverse.config import FederationConfig
from meduniverse.evaluation import arm_order, describe_arm, git_commit, machine_info, results_document
from meduniverse.files import write_json
from meduniverse.models.universal import build_model
from meduniverse.pipeline import run
from meduniverse.progress import RunProgress, log
from meduniverse.sites import load_site
from meduniverse.statistics import paired_test, per_task_test
from meduniverse.tasks import primary_metric
from meduniverse.training import evaluate, train_multitask

OURS = ("universal", "universal_finetuned")
AGAINST = ("baseline", "fedavg", "local")


def run_centralized(config: FederationConfig, run_dir: Path, seed: int, show_progress: bool) -> None:
    """The ceiling: multi-task training from the MIM encoder on every site's pooled private data, same step budget."""
    ckpt, last = Checkpoints(run_dir), config.method.stages
    if "centralized" in ckpt.evaluation(last):
        return
    torch.set_num_threads(config.runtime.server_threads)
    started = time.perf_counter()
    model = build_model(config, seed=seed)
    model.load_state_dict(ckpt.load_stage(0))
    data = {s.name: load_site(s, config.pool, config.input_spec(s.task), config.seed) for s in config.sites}
    with RunProgress(show_progress) as progress:
        train_multitask(model, {n: d.splits["train"] for n, d in data.items()}, config.method, seed * 1000 + 999,
                        progress.phase("centralized: multi-task training on pooled data"))
    per_site = {}
    for name, site in data.items():
        per_site[name] = {"num-examples": len(site.splits["train"])}
        for split in ("val", "test"):
            per_site[name].update({f"{split}-{k}": v for k, v in evaluate(model, name, site.splits[split]).items()})
    ckpt.save_evaluation("centralized", last, per_site, time.perf_counter() - started)


def seed_evaluation(ckpt: Checkpoints, last: int) -> dict[str, dict]:
    """The arms a seed's sites evaluated, plus 'local' (the baseline's computation, see evaluation.DESCRIPTIONS)."""
    evaluation = ckpt.evaluation(last)
    return {**evaluation, "local": evaluation["baseline"]}


def stage_records(ckpt: Checkpoints, arm: str) -> dict[str, dict]:
    progress = ckpt.progress()
    return progress["stages"] if arm == "universal" else progress["arms"].get(arm, {})


def curves(config: FederationConfig, ckpts: list[Checkpoints]) -> dict:
    """Per task and federated arm, the validation metric of the arm's model after each stage 1..S.

    After stage s < S it is what the site scored on receiving stage s's model (stage s+1's train reply);
    after stage S it is the final evaluation of the arm as is.
    """
    S, out = config.method.stages, {}
    for site in config.sites:
        key, entry = primary_metric(site.task), {}
        for arm in ("universal", *config.competitors.federated):
            rows = []
            for ckpt in ckpts:
                records, final = stage_records(ckpt, arm), ckpt.evaluation(S).get(arm, {}).get(site.name)
                if final is None:
                    continue
                rows.append([records[str(s + 1)]["sites"][site.name][f"received-val-{key}"] for s in range(1, S)]
                            + [final[f"val-{key}"]])
            if rows:
                entry[arm] = {"stages": list(range(1, S + 1)), "mean": np.mean(rows, axis=0).tolist(), "per_seed": rows}
        out[site.name] = entry
    return out


def costs(config: FederationConfig, ckpts: list[Checkpoints]) -> dict:
    """Seconds per arm (mean over seeds) and, per stage, bytes each way and each site's training seconds (first seed)."""
    first, out = ckpts[0], {}
    for arm in ("universal", *config.competitors.federated):
        stages = {}
        for s, record in stage_records(first, arm).items():
            if s == "0":  # the shared MIM stage, reported as stage_0_mim
                continue
            stages[s] = {"seconds": record["seconds"], "bytes_to_sites": record["bytes_to_sites"],
                         "bytes_from_sites": record["bytes_from_sites"],
                         "site_seconds": {site: m["train-seconds"] for site, m in record["sites"].items()}}
        seconds = np.mean([sum(r["seconds"] for s, r in stage_records(c, arm).items() if s != "0") for c in ckpts])
        out[arm] = {"seconds": float(seconds), "stages": stages}
    out["stage_0_mim"] = {"seconds": float(np.mean([c.stage_record(0)["seconds"] for c in ckpts])), "stages": {}}
    for arm in first.evaluation_seconds():
        seconds = float(np.mean([c.evaluation_seconds().get(arm, np.nan) for c in ckpts]))
        out.setdefault(f"evaluation:{arm}", {"seconds": seconds, "stages": {}})
    return out


def fidelity(config: FederationConfig, ckpts: list[Checkpoints], tasks: dict) -> None:
    """Per task: the last stage's site teacher on test, and the universal model's distance to it (means over seeds)."""
    S = config.method.stages
    for site in config.sites:
        key = primary_metric(site.task)
        teacher = float(np.mean([c.stage_record(S)["sites"][site.name][f"test-{key}"] for c in ckpts]))
        arms = tasks[site.name]["arms"]
        tasks[site.name]["fidelity"] = {
            "teacher_test": teacher,
            **{f"{arm}_minus_teacher": arms[arm]["mean"] - teacher for arm in OURS if arm in arms},
            **{f"universal_minus_{arm}": arms["universal"]["mean"] - arms[arm]["mean"]
               for arm in ("baseline", "universal_finetuned", "centralized") if arm in arms and "universal" in arms},
        }


def statistics(tasks: dict) -> tuple[dict, dict]:
    """The `tests` block (Wilcoxon over (task, seed) pairs) and per-task paired t-tests."""
    tests, per_task = {}, {}
    for ours in OURS:
        for other in AGAINST:
            a, b = [], []
            for site, entry in tasks.items():
                arms = entry["arms"]
                if ours in arms and other in arms:
                    a += arms[ours]["per_seed"]
                    b += arms[other]["per_seed"]
                    per_task.setdefault(site, {})[f"{ours}_vs_{other}"] = per_task_test(arms[ours]["per_seed"], arms[other]["per_seed"])
            if a:
                tests[f"{ours}_vs_{other}"] = paired_test(a, b)
    return tests, per_task


def budgets(config: FederationConfig) -> dict:
    m, f = config.method, config.finetune
    federated = {"stages": m.stages, "local_epochs_per_stage": m.local_epochs, "min_steps_per_epoch": m.min_steps_per_epoch,
                 "lr": m.lr, "batch_size": m.batch_size, "seg_batch_size": m.seg_batch_size}
    tune = {"max_epochs": f.max_epochs, "patience": f.patience, "max_steps_per_epoch": f.max_steps_per_epoch, "lr": f.lr,
            "optimizer": "AdamW", "early_stopping": "validation primary metric, best epoch kept"}
    out = {"baseline": {"finetune": tune}, "local": {"finetune": tune}, "universal": federated,
           "universal_finetuned": {**federated, "finetune": tune},
           "centralized": {"steps": "per task: stages x local training steps of that site, interleaved"}}
    for arm in config.competitors.federated:
        out[arm] = {**federated, **({"proximal_mu": config.competitors.proximal_mu} if arm == "fedprox" else {})}
    for enc in config.competitors.probes:
        out[f"{enc}_probe"] = {"finetune": tune, "encoder": "frozen"}
    return out


def seed_seconds(ckpt: Checkpoints) -> float:
    """Seconds of work of one seed, from its checkpoint records (so also right for a resumed run): every stage
    of every arm and every evaluation (without the engine's start-up)."""
    progress = ckpt.progress()
    stages = [r for r in progress["stages"].values()] + [r for arm in progress["arms"].values() for r in arm.values()]
    return sum(r["seconds"] for r in stages) + sum(ckpt.evaluation_seconds().values())


def experiment_results(config: FederationConfig, out_dir: Path, seeds: list[int], commit: str, seconds: float) -> dict:
    """Assemble DIR/results.json from the seed directories."""
    S = config.method.stages
    ckpts = [Checkpoints(out_dir / f"seed_{s}") for s in seeds]
    evaluation = {str(s): seed_evaluation(c, S) for s, c in zip(seeds, ckpts, strict=True)}
    results = results_document(config, evaluation, seeds, {}, commit)
    fidelity(config, ckpts, results["tasks"])
    tests, per_task = statistics(results["tasks"])
    names = arm_order(a for e in results["tasks"].values() for a in e["arms"])
    plan = budgets(config)
    results.update({
        "name": config.name, "command": " ".join(["meduniverse", *sys.argv[1:]]), "machine": machine_info(),
        "arms": {a: {"description": describe_arm(a), "budget": plan.get(a, {})} for a in names},
        "tests": tests, "per_task_tests": per_task, "curves": curves(config, ckpts), "cost": costs(config, ckpts),
        "experiment_seconds": seconds,
        "seed_seconds": {str(s): seed_seconds(c) for s, c in zip(seeds, ckpts, strict=True)},
    })
    return results


def run_experiment(config: FederationConfig, out_dir: Path, seeds: list[int], show_progress: bool = True,
                   report: bool = True) -> dict:
    """Every arm for every seed (each resumable), then DIR/results.json and DIR/report.html."""
    out_dir = Path(out_dir)
    started, commit = time.perf_counter(), git_commit()
    for seed in seeds:
        log.info("experiment %s: seed %d of %s", config.name, seed, seeds)
        run(config, out_dir / f"seed_{seed}", seed, show_progress, competitors=True)
        if config.competitors.centralized:
            run_centralized(config, out_dir / f"seed_{seed}", seed, show_progress)
    results = experiment_results(config, out_dir, seeds, commit, time.perf_counter() - started)
    write_json(out_dir / "results.json", results)
    if report:
        from meduniverse.report import build_report

        build_report(out_dir, results, config)
    return results
