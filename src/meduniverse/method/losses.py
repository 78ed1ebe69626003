"""Losses of the server step: soft-target distillation and masked-image reconstruction.

Each task type's supervised loss lives in its entry of the task-type registry
(`meduniverse.core.tasks`).
"""

import torch
import torch.nn.functional as F

from meduniverse.core.config import MethodConfig
from meduniverse.core.tasks import task_type


def soft_target_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    task: str,
    temperature: float,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Distillation towards a teacher's logits: tempered BCE for sigmoid heads, tempered KL for
    softmax heads.

    Args:
        student, teacher: logits of the same shape, (N,C) or (N,C,H,W).
        task: the head's task type (its activation decides the loss).
        temperature: T; the loss is scaled by T² so that its gradients keep their size.
        weights: (N,) weights of the examples (None: the plain mean).
    """
    t = temperature
    if task_type(task).activation == "sigmoid":
        target = torch.sigmoid(teacher / t)
        if weights is None:
            return F.binary_cross_entropy_with_logits(student / t, target) * t * t
        each = F.binary_cross_entropy_with_logits(student / t, target, reduction="none")
    else:
        log_p = F.log_softmax(student / t, dim=1)
        q = F.softmax(teacher / t, dim=1)
        each = (q * (torch.log(q.clamp_min(1e-8)) - log_p)).sum(1)
        if weights is None:
            return each.mean() * t * t
    per_example = each.reshape(each.shape[0], -1).mean(1)
    return (per_example * weights).sum() / weights.sum() * t * t


def soft_dice_loss(
    student: torch.Tensor, teacher: torch.Tensor, task: str, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """1 - soft Dice between the student's and the teacher's foreground probabilities (every class
    but the first), per example, so that a thin structure counts as much as a large one.

    Args:
        student, teacher: segmentation logits (N,C,H,W).
        task: the head's task type (its `probabilities`).
        weights: (N,) weights of the examples (None: the plain mean).
    """
    probabilities = task_type(task).probabilities
    p, q = probabilities(student)[:, 1:], probabilities(teacher)[:, 1:]
    overlap = (p * q).flatten(1).sum(1)
    total = (p + q).flatten(1).sum(1)
    each = 1 - (2 * overlap + 1) / (total + 1)
    if weights is None:
        return each.mean()
    return (each * weights).sum() / weights.sum()


def mim_loss(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """SimMIM: L1 reconstruction error on the masked pixels only (mask is N×1×H×W, 1 = hidden)."""
    hidden = mask.expand_as(target)
    return (prediction - target).abs().mul(hidden).sum() / hidden.sum().clamp_min(1)


def feature_distance(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Squared distance between L2-normalised feature vectors (2 - 2 cos), mean over examples:
    feature-level distillation, blind to the features' scale.

    Args:
        student, teacher: N×D.
    """
    return (F.normalize(student, dim=1) - F.normalize(teacher, dim=1)).pow(2).sum(1).mean()


def teacher_term(
    student: torch.Tensor,
    teacher: torch.Tensor,
    task: str,
    method: MethodConfig,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """A head's loss towards its teacher: the tempered soft-target loss, plus for segmentation
    heads `distill_dice_weight` times the soft Dice between their foreground probabilities.

    Args:
        student, teacher: logits of the same shape, (N,C) or (N,C,H,W).
        task: the head's task type.
        method: temperature and distill_dice_weight.
        weights: (N,) weights of the examples (None: equal).
    """
    loss = soft_target_loss(student, teacher, task, method.temperature, weights)
    if method.distill_dice_weight > 0 and task_type(task).segmentation:
        loss = loss + method.distill_dice_weight * soft_dice_loss(student, teacher, task, weights)
    return loss
