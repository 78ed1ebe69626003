"""What runs at a site: local training of a stage, fine-tuning and probing with early stopping,
evaluation.

None of these needs Flower; the ClientApp only calls them.
"""

import copy
from dataclasses import replace
import math

import torch

from meduniverse.core.arms import FINETUNE, PROBE
from meduniverse.core.config import FinetuneConfig, MethodConfig
from meduniverse.core.seeds import derive_seed
from meduniverse.core.tasks import task_type
from meduniverse.data.splits import Split
from meduniverse.method.loop import (
    TrainStats,
    batch_size,
    make_optimizer,
    steps_per_epoch,
)
from meduniverse.method.supervised import Penalty, evaluate, train_supervised
from meduniverse.models.universal import UniversalModel


def local_batch(task: str, method: MethodConfig, batch_scale: int = 1) -> int:
    """A local training batch: `batch_scale` times the method's batch for the task."""
    return batch_scale * batch_size(task_type(task).group, method)


def local_steps(task: str, n: int, method: MethodConfig, batch_scale: int = 1) -> int:
    """Steps of one stage's local training on n examples: local_epochs epochs of `local_batch`es;
    an epoch is one pass, but at least `min_steps_per_epoch` steps (so with a larger batch a small
    site sees more passes)."""
    return method.local_epochs * steps_per_epoch(
        n,
        local_batch(task, method, batch_scale),
        method.min_steps_per_epoch,
        method.max_steps_per_epoch,
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


def stage_method(method: MethodConfig, stage: int) -> MethodConfig:
    """The method as stage `stage` (1..S) trains at the sites: `local_training` =
    'early_stopping_last' is 'early_stopping' in the last stage and 'epochs' before it."""
    if method.local_training != "early_stopping_last":
        return method
    return replace(method, local_training="early_stopping" if stage >= method.stages else "epochs")


def train_site(
    model: UniversalModel,
    task_name: str,
    splits: dict[str, Split],
    method: MethodConfig,
    schedule: FinetuneConfig,
    seed: int,
    penalty: Penalty | None = None,
    frozen_encoder: bool = False,
) -> TrainStats:
    """A site's stage with the method's `local_training`: `local_epochs` passes (`train_local`), or
    the fine-tune schedule with early stopping on the site's own validation split (`finetune`).

    Args:
        model: encoder + the site's head, trained in place (parameters that do not require
            gradients, a frozen head say, stay as they are).
        task_name: the site's head.
        splits: the site's 'train' and 'val' splits.
        method: local_training, local_epochs, batch sizes, lr.
        schedule: the fine-tune schedule (for early stopping).
        seed: the stage's seed at this site.
        penalty: added to every step's loss (FedProx, Ditto).
        frozen_encoder: train the head only.
    """
    if method.local_training not in ("epochs", "early_stopping"):
        raise ValueError(f"local_training '{method.local_training}': resolve with stage_method")
    if method.local_training == "early_stopping":
        train, val = splits["train"], splits["val"]
        return finetune(
            model, task_name, train, val, method, schedule, seed, frozen_encoder, penalty
        )["stats"]
    model.encoder.requires_grad_(not frozen_encoder)
    try:
        return train_local(model, task_name, splits["train"], method, seed, penalty)
    finally:
        model.encoder.requires_grad_(True)


def keep_better(
    model: UniversalModel,
    task_name: str,
    val: Split,
    kept: dict[str, torch.Tensor] | None,
) -> bool:
    """`method.teachers` = 'best': the better of the stage's model and the teacher the site kept
    from the stage before, by the primary metric on the site's validation split (a tie keeps the
    new model).

    Args:
        model: the stage's trained model; ends holding the better of the two.
        task_name: the site's head.
        val: the site's validation split.
        kept: the kept teacher's weights (encoder + the site's head), or None (stage 1).

    Returns:
        Whether the kept teacher won.
    """
    if kept is None:
        return False
    key = task_type(model.tasks[task_name].task).primary
    new_score, new_state = evaluate(model, task_name, val)[key], copy.deepcopy(model.state_dict())
    model.load_state_dict(kept)
    if evaluate(model, task_name, val)[key] > new_score:
        return True
    model.load_state_dict(new_state)
    return False


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
