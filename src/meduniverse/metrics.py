"""Evaluation metrics, MedMNIST conventions: AUC (macro one-vs-rest, per-label mean) and accuracy; Dice and IoU."""

import numpy as np
import torch
from monai.metrics import DiceMetric, MeanIoU
from sklearn.metrics import roc_auc_score

from meduniverse.tasks import is_segmentation


def classification_metrics(probs: np.ndarray, labels: np.ndarray, task: str) -> dict[str, float]:
    """AUC and accuracy from class probabilities (N,C) and labels ((N,) or (N,C) for multilabel)."""
    if task == "multilabel":
        aucs = [roc_auc_score(labels[:, c], probs[:, c]) for c in range(labels.shape[1]) if len(np.unique(labels[:, c])) == 2]
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
    onehot_pred = torch.nn.functional.one_hot(pred.long(), num_classes).permute(0, 3, 1, 2)
    onehot_true = torch.nn.functional.one_hot(masks.long(), num_classes).permute(0, 3, 1, 2)
    dice = DiceMetric(include_background=False, reduction="mean", ignore_empty=True)(onehot_pred, onehot_true)
    iou = MeanIoU(include_background=False, reduction="mean", ignore_empty=True)(onehot_pred, onehot_true)
    return {"dice": float(np.nanmean(dice.numpy())), "iou": float(np.nanmean(iou.numpy()))}


def task_metrics(probs: torch.Tensor, targets: torch.Tensor, task: str, num_classes: int) -> dict[str, float]:
    if is_segmentation(task):
        return segmentation_metrics(probs.argmax(1), targets, num_classes)
    return classification_metrics(probs.numpy(), targets.numpy(), task)
