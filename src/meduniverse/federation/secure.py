"""Secure aggregation (`privacy.secure_aggregation`) of the competitors that average weights
(`meduniverse.core.config.SECURE_MODELS`): each stage in two phases, on Flower's own SecAgg+.

Phase A is a plain exchange: every site trains, keeps its whole site model in its ClientApp's
`Context.state` and replies with the stage's scalar metrics only. Phase B is Flower's
`SecAggPlusWorkflow` over the sites that passed phase A: each sends the change of its shared encoder
weights (its encoder delta), masked, and the server learns only their sample-weighted mean, which
it adds to the encoder. Heads (and FedBN's normalisation layers) never leave the sites
(`meduniverse.federation.secure_site` is the site's side).
"""

from collections.abc import Iterable
import time

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.common import FitIns, FitRes, NDArrays, Parameters, Scalar, parameters_to_ndarrays
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.compat import LegacyContext
from flwr.server.compat.grid_client_proxy import GridClientProxy
from flwr.server.strategy import FedAvg as LegacyFedAvg
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD, Key
from flwr.serverapp import Grid
import numpy as np
import torch

from meduniverse.core.arms import Arm
from meduniverse.core.config import SECURE_MODELS, FederationConfig
from meduniverse.core.errors import StageError
from meduniverse.core.progress import RunProgress, log
from meduniverse.federation.competitors import SiteHeads
from meduniverse.federation.exchange import exchange_with_progress, message_bytes
from meduniverse.federation.messages import SECURE_KEYS, SECURE_MODEL, to_arrays
from meduniverse.federation.strategy import accept_updates
from meduniverse.models.universal import encoder_part


class MeanDelta(LegacyFedAvg):
    """The legacy Strategy that `SecAggPlusWorkflow` drives: it asks every site that passed phase A
    for its delta and keeps what the workflow hands back, the sites' weighted mean delta (all the
    server learns of their weights) and which sites it sums.

    Args:
        proxies: one per site that passed phase A.
        settings: phase B's settings for the sites ('arm', 'stage').
    """

    def __init__(self, proxies: list[ClientProxy], settings: dict[str, Scalar]):
        super().__init__()
        self.proxies, self.settings = proxies, settings
        self.mean: NDArrays | None = None
        self.summed: set[int] = set()

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        ins = FitIns(Parameters(tensors=[], tensor_type=""), dict(self.settings))
        return [(proxy, ins) for proxy in self.proxies]

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[tuple[ClientProxy, FitRes] | BaseException],
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        self.summed = {proxy.node_id for proxy, _ in results}
        if results:  # the workflow gives every result the same parameters: the mean
            self.mean = parameters_to_ndarrays(results[0][1].parameters)
        return None, {}


class Watched:
    """The grid as the workflow uses it, noting the nodes that failed or did not answer and the
    bytes each node sent.

    Args:
        grid: Flower's grid.
    """

    def __init__(self, grid: Grid):
        self.grid = grid
        self.failed: set[int] = set()
        self.sent: dict[int, int] = {}

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> list[Message]:
        messages = list(messages)
        replies = list(self.grid.send_and_receive(messages, timeout=timeout))
        answered = {m.metadata.src_node_id: m for m in replies if not m.has_error()}
        self.failed |= {m.metadata.dst_node_id for m in messages} - set(answered)
        for node, msg in answered.items():
            found = [v for r in msg.content.config_records.values() for v in r.values()]
            size = sum(
                len(b)
                for v in found
                for b in (v if isinstance(v, list) else [v])
                if isinstance(b, bytes)
            )
            self.sent[node] = self.sent.get(node, 0) + size + message_bytes(msg)
        return replies


def secure_sum(
    grid: Grid,
    nodes: dict[int, str],
    settings: dict[str, Scalar],
    max_weight: float,
    timeout: float,
) -> tuple[MeanDelta, Watched, int]:
    """Flower's SecAgg+ over `nodes`: every private key is shared with every other site and a
    majority of shares rebuilds it, so the sum survives sites that drop out while a majority stays.

    Returns the strategy (its `mean` is None when the workflow stopped), the watched grid and the
    reconstruction threshold.

    Args:
        grid: Flower's grid.
        nodes: node id -> site, the sites to sum (two or more).
        settings: phase B's settings for the sites.
        max_weight: the largest `num-examples` a site may weigh (the ratio that scales its delta).
        timeout: seconds to wait for each round of replies.
    """
    strategy = MeanDelta([GridClientProxy(n, grid, 0) for n in nodes], settings)
    context = LegacyContext(Context(0, 0, {}, RecordDict(), {}), strategy=strategy)
    context.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord(
        {Key.CURRENT_ROUND: int(settings["stage"])}
    )
    context.state.array_records[MAIN_PARAMS_RECORD] = ArrayRecord()
    threshold = len(nodes) // 2 + 1
    workflow = SecAggPlusWorkflow(1.0, threshold, max_weight=max_weight, timeout=timeout)
    watched = Watched(grid)
    workflow(watched, context)  # type: ignore[arg-type]  # it calls send_and_receive only
    return strategy, watched, threshold


