"""The task-type registry: everything that follows from a site's task type, in one place.

A task type fixes the head's output width, the supervised loss, how logits become probabilities, the
metrics (MedMNIST conventions: macro one-vs-rest AUC, per-label mean AUC; foreground Dice and IoU), which
input group (and so which input specification and pool) a site uses, and how its stored targets are checked.
Add a task type by adding one `TaskType` to `TASK_TYPES`.
"""

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import numpy as np
import torch
import torch.nn.functional as F

from meduniverse.core.errors import DataError

Targets = np.ndarray


@dataclass(frozen=True)
class TaskType:
    """One task type.

    Args:
        name: the name sites use in their configuration (``task = "binary"``).
        group: input group, ``"classification"`` or ``"segmentation"``: which input spec and pool images.
        activation: ``"sigmoid"`` (independent probabilities, BCE-style distillation) or ``"softmax"``.
        primary, secondary: metric names; the primary one ranks arms and drives early stopping.
        min_classes: fewest class names a site of this type may declare.
        max_classes: most class names it may declare (0: no limit).
        outputs: number of classes -> logit channels of the head.
        loss: (logits, targets) -> scalar loss. Targets: (N,) labels, (N,C) multilabel or (N,H,W) masks.
        probabilities: logits -> class probabilities, (N,C) or (N,C,H,W).
        metrics: (probabilities, targets, number of classes) -> {primary: ..., secondary: ...}.
        check_targets: (targets, images, number of classes, where) -> checked targets as stored in memory
            (int64 labels, or uint8 masks); raises DataError naming `where`.
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


# ------------------------------------------------------------------------------------------- targets

def _whole_numbers(labels: np.ndarray, where: str) -> None:
    if np.issubdtype(labels.dtype, np.floating):
        if np.isnan(labels).any():
            raise DataError(f"{where}: labels contain NaN")
        if not np.all(labels == np.round(labels)):
            raise DataError(f"{where}: labels must be whole numbers, found fractional values")
    elif not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == np.bool_):
        raise DataError(f"{where}: labels must be integers, got dtype {labels.dtype}")


def check_class_labels(labels: np.ndarray, images: np.ndarray, num_classes: int, where: str) -> np.ndarray:
    """One class id per image: int64 (N,) from (N,) or (N,1), every id in 0..C-1."""
    _whole_numbers(labels, where)
    if labels.shape[0] != images.shape[0]:
        raise DataError(f"{where}: {labels.shape[0]} labels for {images.shape[0]} images")
    labels = labels.astype(np.int64)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise DataError(f"{where}: labels must have shape (N,) or (N,1), got {labels.shape}")
    bad = (labels < 0) | (labels >= num_classes)
    if bad.any():
        raise DataError(
            f"{where}: label {labels[bad][0]} out of range 0..{num_classes - 1} ({int(bad.sum())} such labels)"
        )
    return labels


def check_multilabels(labels: np.ndarray, images: np.ndarray, num_classes: int, where: str) -> np.ndarray:
    """One 0/1 column per class: int64 (N,C)."""
    _whole_numbers(labels, where)
    if labels.shape[0] != images.shape[0]:
        raise DataError(f"{where}: {labels.shape[0]} labels for {images.shape[0]} images")
    labels = labels.astype(np.int64)
    if labels.ndim != 2 or labels.shape[1] != num_classes:
        raise DataError(f"{where}: multilabel labels must have shape (N,{num_classes}), got {labels.shape}")
    if not np.isin(labels, (0, 1)).all():
        raise DataError(f"{where}: multilabel labels must be 0 or 1")
    return labels


def check_masks(masks: np.ndarray, images: np.ndarray, num_classes: int, where: str) -> np.ndarray:
    """A class-id mask per image, the image's height and width: uint8 (N,H,W)."""
    if masks.ndim == 4 and masks.shape[-1] == 1:
        masks = masks[..., 0]
    if masks.ndim != 3:
        raise DataError(f"{where}: masks must have shape (N,H,W), got {masks.shape}")
    if masks.shape != images.shape[:3]:
        raise DataError(f"{where}: masks shape {masks.shape} does not match images {images.shape[:3]}")
    if np.issubdtype(masks.dtype, np.floating):
        if np.isnan(masks).any():
            raise DataError(f"{where}: masks contain NaN")
    elif not (np.issubdtype(masks.dtype, np.integer) or masks.dtype == np.bool_):
        raise DataError(f"{where}: masks must be integers, got dtype {masks.dtype}")
    values = np.unique(masks)
    outside = values[(values < 0) | (values >= num_classes) | (values != np.round(values))]
    if outside.size:
        raise DataError(f"{where}: mask values {outside[:5].tolist()} outside the classes 0..{num_classes - 1}")
    return masks.astype(np.uint8)


# ------------------------------------------------------------------------------------------- losses

