"""The server side: a Flower ServerApp running stage 0 (MIM), stages 1..S of every federated model
and the evaluation arms.

Every stage is checkpointed; a restarted run resumes after the last completed stage.
"""

from collections.abc import Callable
from functools import partial
from pathlib import Path
import time

from flwr.app import ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp
import torch

from meduniverse.core.arms import computed_in_federation
from meduniverse.core.checkpoints import Checkpoints
from meduniverse.core.config import SECURE_MODELS, FederationConfig
from meduniverse.core.device import computing
from meduniverse.core.progress import RunProgress, log
from meduniverse.core.seeds import derive_seed
from meduniverse.federation.competitors import SiteHeads, competitor_strategy
from meduniverse.federation.evaluation import evaluate_arm
from meduniverse.federation.exchange import exchange_with_progress, handshake, message_bytes
from meduniverse.federation.messages import from_arrays, to_arrays
from meduniverse.federation.secure import secure_stage
from meduniverse.federation.strategy import UniversalDistillation
from meduniverse.federation.strict import StrictTransfer
from meduniverse.method.mim import mim_model
from meduniverse.method.server import server_step
from meduniverse.models.heads import DecoderHead
from meduniverse.sites.pool import Pool, own_images


def stage_zero(
    config: FederationConfig,
    pool: dict[str, torch.Tensor],
    seed: int,
    ckpt: Checkpoints,
    progress: RunProgress,
) -> None:
    """MIM-pretrain the encoder on the pool: the baseline encoder, and G_0.

    Args:
        config: the federation (model and MIM settings).
        pool: per input group, uint8 images N×C×S×S, on the device to compute on.
        seed: the run's seed.
        ckpt: where stage 0 is checkpointed (the model and the MIM decoder).
        progress: the run's progress bars.
    """
    model, decoder, stats = mim_model(
        config, pool, seed, progress.phase("stage 0: MIM pretraining on the pool")
    )
    ckpt.save_stage(
        0,
        {"model": model.state_dict(), "mim_decoder": decoder.state_dict()},
        {
            "seconds": stats.seconds,
            "images_per_second": stats.images_per_second,
            "loss": stats.loss,
            "pool": {g: len(x) for g, x in pool.items()},
        },
    )


def run_stage(
    grid: Grid,
    strategy: UniversalDistillation | SiteHeads,
    stage: int,
    state: dict[str, torch.Tensor],
    seed: int,
    config: FederationConfig,
    progress: RunProgress,
) -> tuple[dict[str, torch.Tensor], dict]:
    """One stage of a federated model: local training at every site, then the strategy's
    aggregation.

    Returns the new state and the stage's record: the strategy's report plus seconds and bytes each
    way.

    Args:
        grid: Flower's grid.
        strategy: the model's strategy.
        stage: the stage number.
        state: the model's state after the previous stage.
        seed: the run's seed (the aggregation's random draws derive from it).
        config: the federation.
        progress: the run's progress bars.
    """
    started = time.perf_counter()
    messages = list(strategy.configure_train(stage, to_arrays(state), ConfigRecord(), grid))
    roster = strategy.roster
    to_sites = {roster[m.metadata.dst_node_id]: message_bytes(m) for m in messages}
    replies = exchange_with_progress(
        grid,
        messages,
        f"{strategy.arm} stage {stage}: local training at {len(messages)} sites",
        config,
        progress,
    )
    # the server step takes the sites in roster order, not arrival order: same seed, same model
    nodes = list(roster)
    replies.sort(
        key=lambda m: (
            nodes.index(m.metadata.src_node_id) if m.metadata.src_node_id in roster else len(nodes)
        )
    )
    from_sites = {
        roster[m.metadata.src_node_id]: message_bytes(m) for m in replies if not m.has_error()
    }
    local_seconds = time.perf_counter() - started
    # dropout in the distillation draws from the global generator: seeded, so that a resumed run
    # (a new process) equals an uninterrupted one
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, stage))
        arrays, _ = strategy.aggregate_train(stage, replies)
    record = {
        **strategy.reports[stage],
        "local_seconds": local_seconds,
        "seconds": time.perf_counter() - started,
        "bytes_to_sites": to_sites,
        "bytes_from_sites": from_sites,
    }
    return from_arrays(arrays), record


def run_stages(
    grid: Grid,
    strategy: UniversalDistillation | SiteHeads,
    ckpt: Checkpoints,
    seed: int,
    config: FederationConfig,
    progress: RunProgress,
    extra_parts: Callable[[], dict[str, dict[str, torch.Tensor]]] = dict,
) -> None:
    """A federated model's stages after its last completed one (stage 0: the shared MIM model), each
    checkpointed.

    Args:
        grid: Flower's grid.
        strategy: the model's strategy (its `arm` names the model).
        ckpt: the run's checkpoints.
        seed: the run's seed.
        config: the federation (method.stages).
        progress: the run's progress bars.
        extra_parts: more weights to checkpoint with each stage (the MIM decoder).
    """
    part = ckpt.part(strategy.arm)
    last = ckpt.last_stage(strategy.arm) or 0
    state = ckpt.load_stage(last, part if last else ckpt.part("universal"))
    if last:
        log.info("%s: resuming after completed stage %d (%s)", strategy.arm, last, ckpt.dir)
    secure = config.privacy.secure_aggregation and strategy.arm in SECURE_MODELS
    for stage in range(last + 1, config.method.stages + 1):
        step = secure_stage if secure else run_stage  # secure: SiteHeads of a SECURE_MODELS arm
        state, record = step(grid, strategy, stage, state, seed, config, progress)  # type: ignore
        ckpt.save_stage(stage, {part: state, **extra_parts()}, record, strategy.arm)


