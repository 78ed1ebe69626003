"""Losses: the supervised loss of each task type, soft-target distillation, retention and MIM reconstruction."""

import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss

_dice_ce = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False)  # foreground Dice: thin vessels are ~9% of pixels
SIGMOID_TASKS = ("binary", "ordinal", "multilabel")


def ordinal_targets(labels: torch.Tensor, num_thresholds: int) -> torch.Tensor:
    """Cumulative targets: column k is 1 where the grade exceeds k."""
    return (labels[:, None] > torch.arange(num_thresholds, device=labels.device)[None]).float()


def task_loss(logits: torch.Tensor, targets: torch.Tensor, task: str) -> torch.Tensor:
    """BCE (binary, multilabel), CE (multiclass), cumulative BCE (ordinal), Dice + CE (segmentation)."""
    if task == "binary":
        return F.binary_cross_entropy_with_logits(logits[:, 0], targets.float())
    if task == "multilabel":
        return F.binary_cross_entropy_with_logits(logits, targets.float())
    if task == "ordinal":
        return F.binary_cross_entropy_with_logits(logits, ordinal_targets(targets, logits.shape[1]))
    if task == "multiclass":
        return F.cross_entropy(logits, targets)
    return _dice_ce(logits, targets.unsqueeze(1))


def probabilities(logits: torch.Tensor, task: str) -> torch.Tensor:
    """Class probabilities: (N,C) for classification (per label for multilabel), (N,C,H,W) for segmentation."""
    if task == "binary":
        p = torch.sigmoid(logits[:, 0])
        return torch.stack([1 - p, p], dim=1)
    if task == "multilabel":
        return torch.sigmoid(logits)
    if task == "ordinal":
        exceed = torch.sigmoid(logits)  # P(grade > k)
        upper = torch.cat([torch.ones_like(exceed[:, :1]), exceed], dim=1)
        lower = torch.cat([exceed, torch.zeros_like(exceed[:, :1])], dim=1)
        p = (upper - lower).clamp_min(0)
        return p / p.sum(1, keepdim=True).clamp_min(1e-8)
    return torch.softmax(logits, dim=1)


def soft_target_loss(student: torch.Tensor, teacher: torch.Tensor, task: str, temperature: float) -> torch.Tensor:
    """Distillation towards a teacher's logits: tempered BCE for sigmoid heads, tempered KL for softmax heads."""
    t = temperature
    if task in SIGMOID_TASKS:
        return F.binary_cross_entropy_with_logits(student / t, torch.sigmoid(teacher / t)) * t * t
    log_p = F.log_softmax(student / t, dim=1)
    q = F.softmax(teacher / t, dim=1)
    kl = (q * (torch.log(q.clamp_min(1e-8)) - log_p)).sum(1)
    return kl.mean() * t * t


def mim_loss(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """SimMIM: L1 reconstruction error on the masked pixels only (mask is N×1×H×W, 1 = hidden)."""
    hidden = mask.expand_as(target)
    return (prediction - target).abs().mul(hidden).sum() / hidden.sum().clamp_min(1)
