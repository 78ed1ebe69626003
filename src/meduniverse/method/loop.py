"""The one optimisation loop every training step of the method runs through, and its batching
helpers."""

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
import math
import time

import torch

from meduniverse.core.config import MethodConfig

StepCallback = Callable[[int, int], None]
StepLosses = Iterable[tuple[torch.Tensor, int]]
"""Per step, (loss, images in the batch): a loss that requires grad is backpropagated by `optimise`;
a detached one was already backpropagated by its generator (`backward_by_head`)."""


@dataclass
class TrainStats:
    """What a training call did: steps, images seen, seconds and the mean loss."""

    steps: int = 0
    images: int = 0
    seconds: float = 0.0
    loss: float = float("nan")

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds else 0.0


def optimise(
    optimizer: torch.optim.Optimizer,
    losses: StepLosses,
    steps: int,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    on_step: StepCallback | None = None,
) -> TrainStats:
    """Run `steps` optimiser steps on the losses a generator yields, one per step.

    Args:
        optimizer: steps the parameters the losses depend on.
        losses: yields (loss, images in the batch) per step (`StepLosses`); it computes each
            forward pass when asked, after the gradients are zeroed, so whatever it does between
            steps (reshuffling, recomputing targets, backpropagating) happens in step order.
        steps: how many steps to take (the generator must yield at least that many).
        scheduler: stepped after every optimiser step, if given.
        on_step: called with (step, steps) after each step (progress bars).

    Returns:
        TrainStats with the mean loss over the steps.
    """
    stats, start, total = TrainStats(steps=steps), time.perf_counter(), 0.0
    batches = iter(losses)
    for step in range(1, steps + 1):
        optimizer.zero_grad(set_to_none=True)
        loss, images = next(batches)
        if loss.requires_grad:
            loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        total += loss.item()
        stats.images += images
        if on_step:
            on_step(step, steps)
    stats.seconds, stats.loss = time.perf_counter() - start, total / max(steps, 1)
    return stats


def backward_by_head(
    pyramids: dict[str, list[torch.Tensor]],
    head_loss: Callable[[str, list[torch.Tensor]], torch.Tensor],
) -> torch.Tensor:
    """Backpropagate the sum of the heads' losses one head at a time: each head's loss on a
    detached copy of its encoder pyramid, then the encoder once per distinct pyramid with the
    gradients the heads left on it. The gradients are those of the sum's backward, but only one
    head's activations are alive at a time, so memory stays flat in the number of heads.

    Args:
        pyramids: per head, its encoder pyramid (heads without adapters share one).
        head_loss: (head, pyramid) -> that head's scalar loss.

    Returns:
        The summed loss, detached (see `StepLosses`).
    """
    total = torch.zeros(())
    leaves: dict[int, tuple[list[torch.Tensor], list[torch.Tensor]]] = {}
    for head, pyramid in pyramids.items():
        if id(pyramid) not in leaves:
            leaves[id(pyramid)] = pyramid, [f.detach().requires_grad_() for f in pyramid]
        loss = head_loss(head, leaves[id(pyramid)][1])
        loss.backward()
        total = total.to(loss.device) + loss.detach()
    for pyramid, detached in leaves.values():
        pairs = [(f, d.grad) for f, d in zip(pyramid, detached, strict=True) if d.grad is not None]
        if pairs:
            torch.autograd.backward([f for f, _ in pairs], [g for _, g in pairs])
    return total


def make_optimizer(
    params: Iterable[torch.nn.Parameter], lr: float, weight_decay: float
) -> torch.optim.Optimizer:
    """AdamW over the parameters that require gradients."""
    return torch.optim.AdamW(
        [p for p in params if p.requires_grad], lr=lr, weight_decay=weight_decay
    )


def shuffled_batches(
    n: int, batch_size: int, steps: int, generator: torch.Generator
) -> Iterator[torch.Tensor]:
    """`steps` batches of indices, reshuffling after every pass over the n examples.

    Args:
        n: number of examples.
        batch_size: indices per batch.
        steps: number of batches.
        generator: the shuffles' random source.
    """
    order, pos = torch.randperm(n, generator=generator), 0
    for _ in range(steps):
        if pos + batch_size > n and pos > 0:
            order, pos = torch.randperm(n, generator=generator), 0
        idx = order[pos : pos + batch_size]
        pos += batch_size
        yield idx


def batch_size(group: str, method: MethodConfig) -> int:
    """Batch size of an input group ('segmentation' or 'classification')."""
    return method.seg_batch_size if group == "segmentation" else method.batch_size


def steps_per_epoch(n: int, batch: int, minimum: int, cap: int = 0) -> int:
    """Enough steps to see every example once, at least `minimum`, at most `cap` if one is set (0:
    none).

    Args:
        n: number of examples.
        batch: batch size.
        minimum: fewest steps.
        cap: most steps (0: no cap).
    """
    steps = max(math.ceil(n / batch), minimum)
    return min(steps, cap) if cap else steps


def pool_batch_sizes(pool: dict[str, torch.Tensor], method: MethodConfig) -> dict[str, int]:
    """Batch size of each input group of the pool."""
    return {g: batch_size(g, method) for g in pool}


def pool_steps(pool: dict[str, torch.Tensor], sizes: dict[str, int], epochs: int) -> int:
    """Steps for `epochs` passes over the largest group of the pool (smaller groups cycle)."""
    return epochs * max(math.ceil(len(x) / sizes[g]) for g, x in pool.items())


def cycle_batches(
    pool: dict[str, torch.Tensor], sizes: dict[str, int], steps: int, generator: torch.Generator
) -> Iterator[dict[str, torch.Tensor]]:
    """Each step, one batch of indices per input group, every group reshuffled when exhausted.

    Args:
        pool: per input group, the images.
        sizes: per group, the batch size.
        steps: number of steps.
        generator: the shuffles' random source.
    """
    iters = {
        g: shuffled_batches(len(x), min(sizes[g], len(x)), steps, generator)
        for g, x in pool.items()
    }
    for _ in range(steps):
        yield {g: next(it) for g, it in iters.items()}
