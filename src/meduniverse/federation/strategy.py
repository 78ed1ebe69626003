"""Our server strategy: Flower's FedAvg node handling, with aggregation replaced by distillation of
the site models into the universal model. The checks that every strategy applies to incoming replies
live here too.
"""

from collections.abc import Callable, Iterable
import math

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
import numpy as np
import torch

from meduniverse.core.errors import StageError
from meduniverse.core.progress import log
from meduniverse.core.seeds import derive_seed
from meduniverse.federation.exchange import Roster
from meduniverse.federation.messages import (
    METRICS,
    error_text,
    from_arrays,
    outputs_received,
    received,
    request,
    to_arrays,
)
from meduniverse.federation.schema import TRAIN, check_reply
from meduniverse.federation.strict import StrictTransfer
from meduniverse.method.loop import StepCallback, TrainStats
from meduniverse.method.server import SiteUpdate, update_problem
from meduniverse.models.universal import encoder_part, part_of, site_state

ServerStep = Callable[
    [dict[str, torch.Tensor], list[SiteUpdate], int, StepCallback | None],
    tuple[dict[str, torch.Tensor], TrainStats],
]
Phase = Callable[[str], StepCallback]


def accept_updates(
    stage: int,
    replies: Iterable[Message],
    roster: Roster,
    previous: dict[str, torch.Tensor],
    minimum: int,
    report: dict,
    band: float = 10.0,
    outputs_shapes: dict[str, tuple[int, ...]] | None = None,
    transfer: str = "weights",
) -> list[tuple[SiteUpdate, Message]]:
    """Site models that may be aggregated: the server trusts nothing a site sends. Errors, missing
    replies, replies that break the protocol (`meduniverse.federation.schema`), `num-examples`
    outside 1..the site's handshake size, poisoned weights and outlying updates are logged and
    dropped.

    The outlier rule: with three or more usable updates, an update whose change of the shared
    encoder (its distance to the encoder sent) exceeds `band` times the median change of this stage
    is rejected; it catches scaled, sign-flipped and random updates, which move the encoder far
    more than training does.

    Args:
        stage: for the log and errors.
        replies: the stage's replies, in roster order.
        roster: node id -> site name, with each site's task type and train-split size.
        previous: the state the sites were sent (each update is checked against its site's part).
        minimum: fewest usable updates (0: every site); fewer raise StageError.
        report: receives 'sites' (each accepted site's metrics) and 'rejected' (site -> why).
        band: the outlier rule's factor (`runtime.update_norm_band`).
        outputs_shapes: with strict transfer, per site the shape its pool outputs must have; the
            replies then carry outputs, not weights (the weight checks and the outlier rule, which
            read weights, do not apply).
        transfer: 'secure' for phase A of a secure aggregation stage: the replies carry metrics
            only (the weight checks and the outlier rule do not apply either).
    """
    weighed = not outputs_shapes and transfer == "weights"  # the replies carry weights to check
    accepted, dropped, rejected = [], dict(roster), {}
    for msg in replies:
        site = roster.get(msg.metadata.src_node_id)
        if site is None:
            continue
        dropped.pop(msg.metadata.src_node_id, None)
        if msg.has_error():
            rejected[site] = f"failed: {error_text(msg)}"
            continue
        metrics, info, weights = received(msg)
        outputs, shape = outputs_received(msg), (outputs_shapes or {}).get(site)
        why = reply_problem(
            site,
            roster,
            site_state(previous, site),
            metrics,
            info,
            weights,
            outputs,
            shape,
            transfer,
        )
        if why:
            rejected[site] = why
            continue
        update = SiteUpdate(site, weights or {}, int(metrics["num-examples"]), outputs)
        problem = update_problem(update, site_state(previous, site)) if weighed else None
        if problem:
            rejected[site] = f"update rejected: {problem}"
            continue
        accepted.append((update, msg))
    for site, why in (outlying(accepted, previous, band) if weighed else {}).items():
        rejected[site] = why
    accepted = [(u, m) for u, m in accepted if u.site not in rejected]
    for update, msg in accepted:
        report.setdefault("sites", {})[update.site] = dict(msg.content[METRICS])
    for site in dropped.values():
        rejected[site] = "no reply (dropped out)"
    for site, why in rejected.items():
        log.warning("stage %d: site '%s' %s", stage, site, why)
    report["rejected"] = rejected
    minimum = minimum or len(roster)
    if len(accepted) < minimum:
        raise StageError(
            f"stage {stage}: only {len(accepted)} of {len(roster)} sites usable (minimum "
            f"{minimum}): {rejected}"
        )
    return accepted


