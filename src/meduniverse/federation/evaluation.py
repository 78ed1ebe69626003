"""The federation's evaluation of an arm: every site gets the arm's weights, fine-tunes or probes
them if the arm says so, and returns scalar metrics on its own validation and test splits."""

from collections.abc import Callable

from flwr.app import MessageType
from flwr.serverapp import Grid
import torch

from meduniverse.core.arms import FEDERATED, MODELS, PROBE, Arm
from meduniverse.core.checkpoints import Checkpoints
from meduniverse.core.config import FederationConfig
from meduniverse.core.errors import StageError
from meduniverse.core.progress import RunProgress, log
from meduniverse.federation.exchange import exchange_with_progress
from meduniverse.federation.messages import error_text, received, request
from meduniverse.federation.schema import EVALUATE, check_reply
from meduniverse.federation.secure import evaluation_settings
from meduniverse.models.universal import encoder_part, personal_part, site_state


def arm_weights(arm: Arm, ckpt: Checkpoints, last: int) -> Callable[[str], dict[str, torch.Tensor]]:
    """What a site gets for an arm: the stage-0 encoder (fresh head), or its model's last-stage
    weights for that site (only the encoder for a probe)."""
    if MODELS[arm.model].training != FEDERATED:
        encoder = encoder_part(ckpt.load_stage(0))
        return lambda site: encoder
    state = ckpt.load_stage(last, ckpt.part(arm.model))
    if MODELS[arm.model].personal:
        return lambda site: personal_part(site_state(state, site))
    if arm.mode == PROBE:
        return lambda site: encoder_part(site_state(state, site))
    return lambda site: site_state(state, site)


def evaluate_arm(
    grid: Grid,
    roster: dict[int, str],
    arm: Arm,
    ckpt: Checkpoints,
    last: int,
    seed: int,
    config: FederationConfig,
    progress: RunProgress,
) -> dict[str, dict]:
    """Every site evaluates one arm on its own test split and returns scalar metrics.

    Args:
        grid: Flower's grid.
        roster: node id -> site name.
        arm: the arm.
        ckpt: the run's checkpoints (the arm's model weights).
        last: the last stage.
        seed: the run's seed.
        config: the federation (runtime.min_sites).
        progress: the run's progress bars.
    """
    settings = {"arm": arm.name, "mode": arm.mode, "seed": seed, **evaluation_settings(arm, config)}
    weights_for = arm_weights(arm, ckpt, last)
    messages = [
        request(MessageType.EVALUATE, n, settings, weights_for(s)) for n, s in roster.items()
    ]
    replies = exchange_with_progress(grid, messages, f"evaluation: {arm.name}", config, progress)
    out, failed = {}, {}
    for msg in replies:
        site = roster[msg.metadata.src_node_id]
        if msg.has_error():
            failed[site] = f"failed: {error_text(msg)}"
            continue
        metrics, info, weights = received(msg)
        problems = check_reply(EVALUATE, config.site(site).task, metrics, info, weights, None)
        if problems:
            failed[site] = f"reply refused: {'; '.join(problems)}"
            continue
        out[site] = metrics
    for site in sorted(set(roster.values()) - set(out) - set(failed)):
        failed[site] = "no reply (dropped out)"
    if len(out) < (
        config.runtime.min_sites or len(roster)
    ):  # runtime.min_sites (0: every site) must answer
        raise StageError(
            f"evaluation '{arm.name}': "
            + "; ".join(f"site '{s}' {why}" for s, why in failed.items())
        )
    for site, why in failed.items():
        log.warning("evaluation '%s': site '%s' %s", arm.name, site, why)
    return out