def secure_stage(
    grid: Grid,
    strategy: SiteHeads,
    stage: int,
    state: dict[str, torch.Tensor],
    seed: int,
    config: FederationConfig,
    progress: RunProgress,
) -> tuple[dict[str, torch.Tensor], dict]:
    """One stage of a competitor under secure aggregation: phase A (local training, metrics back),
    then phase B (the SecAgg+ sum of the encoder deltas); `server_app.run_stage`'s contract.

    Args:
        grid: Flower's grid.
        strategy: the competitor's strategy (its settings, roster and minimum of sites).
        stage: the stage number.
        state: the model's state after the previous stage (only its encoder changes).
        seed: the run's seed (unused: the stage draws nothing at the server).
        config: the federation (runtime.reply_timeout).
        progress: the run's progress bars.
    """
    started, arm = time.perf_counter(), strategy.arm
    keys = [k for k in encoder_part(state) if k not in strategy.site_local]
    settings = ConfigRecord({SECURE_KEYS: keys})
    messages = list(strategy.configure_train(stage, to_arrays(state), settings, grid))
    roster = strategy.roster
    replies = exchange_with_progress(
        grid,
        messages,
        f"{arm} stage {stage}: local training at {len(messages)} sites",
        config,
        progress,
    )
    report: dict = {}
    accepted = accept_updates(
        stage, replies, roster, state, strategy.min_sites, report, transfer="secure"
    )
    nodes = {m.metadata.src_node_id: u.site for u, m in accepted}
    local_seconds = time.perf_counter() - started
    if len(nodes) < 2:
        raise StageError(f"stage {stage}: {arm}'s secure aggregation needs two or more sites")
    most = max(roster.train_sizes[site] for site in nodes.values())  # handshake's split sizes
    settings = {"arm": arm, "stage": stage}
    summed, watched, threshold = secure_sum(
        grid, nodes, settings, float(most), config.runtime.reply_timeout
    )
    failed = {
        nodes[n]: "failed in secure aggregation (phase B)" for n in set(nodes) - summed.summed
    }
    if summed.mean is None or len(summed.summed) < (strategy.min_sites or len(roster)):
        names = sorted(nodes[n] for n in watched.failed if n in nodes)
        raise StageError(
            f"stage {stage}: {arm}'s secure aggregation (SecAgg+, phase B) failed: site(s) "
            f"{names} failed or did not answer; {len(summed.summed)} of {len(roster)} summed "
            f"(reconstruction threshold {threshold}, minimum {strategy.min_sites or len(roster)})"
        )
    for site, why in failed.items():
        log.warning("stage %d: site '%s' %s", stage, site, why)
        report["sites"].pop(site, None)
    report["rejected"].update(failed)
    new = dict(state)
    for key, delta in zip(keys, summed.mean, strict=True):
        new[key] = (
            state[key].double() + torch.from_numpy(np.asarray(delta)).reshape(state[key].shape)
        ).to(state[key].dtype)
    if not all(torch.isfinite(new[k]).all() for k in keys):
        raise StageError(f"stage {stage}: {arm}'s securely summed update holds NaN or inf")
    report["secure"] = {"summed": sorted(nodes[n] for n in summed.summed), "threshold": threshold}
    return new, {
        **report,
        "local_seconds": local_seconds,
        "seconds": time.perf_counter() - started,
        "bytes_to_sites": {roster[m.metadata.dst_node_id]: message_bytes(m) for m in messages},
        "bytes_from_sites": {nodes[n]: b for n, b in watched.sent.items() if n in nodes},
    }


def evaluation_settings(arm: Arm, config: FederationConfig) -> dict[str, str]:
    """What an evaluation request adds for a model trained under secure aggregation: its name, so
    that each site evaluates it with the head and local layers it kept."""
    secure = config.privacy.secure_aggregation and arm.model in SECURE_MODELS
    return {SECURE_MODEL: arm.model} if secure else {}
