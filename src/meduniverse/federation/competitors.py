"""The federated comparison arms on Flower's own FedAvg and FedProx, with each site's head kept for
that site.

Add a federated competitor by adding its model to `meduniverse.core.arms.MODELS` and its strategy
here.
"""

from collections.abc import Callable, Iterable

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, FedProx
import torch

from meduniverse.core.config import FederationConfig
from meduniverse.core.seeds import derive_seed
from meduniverse.federation.messages import ARRAYS, CONFIG, METRICS, from_arrays, request, to_arrays
from meduniverse.federation.strategy import accept_updates
from meduniverse.models.universal import (
    PERSONAL_PREFIX,
    build_model,
    is_task_key,
    local_key,
    norm_keys,
    site_state,
)


class SiteHeads:
    """Mixin for Flower's FedAvg/FedProx: the shared encoder is aggregated by the Flower strategy;
    each site's head (and the `site_local` keys, e.g. FedBN's normalisation layers) is only ever
    sent back to that site.

    The server-side state is a full universal model plus `local.SITE.KEY` copies of site-local
    shared keys.

    Args:
        arm: the model's name (its checkpoints and messages carry it).
        roster: node id -> site name.
        seed: the run's seed; stage s sends `derive_seed(seed, s)`.
        min_sites: fewest usable site models a stage accepts (0: every site).
        band: the outlier rule of `accept_updates` (`runtime.update_norm_band`).
        site_local: encoder keys that stay at each site (FedBN: the normalisation layers); a site's
            personal model (Ditto's `personal.` keys) always does.
        local_settings: more settings for the sites' local update ('local-mode': 'fedrep' or
            'ditto', 'ditto-lambda').
        strategy_args: passed on to the Flower strategy (e.g. FedProx's proximal_mu).

    After each stage, `reports[stage]` holds each site's metrics and the rejected sites.
    """

    def __init__(
        self,
        arm: str,
        roster: dict[int, str],
        seed: int,
        min_sites: int = 0,
        band: float = 10.0,
        site_local: set[str] | frozenset[str] = frozenset(),
        local_settings: dict[str, str | float] | None = None,
        **strategy_args,
    ):
        super().__init__(
            fraction_train=1.0,
            fraction_evaluate=0.0,
            min_available_nodes=len(roster),
            weighted_by_key="num-examples",
            **strategy_args,
        )
        self.arm, self.roster, self.seed, self.min_sites, self.site_local = (
            arm,
            roster,
            seed,
            min_sites,
            set(site_local),
        )
        self.local_settings = dict(local_settings or {})
        self.band = band
        self.previous: dict[str, torch.Tensor] = {}
        self.reports: dict[int, dict] = {}

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self.previous = from_arrays(arrays)
        settings = ConfigRecord(
            {
                **config,
                **self.local_settings,
                "arm": self.arm,
                "stage": server_round,
                "seed": derive_seed(self.seed, server_round),
            }
        )
        sampled = super().configure_train(
            server_round, ArrayRecord(), settings, grid
        )  # Flower's sampling and config
        return [
            request(
                MessageType.TRAIN,
                msg.metadata.dst_node_id,
                dict(msg.content[CONFIG]),
                site_state(self.previous, self.roster[msg.metadata.dst_node_id]),
            )
            for msg in sampled
        ]

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        report: dict = {}
        accepted = accept_updates(
            server_round, replies, self.roster, self.previous, self.min_sites, report, self.band
        )
        state, shared_replies = dict(self.previous), []
        for update, msg in accepted:
            shared = {}
            for key, value in update.state.items():
                if is_task_key(key):
                    state[key] = value
                elif key in self.site_local or key.startswith(PERSONAL_PREFIX):
                    state[local_key(update.site, key)] = value
                else:
                    shared[key] = value
            # What Flower's aggregation sees: the shared weights and the weighting key (metric names
            # differ by task)
            content = RecordDict(
                {
                    ARRAYS: to_arrays(shared),
                    METRICS: MetricRecord({"num-examples": update.num_examples}),
                }
            )
            shared_replies.append(Message(metadata=msg.metadata, content=content))
        arrays, metrics = super().aggregate_train(server_round, shared_replies)
        state.update(from_arrays(arrays))
        self.reports[server_round] = report
        return to_arrays(state), metrics


class FedAvgSiteHeads(SiteHeads, FedAvg):
    """FedAvg of the encoder, heads local."""


class FedProxSiteHeads(SiteHeads, FedProx):
    """FedProx (proximal term at the sites) of the encoder, heads local."""


Factory = Callable[[dict[int, str], int, FederationConfig], SiteHeads]


def site_heads(
    arm: str,
    kind: type[SiteHeads] = FedAvgSiteHeads,
    settings: Callable[[FederationConfig], dict] = lambda config: {},
) -> Factory:
    """A factory of competitor `arm`'s strategy: `kind` with the run's minimum of sites and update
    norm band, plus the arm's own settings read from the federation config."""

    def make(roster: dict[int, str], seed: int, config: FederationConfig) -> SiteHeads:
        runtime = config.runtime
        return kind(
            arm, roster, seed, runtime.min_sites, band=runtime.update_norm_band, **settings(config)
        )

    return make


STRATEGIES: dict[str, Factory] = {
    "fedavg": site_heads("fedavg"),
    "fedprox": site_heads(
        "fedprox", FedProxSiteHeads, lambda c: {"proximal_mu": c.competitors.proximal_mu}
    ),
    "fedbn": site_heads("fedbn", settings=lambda c: {"site_local": norm_keys(build_model(c))}),
    "ditto": site_heads(
        "ditto",
        settings=lambda c: {
            "local_settings": {"local-mode": "ditto", "ditto-lambda": c.competitors.ditto_lambda}
        },
    ),
    "fedrep": site_heads("fedrep", settings=lambda c: {"local_settings": {"local-mode": "fedrep"}}),
}


def competitor_strategy(
    arm: str, roster: dict[int, str], seed: int, config: FederationConfig
) -> SiteHeads:
    """The strategy that trains federated competitor `arm` (a model of
    `meduniverse.core.arms.COMPETITORS`).

    Args:
        arm: the competitor's model name.
        roster: node id -> site name.
        seed: the run's seed.
        config: the federation (min_sites, the competitors' settings).
    """
    return STRATEGIES[arm](roster, seed, config)
