"""The server strategy: FedAvg's node handling, with aggregation replaced by distillation into the universal model."""

from collections.abc import Iterable

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
import torch

from meduniverse.aggregation import SiteUpdate, server_step, update_problem
from meduniverse.config import FederationConfig
from meduniverse.errors import StageError
from meduniverse.federation.messages import ARRAYS, METRICS, from_arrays, request, to_arrays
from meduniverse.models.heads import DecoderHead
from meduniverse.models.universal import part_of
from meduniverse.progress import log


def brief(reason: str, limit: int = 300) -> str:
    """The useful end of a ClientApp error (Ray wraps it in several tracebacks)."""
    text = reason.rsplit("Message: ", 1)[-1].strip().strip("'>").strip()
    lines = [line for line in text.splitlines() if line.strip()]
    return (lines[-1] if lines else text)[:limit]


class UniversalDistillation(FedAvg):
    """Each stage: send G_{s-1}'s encoder + head k to site k; distil the returned site models on the pool."""

    def __init__(self, config: FederationConfig, roster: dict[int, str], pool: dict[str, torch.Tensor], seed: int,
                 mim_decoder: DecoderHead | None = None):
        super().__init__(fraction_train=1.0, fraction_evaluate=0.0, min_available_nodes=len(roster),
                         weighted_by_key="num-examples")
        self.config, self.roster, self.pool, self.seed = config, roster, pool, seed
        self.mim_decoder = mim_decoder
        self.on_step = None  # progress callback of the distillation, set per stage by the server flow
        self.previous: dict[str, torch.Tensor] = {}
        self.report: dict = {}

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        self.previous = from_arrays(arrays)
        settings = {**config, "stage": server_round, "seed": self.seed * 1000 + server_round}
        return [request(MessageType.TRAIN, node, settings, part_of(self.previous, site)) for node, site in self.roster.items()]

    def accepted_updates(self, server_round: int, replies: Iterable[Message]) -> list[SiteUpdate]:
        """Site models that may be distilled; errors, missing replies and poisoned weights are logged and dropped."""
        updates, dropped, rejected = [], dict(self.roster), {}
        for msg in replies:
            site = self.roster.get(msg.metadata.src_node_id)
            if site is None:
                continue
            dropped.pop(msg.metadata.src_node_id, None)
            if msg.has_error():
                rejected[site] = f"failed: {brief(msg.error.reason)}"
                continue
            update = SiteUpdate(site, from_arrays(msg.content[ARRAYS]), int(msg.content[METRICS]["num-examples"]))
            problem = update_problem(update, self.previous)
            if problem:
                rejected[site] = f"update rejected: {problem}"
                continue
            updates.append(update)
            self.report.setdefault("sites", {})[site] = dict(msg.content[METRICS])
        for site in dropped.values():
            rejected[site] = "no reply (dropped out)"
        for site, why in rejected.items():
            log.warning("stage %d: site '%s' %s", server_round, site, why)
        self.report["rejected"] = rejected
        minimum = self.config.runtime.min_sites or len(self.roster)
        if len(updates) < minimum:
            raise StageError(f"stage {server_round}: only {len(updates)} of {len(self.roster)} sites usable "
                             f"(minimum {minimum}): {rejected}")
        return updates

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        self.report = {}
        updates = self.accepted_updates(server_round, replies)
        state, stats = server_step(self.previous, updates, self.config, self.pool, self.seed * 1000 + server_round,
                                   self.mim_decoder, self.on_step)
        self.report["distill"] = {"seconds": stats.seconds, "images_per_second": stats.images_per_second,
                                  "loss": stats.loss, "steps": stats.steps}
        return to_arrays(state), MetricRecord({"sites": len(updates), "distill-loss": stats.loss})
