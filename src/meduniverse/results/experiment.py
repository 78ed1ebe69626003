"""`meduniverse experiment`: every arm for N seeds, then confidence intervals, paired tests, curves,
costs and the report.

Each seed is one run directory (DIR/seed_K) holding the method, the federated competitors and every
evaluation arm, resumable stage by stage; the pooled (centralised) reference trains in this process
on every site's private data (what privacy forbids in practice: it exists only as the reference) and
is evaluated with the same function the sites use.
"""

from pathlib import Path
import sys
import time

import torch

from meduniverse.core.arms import ARMS, MODELS, POOLED, Arm, arm_order, describe_arm
from meduniverse.core.checkpoints import Checkpoints
from meduniverse.core.config import FederationConfig
from meduniverse.core.device import Compute, computing
from meduniverse.core.files import write_json
from meduniverse.core.progress import RunProgress, log
from meduniverse.core.provenance import git_commit, machine_info
from meduniverse.core.seeds import derive_seed
from meduniverse.federation.client_app import site_model
from meduniverse.method.centralized import train_multitask
from meduniverse.method.site import evaluate_arm
from meduniverse.models.universal import build_model, site_state
from meduniverse.results.analysis import budget, costs, curves, fidelity, seed_seconds, statistics
from meduniverse.results.document import privacy_spent, results_document
from meduniverse.results.run import run
from meduniverse.sites.pool import Pool, build_pool
from meduniverse.sites.sources import load_site

POOLED_SEED_PART = 999  # the pooled reference's seed: derive_seed(seed, POOLED_SEED_PART)


def run_pooled(config: FederationConfig, run_dir: Path, seed: int, show_progress: bool) -> None:
    """The centralised reference: multi-task training from the MIM encoder on every site's pooled
    private data (the sites' local step budget), checkpointed as stage S of 'centralized'; then each
    of its arms, evaluated per site with the sites' own `evaluate_arm`.

    Args:
        config: the federation.
        run_dir: the seed's run directory (its stage-0 checkpoint is the start).
        seed: the seed.
        show_progress: progress bars.
    """
    ckpt, last = Checkpoints(run_dir), config.method.stages
    arms = [a for a in config.arms(True) if MODELS[a.model].training == POOLED]
    if all(a.name in ckpt.evaluation(last) for a in arms):
        return
    with computing(config.runtime, config.runtime.server_threads, keep_memory=True) as compute:
        _pooled_arms(config, ckpt, seed, arms, compute.device, show_progress)


def _pooled_arms(
    config: FederationConfig,
    ckpt: Checkpoints,
    seed: int,
    arms: list[Arm],
    device: torch.device,
    show_progress: bool,
) -> None:
    """run_pooled's training and evaluations on `device`."""
    last = config.method.stages
    data = {
        s.name: load_site(s, config.pool, config.input_spec(s.task), config.seed, device)
        for s in config.sites
    }
    if ckpt.last_stage("centralized") != last:
        started = time.perf_counter()
        model = build_model(config, seed=seed).to(device)
        model.load_state_dict(ckpt.load_stage(0))
        with RunProgress(show_progress) as progress:
            stats = train_multitask(
                model,
                {n: d.splits["train"] for n, d in data.items()},
                config.method,
                derive_seed(seed, POOLED_SEED_PART),
                progress.phase("centralized: multi-task training on pooled data"),
            )
        ckpt.save_stage(
            last,
            {"centralized": model.state_dict()},
            {"seconds": time.perf_counter() - started, "loss": stats.loss, "steps": stats.steps},
            "centralized",
        )
    state = ckpt.load_stage(last, "centralized")
    for arm in arms:
        if arm.name in ckpt.evaluation(last):
            continue
        started, per_site = time.perf_counter(), {}
        for name, site in data.items():
            model = site_model(config, site, site_state(state, name), seed)
            per_site[name] = evaluate_arm(
                model, name, site.splits, arm.mode, config.method, config.finetune, seed
            )
        ckpt.save_evaluation(arm.name, last, per_site, time.perf_counter() - started)


def seed_evaluation(ckpt: Checkpoints, last: int) -> dict[str, dict]:
    """The arms a seed evaluated, plus the aliases of computed arms (`local` is the baseline's
    computation)."""
    evaluation = ckpt.evaluation(last)
    aliases = {a.name: evaluation[a.same_as] for a in ARMS.values() if a.same_as in evaluation}
    return {**evaluation, **aliases}


def experiment_results(
    config: FederationConfig, out_dir: Path, seeds: list[int], commit: str, seconds: float
) -> dict:
    """Assemble DIR/results.json from the seed directories.

    Args:
        config: the federation.
        out_dir: the experiment directory.
        seeds: the seeds.
        commit: the code's commit.
        seconds: the experiment's wall time.
    """
    S = config.method.stages
    ckpts = [Checkpoints(out_dir / f"seed_{s}") for s in seeds]
    evaluation = {str(s): seed_evaluation(c, S) for s, c in zip(seeds, ckpts, strict=True)}
    privacy = privacy_spent(config, {})
    for c in ckpts:  # each seed is a whole run: its own budget; the block shows the largest spent
        for site, eps in privacy_spent(config, c.records()).get("epsilon", {}).items():
            privacy["epsilon"][site] = max(eps, privacy["epsilon"].get(site, 0.0))
    results = results_document(config, evaluation, seeds, {"privacy": privacy}, commit)
    fidelity(config, ckpts, results["tasks"])
    tests, per_task = statistics(results["tasks"])
    names = arm_order(a for e in results["tasks"].values() for a in e["arms"])
    results.update(
        {
            "name": config.name,
            "command": " ".join(["meduniverse", *sys.argv[1:]]),
            "machine": machine_info(),
            "compute": Compute.of(config.runtime).describe(),
            "arms": {
                a: {
                    "description": describe_arm(a),
                    "budget": budget(a, config) if a in ARMS else {},
                }
                for a in names
            },
            "tests": tests,
            "per_task_tests": per_task,
            "curves": curves(config, ckpts),
            "cost": costs(config, ckpts),
            "experiment_seconds": seconds,
            "seed_seconds": {str(s): seed_seconds(c) for s, c in zip(seeds, ckpts, strict=True)},
        }
    )
    return results


def run_experiment(
    config: FederationConfig,
    out_dir: Path,
    seeds: list[int],
    show_progress: bool = True,
    pool: Pool | None = None,
) -> dict:
    """Every arm for every seed (each resumable), then DIR/results.json.

    Args:
        config: the federation.
        out_dir: the experiment directory; seed K runs in out_dir/seed_K.
        seeds: the seeds.
        show_progress: progress bars.
        pool: the server's pool if the caller built it (built here otherwise), the same for every
        seed.
    """
    out_dir = Path(out_dir)
    started, commit = time.perf_counter(), git_commit()
    pool = pool or build_pool(config)
    for seed in seeds:
        log.info("experiment %s: seed %d of %s", config.name, seed, seeds)
        run(config, out_dir / f"seed_{seed}", seed, show_progress, competitors=True, pool=pool)
        run_pooled(config, out_dir / f"seed_{seed}", seed, show_progress)
    results = experiment_results(config, out_dir, seeds, commit, time.perf_counter() - started)
    write_json(out_dir / "results.json", results)
    return results
