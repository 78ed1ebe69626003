"""Losses of the server step: soft-target distillation and masked-image reconstruction.

Each task type's supervised loss lives in its entry of the task-type registry
(`meduniverse.core.tasks`).
"""

import torch
import torch.nn.functional as F

from meduniverse.core.tasks import task_type


def soft_target_loss(
    student: torch.Tensor, teacher: torch.Tensor, task: str, temperature: float
) -> torch.Tensor:
    """Distillation towards a teacher's logits: tempered BCE for sigmoid heads, tempered KL for
    softmax heads.

    Args:
        student, teacher: logits of the same shape, (N,C) or (N,C,H,W).
        task: the head's task type (its activation decides the loss).
        temperature: T; the loss is scaled by T² so that its gradients keep their size.
    """
    t = temperature
    if task_type(task).activation == "sigmoid":
        return F.binary_cross_entropy_with_logits(student / t, torch.sigmoid(teacher / t)) * t * t
    log_p = F.log_softmax(student / t, dim=1)
    q = F.softmax(teacher / t, dim=1)
    kl = (q * (torch.log(q.clamp_min(1e-8)) - log_p)).sum(1)
    return kl.mean() * t * t


def mim_loss(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """SimMIM: L1 reconstruction error on the masked pixels only (mask is N×1×H×W, 1 = hidden)."""
    hidden = mask.expand_as(target)
    return (prediction - target).abs().mul(hidden).sum() / hidden.sum().clamp_min(1)
