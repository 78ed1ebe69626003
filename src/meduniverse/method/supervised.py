"""Supervised training and inference of one head: the loss per batch, the training steps, FedProx's
proximal term, probabilities and metrics. Every site-side step of the method builds on these."""

from collections.abc import Callable

import torch
from torch import nn

from meduniverse.core.tasks import task_type
from meduniverse.data.splits import Split
from meduniverse.data.transforms import normalize, random_flip
from meduniverse.method.loop import StepLosses, TrainStats, optimise, shuffled_batches
from meduniverse.models.universal import UniversalModel

Penalty = Callable[[], torch.Tensor]


def supervised_losses(
    model: UniversalModel,
    task_name: str,
    data: Split,
    batches,
    generator: torch.Generator,
    penalty: Penalty | None = None,
    forward: nn.Module | None = None,
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
        forward: what computes the logits, if not the model itself (Opacus's wrapper of it).
    """
    kind, forward = task_type(model.tasks[task_name].task), forward or model
    for idx in batches:
        masks = data.targets[idx] if kind.segmentation else None
        images, masks = random_flip(data.images[idx], masks, generator)
        loss = kind.loss(
            forward(normalize(images), task_name), masks if masks is not None else data.targets[idx]
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
