"""What runs at a site: local training of a stage, fine-tuning and probing with early stopping,
evaluation.

None of these needs Flower; the ClientApp only calls them.
"""

from collections.abc import Callable
import copy
import math

import torch
from torch import nn

from meduniverse.core.arms import FINETUNE, PROBE
from meduniverse.core.config import FinetuneConfig, MethodConfig
from meduniverse.core.seeds import derive_seed
from meduniverse.core.tasks import task_type
from meduniverse.data.splits import Split
from meduniverse.data.transforms import normalize, random_flip
from meduniverse.method.loop import (
    StepLosses,
    TrainStats,
    batch_size,
    make_optimizer,
    optimise,
    shuffled_batches,
    steps_per_epoch,
)
from meduniverse.models.universal import UniversalModel

Penalty = Callable[[], torch.Tensor]


def supervised_losses(
    model: UniversalModel,
    task_name: str,
    data: Split,
    batches,
    generator: torch.Generator,
    penalty: Penalty | None = None,
) -> StepLosses:
    """Per batch of indices, the task's loss on those examples after a random flip (+ `penalty()` if
    given).

    Args:
        model: the model.
        task_name: the head.
        data: the labelled split.
        batches: batches of indices into `data`.
        generator: the flips' random source.
        penalty: added to every loss (FedProx).
    """
    kind = task_type(model.tasks[task_name].task)
    for idx in batches:
        masks = data.targets[idx] if kind.segmentation else None
        images, masks = random_flip(data.images[idx], masks, generator)
        loss = kind.loss(
            model(normalize(images), task_name), masks if masks is not None else data.targets[idx]
        )
        yield (loss + penalty() if penalty is not None else loss), len(idx)


def train_supervised(
    model: UniversalModel,
    task_name: str,
    data: Split,
    steps: int,
    batch: int,
    optimizer: torch.optim.Optimizer,
    seed: int,
    penalty: Penalty | None = None,
) -> TrainStats:
    """Train encoder + one head on labelled data.

    Args:
        model: the model; only `task_name`'s head (and the encoder) get gradients.
        task_name: the head to train.
        data: the labelled split (uint8 images N×C×S×S; labels or masks).
        steps: optimiser steps; the data is reshuffled after every pass.
        batch: batch size (a split smaller than it is one batch).
        optimizer: over the parameters to train.
        seed: shuffling and flips.
        penalty: added to every step's loss (FedProx's proximal term).
    """
    generator = torch.Generator().manual_seed(seed)
    model.train()
    batches = shuffled_batches(len(data), min(batch, len(data)), steps, generator)
    return optimise(
        optimizer, supervised_losses(model, task_name, data, batches, generator, penalty), steps
    )


def local_steps(task: str, n: int, method: MethodConfig) -> int:
    """Steps of one stage's local training on n examples: local_epochs passes."""
    batch = batch_size(task_type(task).group, method)
    return method.local_epochs * steps_per_epoch(
        n, batch, method.min_steps_per_epoch, method.max_steps_per_epoch
    )


def train_local(
    model: UniversalModel,
    task_name: str,
    data: Split,
    method: MethodConfig,
    seed: int,
    penalty: Penalty | None = None,
) -> TrainStats:
    """A site's stage: fine-tune the global encoder + its head on its private train split for
    `local_epochs`.

    Args:
        model: encoder + the site's head, trained in place.
        task_name: the site's head.
        data: its private train split.
        method: local_epochs, batch sizes, lr, weight decay.
        seed: shuffling and flips.
        penalty: added to every step's loss (FedProx).
    """
    task = model.tasks[task_name].task
    optimizer = make_optimizer(model.parameters(), method.lr, method.weight_decay)
    return train_supervised(
        model,
        task_name,
        data,
        local_steps(task, len(data), method),
        batch_size(task_type(task).group, method),
        optimizer,
        seed,
        penalty,
    )


def proximal_term(model: nn.Module, reference: dict[str, torch.Tensor], mu: float) -> Penalty:
    """FedProx: mu/2 * ||w - w_global||^2 over the parameters named in `reference`."""
    pairs = [
        (p, reference[name].detach().to(p.device).clone())
        for name, p in model.named_parameters()
        if name in reference
    ]
    return lambda: (mu / 2) * sum((p - ref).pow(2).sum() for p, ref in pairs)


@torch.no_grad()
def predict_probs(
    model: UniversalModel, task_name: str, images: torch.Tensor, batch: int = 128
) -> torch.Tensor:
    """Probabilities of one head for uint8 images (N×C×S×S), batched, in eval mode, on the model's
    device; returned in float32 on the CPU: (N,C) or (N,C,S,S).

    Args:
        model: the model.
        task_name: the head.
        images: uint8 N×C×S×S.
        batch: images per forward pass.
    """
    model.eval()
    kind = task_type(model.tasks[task_name].task)
    device = next(model.parameters()).device
    return torch.cat(
        [
            kind.probabilities(model(normalize(x.to(device)), task_name).float()).cpu()
            for x in images.split(batch)
        ]
    )


def evaluate(model: UniversalModel, task_name: str, data: Split) -> dict[str, float]:
    """The task type's metrics of one head on a split, e.g. {'auc', 'acc'} or {'dice', 'iou'}."""
    info = model.tasks[task_name]
    return task_type(info.task).metrics(
        predict_probs(model, task_name, data.images), data.targets, len(info.classes)
    )


