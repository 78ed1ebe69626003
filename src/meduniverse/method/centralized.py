"""The centralised reference: multi-task training on every site's pooled private data (what privacy
forbids)."""

import torch

from meduniverse.core.config import MethodConfig
from meduniverse.core.tasks import task_type
from meduniverse.data.splits import Split
from meduniverse.method.loop import (
    StepCallback,
    TrainStats,
    batch_size,
    make_optimizer,
    optimise,
    shuffled_batches,
)
from meduniverse.method.site import local_steps
from meduniverse.method.supervised import supervised_losses
from meduniverse.models.universal import UniversalModel


def train_multitask(
    model: UniversalModel,
    data: dict[str, Split],
    method: MethodConfig,
    seed: int,
    on_step: StepCallback | None = None,
) -> TrainStats:
    """Every task gets its site's stages x local-training steps, the tasks' steps interleaved at
    random.

    Args:
        model: the universal model (encoder + every head), trained in place.
        data: per task (site name), its train split.
        method: stages, local epochs and batch sizes (the same budget as the federation's local
        training).
        seed: interleaving, shuffling and flips.
        on_step: progress callback (step, steps).
    """
    generator = torch.Generator().manual_seed(seed)
    tasks = {name: model.tasks[name].task for name in data}
    budget = {
        name: method.stages * local_steps(tasks[name], len(split), method)
        for name, split in data.items()
    }
    order = [name for name, steps in budget.items() for _ in range(steps)]
    order = [order[i] for i in torch.randperm(len(order), generator=generator).tolist()]
    batches = {
        name: shuffled_batches(
            len(split),
            min(batch_size(task_type(tasks[name]).group, method), len(split)),
            budget[name],
            generator,
        )
        for name, split in data.items()
    }
    losses = {
        name: supervised_losses(model, name, split, batches[name], generator)
        for name, split in data.items()
    }
    optimizer = make_optimizer(model.parameters(), method.lr, method.weight_decay)
    model.train()
    return optimise(optimizer, (next(losses[name]) for name in order), len(order), on_step=on_step)