def reply_problem(
    site: str,
    roster: Roster,
    sent: dict[str, torch.Tensor],
    metrics: dict,
    info: dict | None,
    weights: dict[str, torch.Tensor] | None,
    outputs: torch.Tensor | None = None,
    outputs_shape: tuple[int, ...] | None = None,
    transfer: str = "weights",
) -> str:
    """Why a training reply (as `messages.received` reads it) is refused ('' if it is not): the
    protocol's schema (with strict transfer, `outputs_shape` is the shape its pool outputs must
    have; with `transfer` 'secure', a phase A reply of secure aggregation: metrics only),
    `num-examples`."""
    task = roster.tasks.get(site) if isinstance(roster, Roster) else None
    if task is None:
        return "reply refused: the site's task type is unknown"
    problems = check_reply(
        TRAIN, task, metrics, info, weights, part_of(sent, site), outputs, outputs_shape, transfer
    )
    if problems:
        return f"reply refused: {'; '.join(problems)}"
    size = roster.train_sizes.get(site, 0)
    if not 1 <= metrics["num-examples"] <= size:
        return f"reply refused: num-examples {metrics['num-examples']} outside 1..{size}"
    return ""


def outlying(
    accepted: list[tuple[SiteUpdate, Message]], previous: dict[str, torch.Tensor], band: float
) -> dict[str, str]:
    """Updates whose encoder moved more than `band` times this stage's median (three or more)."""
    if len(accepted) < 3:
        return {}
    sent = encoder_part(previous)
    change = {
        u.site: math.sqrt(
            sum(
                float((u.state[k].double() - v.double()).pow(2).sum())
                for k, v in sent.items()
                if k in u.state
            )
        )
        for u, _ in accepted
    }
    median = float(np.median(list(change.values())))
    return {
        site: f"update rejected: its encoder moved {c:.3g}, over {band:g} times the median "
        f"change {median:.3g} of this stage"
        for site, c in change.items()
        if c > band * max(median, 1e-12)
    }


class UniversalDistillation(FedAvg):
    """Each stage: send G_{s-1}'s encoder + head k to site k; distil the returned site models on the
    pool.

    Args:
        roster: node id -> site name, in the configuration's order (the order updates are distilled
            in).
        server_step: (G_{s-1}'s state, accepted updates, seed, progress callback) -> (G_s's state,
            stats).
        seed: the run's seed; stage s sends and distils with `derive_seed(seed, s)`.
        min_sites: fewest usable site models a stage accepts (0: every site).
        band: the outlier rule of `accept_updates` (`runtime.update_norm_band`).
        phase: makes the progress callback of a stage's distillation from its description (None: no
            progress).
        strict: strict transfer's pool and output shapes (None: the sites send weights).

    After each stage, `reports[stage]` holds what the stage did: each site's metrics, the rejected
    sites and the distillation's loss, steps and seconds.
    """

    arm = "universal"

    def __init__(
        self,
        roster: Roster,
        server_step: ServerStep,
        seed: int,
        min_sites: int = 0,
        band: float = 10.0,
        phase: Phase | None = None,
        strict: StrictTransfer | None = None,
    ):
        super().__init__(
            fraction_train=1.0,
            fraction_evaluate=0.0,
            min_available_nodes=len(roster),
            weighted_by_key="num-examples",
        )
        self.roster, self.server_step, self.seed, self.min_sites, self.phase = (
            roster,
            server_step,
            seed,
            min_sites,
            phase,
        )
        self.band, self.strict = band, strict
        self.previous: dict[str, torch.Tensor] = {}
        self.shapes: dict[str, tuple[int, ...]] | None = None  # this stage's, strict transfer
        self.received: list[SiteUpdate] = []  # this stage's accepted site models
        self.reports: dict[int, dict] = {}

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self.previous = from_arrays(arrays)
        settings = {
            **config,
            "arm": self.arm,
            "stage": server_round,
            "seed": derive_seed(self.seed, server_round),
        }
        images: dict[str, torch.Tensor | None] = dict.fromkeys(self.roster.values())
        if self.strict:
            views = self.strict.pool(derive_seed(self.seed, server_round))
            images = {site: views[self.strict.group_of[site]].cpu() for site in images}
            self.shapes = {site: self.strict.shape(site, x) for site, x in images.items()}
        return [
            request(MessageType.TRAIN, node, settings, part_of(self.previous, site), images[site])
            for node, site in self.roster.items()
        ]

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        report: dict = {}
        accepted = accept_updates(
            server_round,
            replies,
            self.roster,
            self.previous,
            self.min_sites,
            report,
            self.band,
            self.shapes,
        )
        updates = self.received = [u for u, _ in accepted]
        on_step = (
            self.phase(f"{self.arm} stage {server_round}: server aggregation")
            if self.phase
            else None
        )
        state, stats = self.server_step(
            self.previous, updates, derive_seed(self.seed, server_round), on_step
        )
        report["distill"] = {
            "seconds": stats.seconds,
            "images_per_second": stats.images_per_second,
            "loss": stats.loss,
            "steps": stats.steps,
        }
        self.reports[server_round] = report
        return to_arrays(state), MetricRecord({"sites": len(updates), "distill-loss": stats.loss})