def finetune(
    model: UniversalModel,
    task_name: str,
    train: Split,
    val: Split,
    method: MethodConfig,
    schedule: FinetuneConfig,
    seed: int,
    frozen_encoder: bool = False,
    penalty: Penalty | None = None,
) -> dict:
    """Fine-tune encoder + head (or, with frozen_encoder, the head alone: a probe) with early
    stopping on the validation primary metric; keep the best epoch.

    Every per-task fine-tune and probe (every arm) runs this one function with the same optimiser
    and schedule.

    Args:
        model: trained in place; ends with the best epoch's weights.
        task_name: the head to train.
        train, val: the site's splits; val drives early stopping.
        method: batch sizes, the minimum steps per epoch and the weight decay.
        schedule: epochs, patience, steps per epoch (an 'epoch' is one pass over train, capped at
            max_steps_per_epoch steps, so that validation runs at least that often on large sites)
            and lr.
        seed: the fine-tune's seed (each epoch derives its own).
        frozen_encoder: train the head only.
        penalty: added to every step's loss (FedProx's proximal term, for local training).

    Returns:
        {'best_epoch', 'epochs', 'val_<metric>' (the best), 'history' (per epoch: loss and val
            metric), 'stats' (TrainStats of every step)}.
    """
    kind = task_type(model.tasks[task_name].task)
    key, batch = kind.primary, batch_size(kind.group, method)
    steps = steps_per_epoch(
        len(train), batch, method.min_steps_per_epoch, schedule.max_steps_per_epoch
    )
    model.encoder.requires_grad_(not frozen_encoder)
    optimizer = make_optimizer(model.parameters(), schedule.lr, method.weight_decay)
    best_score, best_state, best_epoch, waited = -math.inf, copy.deepcopy(model.state_dict()), 0, 0
    history, total = [], TrainStats()
    for epoch in range(1, schedule.max_epochs + 1):
        stats = train_supervised(
            model, task_name, train, steps, batch, optimizer, derive_seed(seed, epoch), penalty
        )
        total = TrainStats(
            total.steps + stats.steps,
            total.images + stats.images,
            total.seconds + stats.seconds,
            stats.loss,
        )
        score = evaluate(model, task_name, val)[key]
        history.append({"epoch": epoch, "loss": stats.loss, f"val_{key}": score})
        if score > best_score:
            best_score, best_state, best_epoch, waited = (
                score,
                copy.deepcopy(model.state_dict()),
                epoch,
                0,
            )
        else:
            waited += 1
            if waited >= schedule.patience:
                break
    model.load_state_dict(best_state)
    model.encoder.requires_grad_(True)
    return {
        "best_epoch": best_epoch,
        "epochs": len(history),
        f"val_{key}": best_score,
        "history": history,
        "stats": total,
    }


def train_site(
    model: UniversalModel,
    task_name: str,
    splits: dict[str, Split],
    method: MethodConfig,
    schedule: FinetuneConfig,
    seed: int,
    penalty: Penalty | None = None,
) -> TrainStats:
    """A site's stage with the method's `local_training`: `local_epochs` passes (`train_local`), or
    the fine-tune schedule with early stopping on the site's own validation split (`finetune`).

    Args:
        model: encoder + the site's head, trained in place.
        task_name: the site's head.
        splits: the site's 'train' and 'val' splits.
        method: local_training, local_epochs, batch sizes, lr.
        schedule: the fine-tune schedule (for early stopping).
        seed: the stage's seed at this site.
        penalty: added to every step's loss (FedProx).
    """
    if method.local_training == "early_stopping":
        log = finetune(
            model,
            task_name,
            splits["train"],
            splits["val"],
            method,
            schedule,
            seed,
            penalty=penalty,
        )
        return log["stats"]
    return train_local(model, task_name, splits["train"], method, seed, penalty)


def evaluate_arm(
    model: UniversalModel,
    task_name: str,
    splits: dict[str, Split],
    mode: str,
    method: MethodConfig,
    schedule: FinetuneConfig,
    seed: int,
) -> dict[str, float | int]:
    """What a site reports for an evaluation arm: fine-tune or probe first if the arm's mode says
    so, then the metrics on val and test (scalars only: 'val-auc', 'test-auc', ..., 'best-epoch',
    'epochs').

    Args:
        model: the arm's weights for this site (trained in place by a fine-tune or probe).
        task_name: the site's head.
        splits: the site's 'train', 'val' and 'test' splits.
        mode: the arm's mode (`meduniverse.core.arms`: as_is, finetune or probe).
        method, schedule, seed: as for `finetune`.
    """
    metrics: dict[str, float | int] = {"num-examples": len(splits["train"])}
    if mode in (FINETUNE, PROBE):
        log = finetune(
            model,
            task_name,
            splits["train"],
            splits["val"],
            method,
            schedule,
            seed,
            frozen_encoder=mode == PROBE,
        )
        metrics.update({"best-epoch": log["best_epoch"], "epochs": log["epochs"]})
    for split in ("val", "test"):
        for name, value in evaluate(model, task_name, splits[split]).items():
            metrics[f"{split}-{name}"] = value
    return metrics
