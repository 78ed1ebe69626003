"""The local updates of personalised federated learning, as plain functions: FedRep (the head first,
the shared encoder after) and Ditto (a personal model pulled towards the global one)."""

import copy

from meduniverse.core.config import FinetuneConfig, MethodConfig
from meduniverse.data.splits import Split
from meduniverse.method.loop import TrainStats
from meduniverse.method.site import train_site
from meduniverse.method.supervised import proximal_term
from meduniverse.models.universal import UniversalModel


def train_fedrep(
    model: UniversalModel,
    task_name: str,
    splits: dict[str, Split],
    method: MethodConfig,
    schedule: FinetuneConfig,
    seed: int,
) -> TrainStats:
    """FedRep (Collins et al., 2021) at a site: the head alone with the received encoder frozen,
    then the encoder alone with the new head frozen; each phase is one `train_site` budget.

    Args:
        model: the received encoder + the site's own head, trained in place.
        task_name: the site's head.
        splits: the site's 'train' and 'val' splits.
        method, schedule: the local training of every federated model.
        seed: the stage's seed at this site.
    """
    head = train_site(model, task_name, splits, method, schedule, seed, frozen_encoder=True)
    model.heads[task_name].requires_grad_(False)
    try:
        body = train_site(model, task_name, splits, method, schedule, seed + 1)
    finally:
        model.heads[task_name].requires_grad_(True)
    return TrainStats(
        head.steps + body.steps, head.images + body.images, head.seconds + body.seconds, body.loss
    )


def train_ditto(
    model: UniversalModel,
    personal: UniversalModel,
    task_name: str,
    splits: dict[str, Split],
    method: MethodConfig,
    schedule: FinetuneConfig,
    seed: int,
    strength: float,
) -> tuple[TrainStats, TrainStats]:
    """Ditto (Li et al., 2021) at a site: the global model's local update (as FedAvg's), and the
    personal model's, with lambda/2 * ||v - w_global||^2 towards the received global weights.

    Args:
        model: the received global encoder + head, trained in place (its update is averaged).
        personal: the site's personal model, trained in place (it stays the site's).
        task_name: the site's head.
        splits: the site's 'train' and 'val' splits.
        method, schedule: the local training of every federated model.
        seed: the stage's seed at this site.
        strength: lambda.

    Returns:
        The TrainStats of the global and of the personal update.
    """
    received = copy.deepcopy(model.state_dict())
    pull = proximal_term(personal, received, strength)
    shared = train_site(model, task_name, splits, method, schedule, seed)
    own = train_site(personal, task_name, splits, method, schedule, seed + 1, pull)
    return shared, own
