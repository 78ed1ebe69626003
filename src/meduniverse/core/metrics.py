"""Evaluation metrics, MedMNIST conventions: AUC (macro one-vs-rest, per-label mean) and accuracy;
foreground Dice and IoU. The task types' `metrics` in `meduniverse.core.tasks`."""

import numpy as np
import torch
import torch.nn.functional as F


def classification_metrics(
    probs: np.ndarray, labels: np.ndarray, multilabel: bool = False
) -> dict[str, float]:
    """AUC and accuracy from probabilities (N,C) and labels ((N,), or (N,C) when multilabel)."""
    from sklearn.metrics import roc_auc_score

    if multilabel:
        aucs = [
            roc_auc_score(labels[:, c], probs[:, c])
            for c in range(labels.shape[1])
            if len(np.unique(labels[:, c])) == 2
        ]
        return {
            "auc": float(np.mean(aucs)) if aucs else float("nan"),
            "acc": float(((probs > 0.5) == labels).mean()),
        }
    present = np.unique(labels)
    if len(present) < 2:
        auc = float("nan")
    elif probs.shape[1] == 2:
        auc = float(roc_auc_score(labels, probs[:, 1]))
    else:
        aucs = [
            roc_auc_score(labels == c, probs[:, c]) for c in range(probs.shape[1]) if c in present
        ]
        auc = float(np.mean(aucs))
    return {"auc": auc, "acc": float((probs.argmax(1) == labels).mean())}


def segmentation_metrics(
    pred: torch.Tensor, masks: torch.Tensor, num_classes: int
) -> dict[str, float]:
    """Mean per-image Dice and IoU of the foreground classes (images with an empty mask are skipped
    by MONAI)."""
    from monai.metrics import DiceMetric, MeanIoU

    onehot_pred = F.one_hot(pred.long(), num_classes).permute(0, 3, 1, 2)
    onehot_true = F.one_hot(masks.long(), num_classes).permute(0, 3, 1, 2)
    dice = DiceMetric(include_background=False, reduction="mean", ignore_empty=True)(
        onehot_pred, onehot_true
    )
    iou = MeanIoU(include_background=False, reduction="mean", ignore_empty=True)(
        onehot_pred, onehot_true
    )
    return {
        "dice": float(np.nanmean(dice.cpu().numpy())),
        "iou": float(np.nanmean(iou.cpu().numpy())),
    }


def label_metrics(probs: torch.Tensor, targets: torch.Tensor, num_classes: int) -> dict[str, float]:
    """AUC and accuracy of single-label classification from probabilities (N,C) and labels (N,)."""
    return classification_metrics(probs.float().cpu().numpy(), targets.cpu().numpy())


def multilabel_metrics(
    probs: torch.Tensor, targets: torch.Tensor, num_classes: int
) -> dict[str, float]:
    """Per-label mean AUC and accuracy from probabilities (N,C) and 0/1 labels (N,C)."""
    return classification_metrics(
        probs.float().cpu().numpy(), targets.cpu().numpy(), multilabel=True
    )


def mask_metrics(probs: torch.Tensor, targets: torch.Tensor, num_classes: int) -> dict[str, float]:
    """Dice and IoU of the most probable class per pixel: probabilities (N,C,H,W), masks (N,H,W)."""
    return segmentation_metrics(probs.argmax(1).cpu(), targets.cpu(), num_classes)
