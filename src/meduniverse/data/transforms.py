"""Bring images and masks to the federation's input specification, and normalise batches.

Resizing is done once, batched, with torch (a per-image MONAI ``Resize`` gives the same result
at several times the cost); the files on disk are never touched.
"""

import math

import numpy as np
import torch
import torch.nn.functional as F

from meduniverse.core.config import MEAN, STD, InputSpec


def images_to_spec(images: np.ndarray, spec: InputSpec, chunk: int = 512) -> torch.Tensor:
    """uint8 (N,H,W[,C]) -> uint8 tensor (N,channels,size,size): gray<->RGB, antialiased bilinear
    resize."""
    x = torch.from_numpy(np.require(images, requirements=["C", "W"]))
    x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
    if x.shape[1] != spec.channels:
        x = (
            x.expand(-1, spec.channels, -1, -1)
            if x.shape[1] == 1
            else x.float().mean(1, keepdim=True).round().byte()
        )
    if x.shape[-1] == spec.size and x.shape[-2] == spec.size:
        return x.contiguous()
    out = []
    for part in x.split(chunk):
        resized = F.interpolate(
            part.float(),
            size=(spec.size, spec.size),
            mode="bilinear",
            antialias=True,
            align_corners=False,
        )
        out.append(resized.round().clamp(0, 255).byte())
    return torch.cat(out)


def masks_to_spec(masks: np.ndarray, spec: InputSpec) -> torch.Tensor:
    """uint8 (N,H,W) class ids -> int64 tensor (N,size,size), nearest-neighbour."""
    m = torch.from_numpy(np.require(masks, requirements=["C", "W"])).unsqueeze(1).float()
    if m.shape[-1] != spec.size or m.shape[-2] != spec.size:
        m = F.interpolate(m, size=(spec.size, spec.size), mode="nearest")
    return m[:, 0].long()


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 batch -> float batch the model takes."""
    return (images.float() / 255.0 - MEAN) / STD


def random_flip(
    images: torch.Tensor, masks: torch.Tensor | None, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Batch-wise random horizontal flip (the same flip for images and masks)."""
    flip = torch.rand(images.shape[0], generator=generator) < 0.5
    if flip.any():
        images = images.clone()
        images[flip] = images[flip].flip(-1)
        if masks is not None:
            masks = masks.clone()
            masks[flip] = masks[flip].flip(-1)
    return images, masks


def augmented_views(
    images: torch.Tensor, views: int, generator: torch.Generator, min_area: float = 0.4
) -> torch.Tensor:
    """The images and `views - 1` augmented copies of them: a random resized crop (`min_area` to
    100% of the area, aspect 3/4-4/3, so several scales), a random horizontal flip and a
    brightness/contrast jitter (±20%).

    Args:
        images: uint8 N×C×S×S.
        views: copies in all, the first the images themselves.
        generator: the augmentations' random source.
        min_area: the smallest crop, as a share of the image's area, in (0, 1].

    Returns:
        uint8 (views·N)×C×S×S, view by view.
    """
    out = [images]
    n = images.shape[0]
    for _ in range(views - 1):
        area = torch.empty(n).uniform_(min_area, 1.0, generator=generator)
        ratio = torch.exp(
            torch.empty(n).uniform_(math.log(3 / 4), math.log(4 / 3), generator=generator)
        )
        sx, sy = (area * ratio).sqrt().clamp(max=1), (area / ratio).sqrt().clamp(max=1)
        cx = (torch.rand(n, generator=generator) * 2 - 1) * (1 - sx)
        cy = (torch.rand(n, generator=generator) * 2 - 1) * (1 - sy)
        flip = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0)
        theta = torch.zeros(n, 2, 3)
        theta[:, 0, 0], theta[:, 0, 2] = sx * flip, cx
        theta[:, 1, 1], theta[:, 1, 2] = sy, cy
        x = images.float().to(images.device)
        grid = F.affine_grid(theta.to(x.device), list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
        contrast = torch.empty(n, 1, 1, 1).uniform_(0.8, 1.2, generator=generator).to(x.device)
        brightness = torch.empty(n, 1, 1, 1).uniform_(-0.2, 0.2, generator=generator).to(x.device)
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * contrast + mean + brightness * 255
        out.append(x.round().clamp(0, 255).to(torch.uint8))
    return torch.cat(out)