def ordinal_targets(labels: torch.Tensor, num_thresholds: int) -> torch.Tensor:
    """Cumulative targets: column k is 1 where the grade exceeds k."""
    return (labels[:, None] > torch.arange(num_thresholds, device=labels.device)[None]).float()


@cache
def _dice_ce() -> torch.nn.Module:
    from monai.losses import DiceCELoss  # imported on first use: MONAI takes seconds to import

    return DiceCELoss(to_onehot_y=True, softmax=True, include_background=False)  # foreground Dice: thin vessels ~9%


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


# ------------------------------------------------------------------------------------------- metrics

def classification_metrics(probs: np.ndarray, labels: np.ndarray, multilabel: bool = False) -> dict[str, float]:
    """AUC and accuracy from class probabilities (N,C) and labels ((N,), or (N,C) when multilabel)."""
    from sklearn.metrics import roc_auc_score

    if multilabel:
        aucs = [roc_auc_score(labels[:, c], probs[:, c]) for c in range(labels.shape[1])
                if len(np.unique(labels[:, c])) == 2]
        return {"auc": float(np.mean(aucs)) if aucs else float("nan"), "acc": float(((probs > 0.5) == labels).mean())}
    present = np.unique(labels)
    if len(present) < 2:
        auc = float("nan")
    elif probs.shape[1] == 2:
        auc = float(roc_auc_score(labels, probs[:, 1]))
    else:
        aucs = [roc_auc_score(labels == c, probs[:, c]) for c in range(probs.shape[1]) if c in present]
        auc = float(np.mean(aucs))
    return {"auc": auc, "acc": float((probs.argmax(1) == labels).mean())}


def segmentation_metrics(pred: torch.Tensor, masks: torch.Tensor, num_classes: int) -> dict[str, float]:
    """Mean per-image Dice and IoU of the foreground classes (images with an empty mask are skipped by MONAI)."""
    from monai.metrics import DiceMetric, MeanIoU

    onehot_pred = F.one_hot(pred.long(), num_classes).permute(0, 3, 1, 2)
    onehot_true = F.one_hot(masks.long(), num_classes).permute(0, 3, 1, 2)
    dice = DiceMetric(include_background=False, reduction="mean", ignore_empty=True)(onehot_pred, onehot_true)
    iou = MeanIoU(include_background=False, reduction="mean", ignore_empty=True)(onehot_pred, onehot_true)
    return {"dice": float(np.nanmean(dice.cpu().numpy())), "iou": float(np.nanmean(iou.cpu().numpy()))}


def _label_metrics(probs: torch.Tensor, targets: torch.Tensor, num_classes: int) -> dict[str, float]:
    return classification_metrics(probs.float().cpu().numpy(), targets.cpu().numpy())


def _multilabel_metrics(probs: torch.Tensor, targets: torch.Tensor, num_classes: int) -> dict[str, float]:
    return classification_metrics(probs.float().cpu().numpy(), targets.cpu().numpy(), multilabel=True)


def _mask_metrics(probs: torch.Tensor, targets: torch.Tensor, num_classes: int) -> dict[str, float]:
    return segmentation_metrics(probs.argmax(1), targets, num_classes)


# ------------------------------------------------------------------------------------------- registry

def _classification(name: str, activation: str, outputs: Callable[[int], int], loss, probabilities, metrics=_label_metrics,
                    check=check_class_labels, min_classes: int = 2, max_classes: int = 0) -> TaskType:
    return TaskType(name, "classification", activation, "auc", "acc", min_classes, max_classes, outputs, loss,
                    probabilities, metrics, check)


TASK_TYPES: dict[str, TaskType] = {t.name: t for t in (
    _classification("binary", "sigmoid", lambda c: 1,
                    lambda logits, y: F.binary_cross_entropy_with_logits(logits[:, 0], y.float()), _binary_probabilities,
                    max_classes=2),
    _classification("multiclass", "softmax", lambda c: c, F.cross_entropy, _softmax),
    _classification("ordinal", "sigmoid", lambda c: c - 1,
                    lambda logits, y: F.binary_cross_entropy_with_logits(logits, ordinal_targets(y, logits.shape[1])),
                    _ordinal_probabilities),
    _classification("multilabel", "sigmoid", lambda c: c,
                    lambda logits, y: F.binary_cross_entropy_with_logits(logits, y.float()), torch.sigmoid,
                    _multilabel_metrics, check_multilabels, min_classes=1),
    TaskType("segmentation", "segmentation", "softmax", "dice", "iou", 2, 0, lambda c: c,
             lambda logits, masks: _dice_ce()(logits, masks.unsqueeze(1)), _softmax, _mask_metrics, check_masks),
)}
GROUPS: tuple[str, ...] = ("classification", "segmentation")


def task_type(name: str) -> TaskType:
    """The registered task type `name`; raises KeyError listing the known ones."""
    try:
        return TASK_TYPES[name]
    except KeyError:
        raise KeyError(f"task type '{name}' unknown (known: {', '.join(TASK_TYPES)})") from None