def mim_decoder(
    config: FederationConfig, ckpt: Checkpoints, device: torch.device
) -> DecoderHead | None:
    """With method.mim_weight > 0 (variant c), the stage-0 pixel decoder that the distillation
    trains along, on `device`."""
    if config.method.mim_weight <= 0:
        return None
    decoder = DecoderHead(config.model.widths, config.inputs[0][1].channels)
    decoder.load_state_dict(ckpt.load_stage(0, "mim_decoder"))
    return decoder.to(device)


def run_federation(
    grid: Grid,
    config: FederationConfig,
    run_dir: Path,
    seed: int,
    pool: Pool,
    progress: RunProgress,
    competitors: bool = False,
    roster: dict[int, str] | None = None,
) -> None:
    """The whole server flow; each completed stage and arm is checkpointed in run_dir.

    Args:
        grid: Flower's grid (Simulation or Deployment Engine).
        config: the federation.
        run_dir: where checkpoints go (resumed from if present).
        seed: the run's seed.
        pool: the server's unlabelled pool, built once for the run.
        progress: progress bars.
        competitors: also train the federated competitors (the same stages from the same stage-0
            encoder) and evaluate every arm of an experiment (`meduniverse.core.arms`).
        roster: node id -> site from an earlier handshake (the deployed server checks it before
            writing anything).
    """
    with computing(config.runtime, config.runtime.server_threads, keep_memory=True) as compute:
        images, own = pool.on(compute.device), own_images(config, pool)
        _serve(grid, config, run_dir, seed, images, own, progress, competitors, roster)


def _serve(
    grid: Grid,
    config: FederationConfig,
    run_dir: Path,
    seed: int,
    pool: dict[str, torch.Tensor],
    own: dict[str, torch.Tensor],
    progress: RunProgress,
    competitors: bool,
    roster: dict[int, str] | None,
) -> None:
    """run_federation's flow, with the pool's images on the device to compute on."""
    ckpt = Checkpoints(run_dir)
    roster = roster or handshake(grid, config)
    log.info("sites connected: %s", ", ".join(sorted(roster.values())))
    if ckpt.last_stage() is None:
        stage_zero(config, pool, seed, ckpt, progress)
    decoder = mim_decoder(config, ckpt, next(iter(pool.values())).device)
    step = partial(server_step, config=config, pool=pool, mim_decoder=decoder, own=own)
    strict = StrictTransfer.of(config, pool) if config.privacy.transfer == "outputs" else None
    strategy = UniversalDistillation(
        roster,
        lambda prev, updates, s, on_step: step(prev, updates, seed=s, on_step=on_step),
        seed,
        config.runtime.min_sites,
        band=config.runtime.update_norm_band,
        phase=progress.phase,
        strict=strict,
    )
    run_stages(
        grid,
        strategy,
        ckpt,
        seed,
        config,
        progress,
        lambda: {
            **({"mim_decoder": decoder.state_dict()} if decoder else {}),
            **{  # runtime.keep_site_models: the site models received, for `audit --site-models`
                ckpt.site_part(u.site): u.state
                for u in (strategy.received if config.runtime.keep_site_models else [])
            },
        },
    )
    for model in config.competitors.federated if competitors else ():
        run_stages(
            grid, competitor_strategy(model, roster, seed, config), ckpt, seed, config, progress
        )
    last = config.method.stages
    for arm in filter(computed_in_federation, config.arms(competitors)):
        if arm.name not in ckpt.evaluation(last):
            started = time.perf_counter()
            per_site = evaluate_arm(grid, roster, arm, ckpt, last, seed, config, progress)
            ckpt.save_evaluation(arm.name, last, per_site, time.perf_counter() - started)


def make_server_app(
    config: FederationConfig,
    run_dir: Path,
    seed: int,
    pool: Pool,
    progress: RunProgress,
    errors: list[BaseException],
    competitors: bool = False,
) -> ServerApp:
    """A ServerApp for the Simulation Engine; exceptions are kept in `errors` for the caller to
    re-raise.

    Args:
        config: the federation.
        run_dir: the run directory.
        seed: the run's seed.
        pool: the server's pool.
        progress: the run's progress bars.
        errors: receives the exception that ended the flow, if any.
        competitors: also train and evaluate every arm of an experiment.
    """
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        try:
            run_federation(grid, config, run_dir, seed, pool, progress, competitors)
        except BaseException as exc:
            errors.append(exc)
            log.error("run failed: %s", exc)

    return app
