"""Our server strategy: Flower's FedAvg node handling, with aggregation replaced by distillation of
the site models into the universal model. The checks that every strategy applies to incoming replies
live here too.
"""

from collections.abc import Callable, Iterable

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
import torch

from meduniverse.core.errors import StageError
from meduniverse.core.progress import log
from meduniverse.core.seeds import derive_seed
from meduniverse.federation.messages import ARRAYS, METRICS, from_arrays, request, to_arrays
from meduniverse.method.loop import StepCallback, TrainStats
from meduniverse.method.server import SiteUpdate, update_problem
from meduniverse.models.universal import part_of, site_state

ServerStep = Callable[
    [dict[str, torch.Tensor], list[SiteUpdate], int, StepCallback | None],
    tuple[dict[str, torch.Tensor], TrainStats],
]
Phase = Callable[[str], StepCallback]


def brief(reason: str, limit: int = 300) -> str:
    """The useful end of a ClientApp error (Ray wraps it in several tracebacks)."""
    text = reason.rsplit("Message: ", 1)[-1].strip().strip("'>").strip()
    lines = [line for line in text.splitlines() if line.strip()]
    return (lines[-1] if lines else text)[:limit]


def accept_updates(
    stage: int,
    replies: Iterable[Message],
    roster: dict[int, str],
    previous: dict[str, torch.Tensor],
    minimum: int,
    report: dict,
) -> list[tuple[SiteUpdate, Message]]:
    """Site models that may be aggregated; errors, missing replies and poisoned weights are logged
    and dropped.

    Args:
        stage: for the log and errors.
        replies: the stage's replies, in roster order.
        roster: node id -> site name.
        previous: the state the sites were sent (each update is checked against its site's part).
        minimum: fewest usable updates (0: every site); fewer raise StageError.
        report: receives 'sites' (each accepted site's metrics) and 'rejected' (site -> why).
    """
    accepted, dropped, rejected = [], dict(roster), {}
    for msg in replies:
        site = roster.get(msg.metadata.src_node_id)
        if site is None:
            continue
        dropped.pop(msg.metadata.src_node_id, None)
        if msg.has_error():
            rejected[site] = f"failed: {brief(msg.error.reason)}"
            continue
        update = SiteUpdate(
            site, from_arrays(msg.content[ARRAYS]), int(msg.content[METRICS]["num-examples"])
        )
        problem = update_problem(update, site_state(previous, site))
        if problem:
            rejected[site] = f"update rejected: {problem}"
            continue
        accepted.append((update, msg))
        report.setdefault("sites", {})[site] = dict(msg.content[METRICS])
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
        phase: makes the progress callback of a stage's distillation from its description (None: no
            progress).

    After each stage, `reports[stage]` holds what the stage did: each site's metrics, the rejected
    sites and the distillation's loss, steps and seconds.
    """

    arm = "universal"

    def __init__(
        self,
        roster: dict[int, str],
        server_step: ServerStep,
        seed: int,
        min_sites: int = 0,
        phase: Phase | None = None,
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
        self.previous: dict[str, torch.Tensor] = {}
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
        return [
            request(MessageType.TRAIN, node, settings, part_of(self.previous, site))
            for node, site in self.roster.items()
        ]

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        report: dict = {}
        accepted = accept_updates(
            server_round, replies, self.roster, self.previous, self.min_sites, report
        )
        updates = [u for u, _ in accepted]
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
