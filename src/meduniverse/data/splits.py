"""A dataset split, as stored (numpy) and as the model takes it (tensors at the input
specification)."""

from dataclasses import dataclass

import numpy as np
import torch

SPLITS: tuple[str, ...] = ("train", "val", "test")


@dataclass
class RawSplit:
    """One split as stored: images (N,H,W) or (N,H,W,C) and targets (labels or masks)."""

    images: np.ndarray
    targets: np.ndarray


@dataclass
class Split:
    """Images (uint8, N×C×H×W at the input spec) and targets (labels or masks) of one split."""

    images: torch.Tensor
    targets: torch.Tensor

    def __len__(self) -> int:
        return self.images.shape[0]

    def subset(self, index: torch.Tensor | np.ndarray) -> "Split":
        """The examples at `index`, in that order."""
        index = torch.as_tensor(index)
        return Split(self.images[index], self.targets[index])

    def to(self, device: torch.device) -> "Split":
        """The split on `device` (itself if it is there already)."""
        return Split(self.images.to(device), self.targets.to(device))
