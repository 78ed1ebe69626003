"""The task-type registry: everything that follows from a site's task type, in one place.

A task type fixes the head's output width, the supervised loss, how logits become probabilities, the
metrics (MedMNIST conventions: macro one-vs-rest AUC, per-label mean AUC; foreground Dice and IoU),
which input group (and so which input specification and pool) a site uses, and how its stored
targets are checked. Add a task type by adding one `TaskType` to `TASK_TYPES`.
"""

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import numpy as np
import torch
import torch.nn.functional as F

from meduniverse.core.metrics import label_metrics, mask_metrics, multilabel_metrics
from meduniverse.core.targets import check_class_labels, check_masks, check_multilabels


@dataclass(frozen=True)
class TaskType:
    """One task type.

    Args:
        name: the name sites use in their configuration (``task = "binary"``).
        group: input group, ``"classification"`` or ``"segmentation"``: which input spec and pool
            images.
        activation: ``"sigmoid"`` (independent probabilities, BCE-style distillation) or
            ``"softmax"``.
        primary, secondary: metric names; the primary one ranks arms and drives early stopping.
        min_classes: fewest class names a site of this type may declare.
        max_classes: most class names it may declare (0: no limit).
        outputs: number of classes -> logit channels of the head.
        loss: (logits, targets) -> scalar loss. Targets: (N,) labels, (N,C) multilabel or (N,H,W)
            masks.
        probabilities: logits -> class probabilities, (N,C) or (N,C,H,W).
        metrics: (probabilities, targets, number of classes) -> {primary: ..., secondary: ...}.
        check_targets: (targets, images, number of classes, where) -> checked targets as stored in
            memory (int64 labels, or uint8 masks); raises DataError naming `where`.
    """

    name: str
    group: str
    activation: str
    primary: str
    secondary: str
    min_classes: int
    max_classes: int
    outputs: Callable[[int], int]
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    probabilities: Callable[[torch.Tensor], torch.Tensor]
    metrics: Callable[[torch.Tensor, torch.Tensor, int], dict[str, float]]
    check_targets: Callable[[np.ndarray, np.ndarray, int, str], np.ndarray]

    @property
    def segmentation(self) -> bool:
        return self.group == "segmentation"

    @property
    def target_key(self) -> str:
        """The npz key suffix of this type's targets: ``labels`` or ``masks``."""
        return "masks" if self.segmentation else "labels"


def ordinal_targets(labels: torch.Tensor, num_thresholds: int) -> torch.Tensor:
    """Cumulative targets: column k is 1 where the grade exceeds k."""
    return (labels[:, None] > torch.arange(num_thresholds, device=labels.device)[None]).float()


@cache
def _dice_ce() -> torch.nn.Module:
    from monai.losses import DiceCELoss  # imported on first use: MONAI takes seconds to import

    return DiceCELoss(
        to_onehot_y=True, softmax=True, include_background=False
    )  # foreground Dice: thin vessels ~9%


def _binary_probabilities(logits: torch.Tensor) -> torch.Tensor:
    p = torch.sigmoid(logits[:, 0])
    return torch.stack([1 - p, p], dim=1)


def _ordinal_probabilities(logits: torch.Tensor) -> torch.Tensor:
    exceed = torch.sigmoid(logits)  # P(grade > k)
    upper = torch.cat([torch.ones_like(exceed[:, :1]), exceed], dim=1)
    lower = torch.cat([exceed, torch.zeros_like(exceed[:, :1])], dim=1)
    p = (upper - lower).clamp_min(0)
    return p / p.sum(1, keepdim=True).clamp_min(1e-8)


def _softmax(logits: torch.Tensor) -> torch.Tensor:
    return torch.softmax(logits, dim=1)


def _classification(
    name: str,
    activation: str,
    outputs: Callable[[int], int],
    loss,
    probabilities,
    metrics=label_metrics,
    check=check_class_labels,
    min_classes: int = 2,
    max_classes: int = 0,
) -> TaskType:
    return TaskType(
        name,
        "classification",
        activation,
        "auc",
        "acc",
        min_classes,
        max_classes,
        outputs,
        loss,
        probabilities,
        metrics,
        check,
    )


TASK_TYPES: dict[str, TaskType] = {
    t.name: t
    for t in (
        _classification(
            "binary",
            "sigmoid",
            lambda c: 1,
            lambda logits, y: F.binary_cross_entropy_with_logits(logits[:, 0], y.float()),
            _binary_probabilities,
            max_classes=2,
        ),
        _classification("multiclass", "softmax", lambda c: c, F.cross_entropy, _softmax),
        _classification(
            "ordinal",
            "sigmoid",
            lambda c: c - 1,
            lambda logits, y: F.binary_cross_entropy_with_logits(
                logits, ordinal_targets(y, logits.shape[1])
            ),
            _ordinal_probabilities,
        ),
        _classification(
            "multilabel",
            "sigmoid",
            lambda c: c,
            lambda logits, y: F.binary_cross_entropy_with_logits(logits, y.float()),
            torch.sigmoid,
            multilabel_metrics,
            check_multilabels,
            min_classes=1,
        ),
        TaskType(
            "segmentation",
            "segmentation",
            "softmax",
            "dice",
            "iou",
            2,
            0,
            lambda c: c,
            lambda logits, masks: _dice_ce()(logits, masks.unsqueeze(1)),
            _softmax,
            mask_metrics,
            check_masks,
        ),
    )
}
GROUPS: tuple[str, ...] = ("classification", "segmentation")


def task_type(name: str) -> TaskType:
    """The registered task type `name`; raises KeyError listing the known ones."""
    try:
        return TASK_TYPES[name]
    except KeyError:
        raise KeyError(f"task type '{name}' unknown (known: {', '.join(TASK_TYPES)})") from None
