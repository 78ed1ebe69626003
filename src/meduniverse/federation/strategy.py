"""Server strategies: ours (FedAvg's node handling, aggregation replaced by distillation into the universal
model) and the comparison arms on Flower's own FedAvg and FedProx, with each site's head kept for that site."""

from collections.abc import Iterable

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, FedProx
import torch

from meduniverse.aggregation import SiteUpdate, server_step, update_problem
from meduniverse.config import FederationConfig
from meduniverse.errors import StageError
from meduniverse.federation.messages import ARRAYS, CONFIG, METRICS, from_arrays, request, to_arrays
from meduniverse.models.heads import DecoderHead
from meduniverse.models.universal import build_model, local_key, norm_keys, part_of, site_state
from meduniverse.progress import log


def brief(reason: str, limit: int = 300) -> str:
    """The useful end of a ClientApp error (Ray wraps it in several tracebacks)."""
    text = reason.rsplit("Message: ", 1)[-1].strip().strip("'>").strip()
    lines = [line for line in text.splitlines() if line.strip()]
    return (lines[-1] if lines else text)[:limit]


def stage_seed(seed: int, stage: int) -> int:
    return seed * 1000 + stage


def accept_updates(stage: int, replies: Iterable[Message], roster: dict[int, str], previous: dict[str, torch.Tensor],
                   minimum: int, report: dict) -> list[tuple[SiteUpdate, Message]]:
    """Site models that may be aggregated; errors, missing replies and poisoned weights are logged and dropped."""
    accepted, dropped, rejected = [], dict(roster), {}
    for msg in replies:
        site = roster.get(msg.metadata.src_node_id)
        if site is None:
            continue
        dropped.pop(msg.metadata.src_node_id, None)
        if msg.has_error():
            rejected[site] = f"failed: {brief(msg.error.reason)}"
            continue
        update = SiteUpdate(site, from_arrays(msg.content[ARRAYS]), int(msg.content[METRICS]["num-examples"]))
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
        raise StageError(f"stage {stage}: only {len(accepted)} of {len(roster)} sites usable (minimum {minimum}): {rejected}")
    return accepted


class UniversalDistillation(FedAvg):
    """Each stage: send G_{s-1}'s encoder + head k to site k; distil the returned site models on the pool."""

    arm = "universal"

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
        settings = {**config, "arm": self.arm, "stage": server_round, "seed": stage_seed(self.seed, server_round)}
        return [request(MessageType.TRAIN, node, settings, part_of(self.previous, site)) for node, site in self.roster.items()]

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        self.report = {}
        accepted = accept_updates(server_round, replies, self.roster, self.previous, self.config.runtime.min_sites, self.report)
        updates = [u for u, _ in accepted]
        state, stats = server_step(self.previous, updates, self.config, self.pool, stage_seed(self.seed, server_round),
                                   self.mim_decoder, self.on_step)
        self.report["distill"] = {"seconds": stats.seconds, "images_per_second": stats.images_per_second,
                                  "loss": stats.loss, "steps": stats.steps}
        return to_arrays(state), MetricRecord({"sites": len(updates), "distill-loss": stats.loss})


class SiteHeads:
    """Mixin for Flower's FedAvg/FedProx: the shared encoder is aggregated by the Flower strategy; each site's head
    (and, with keep_norms, its normalisation layers: FedBN) is only ever sent back to that site.

    The server-side state is a full universal model plus `local.SITE.KEY` copies of site-local shared keys.
    """

    def __init__(self, arm: str, config: FederationConfig, roster: dict[int, str], seed: int, keep_norms: bool = False,
                 **strategy_args):
        super().__init__(fraction_train=1.0, fraction_evaluate=0.0, min_available_nodes=len(roster),
                         weighted_by_key="num-examples", **strategy_args)
        self.arm, self.config, self.roster, self.seed = arm, config, roster, seed
        self.site_local = norm_keys(build_model(config)) if keep_norms else set()
        self.on_step = None
        self.previous: dict[str, torch.Tensor] = {}
        self.report: dict = {}

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        self.previous = from_arrays(arrays)
        settings = ConfigRecord({**config, "arm": self.arm, "stage": server_round, "seed": stage_seed(self.seed, server_round)})
        sampled = super().configure_train(server_round, ArrayRecord(), settings, grid)  # Flower's sampling and config
        return [request(MessageType.TRAIN, msg.metadata.dst_node_id, dict(msg.content[CONFIG]),
                        site_state(self.previous, self.roster[msg.metadata.dst_node_id])) for msg in sampled]

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        self.report = {}
        accepted = accept_updates(server_round, replies, self.roster, self.previous, self.config.runtime.min_sites, self.report)
        state, shared_replies = dict(self.previous), []
        for update, msg in accepted:
            shared = {}
            for key, value in update.state.items():
                if key.startswith("heads."):
                    state[key] = value
                elif key in self.site_local:
                    state[local_key(update.site, key)] = value
                else:
                    shared[key] = value
            # What Flower's aggregation sees: the shared weights and the weighting key (metric names differ by task)
            content = RecordDict({ARRAYS: to_arrays(shared), METRICS: MetricRecord({"num-examples": update.num_examples})})
            shared_replies.append(Message(metadata=msg.metadata, content=content))
        arrays, metrics = super().aggregate_train(server_round, shared_replies)
        state.update(from_arrays(arrays))
        return to_arrays(state), metrics


class FedAvgSiteHeads(SiteHeads, FedAvg):
    """FedAvg of the encoder, heads local."""


class FedProxSiteHeads(SiteHeads, FedProx):
    """FedProx (proximal term at the sites) of the encoder, heads local."""


def competitor_strategy(arm: str, config: FederationConfig, roster: dict[int, str], seed: int) -> SiteHeads:
    if arm == "fedprox":
        return FedProxSiteHeads(arm, config, roster, seed, proximal_mu=config.competitors.proximal_mu)
    return FedAvgSiteHeads(arm, config, roster, seed, keep_norms=arm == "fedbn")
