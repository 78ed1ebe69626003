"""Shared encoders returning multi-scale features at strides 2, 4, 8 and 16."""

from collections.abc import Callable

from monai.networks.blocks import Convolution, ResidualUnit
from monai.networks.nets import ViT
import torch
from torch import nn
import torch.nn.functional as F

NORM = ("group", {"num_groups": 8})
Adapt = Callable[[int, torch.Tensor], torch.Tensor]


class CNNEncoder(nn.Module):
    """Residual CNN (MONAI blocks, GroupNorm so that no batch statistics travel between domains)."""

    def __init__(self, in_channels: int, widths: tuple[int, ...] = (32, 64, 128, 256)):
        super().__init__()
        self.widths = tuple(widths)
        self.stem = Convolution(
            2, in_channels, widths[0], strides=2, kernel_size=3, norm=NORM, act="GELU"
        )
        self.stages = nn.ModuleList(
            ResidualUnit(
                2,
                widths[i - 1],
                widths[i],
                strides=2,
                kernel_size=3,
                subunits=2,
                norm=NORM,
                act="GELU",
            )
            for i in range(1, len(widths))
        )

    def forward(self, x: torch.Tensor, adapt: Adapt | None = None) -> list[torch.Tensor]:
        """The pyramid (strides 2, 4, 8, 16); `adapt(level, features)` changes each level before
        the next one is computed from it (task-specific adapters)."""
        features = [self.stem(x)]
        for stage in self.stages:
            if adapt is not None:
                features[-1] = adapt(len(features) - 1, features[-1])
            features.append(stage(features[-1]))
        if adapt is not None:
            features[-1] = adapt(len(features) - 1, features[-1])
        return features


class ViTEncoder(nn.Module):
    """MONAI ViT for GPUs; hidden states of four depths are resampled into the same pyramid as the
    CNN's."""

    def __init__(
        self,
        in_channels: int,
        img_size: int,
        widths: tuple[int, ...],
        dim: int,
        depth: int,
        heads: int,
        patch: int,
    ):
        super().__init__()
        self.widths = tuple(widths)
        self.grid = img_size // patch
        self.vit = ViT(
            in_channels,
            img_size,
            patch,
            hidden_size=dim,
            mlp_dim=4 * dim,
            num_layers=depth,
            num_heads=heads,
            classification=False,
            spatial_dims=2,
        )
        self.taps = [max(0, round(depth * (i + 1) / len(widths)) - 1) for i in range(len(widths))]
        self.project = nn.ModuleList(nn.Conv2d(dim, w, 1) for w in widths)

    def forward(self, x: torch.Tensor, adapt: Adapt | None = None) -> list[torch.Tensor]:
        """The pyramid resampled from four depths; `adapt(level, features)` changes each output."""
        _, hidden = self.vit(x)
        size = x.shape[-1]
        out = []
        for level, (tap, proj) in enumerate(zip(self.taps, self.project, strict=True)):
            tokens = hidden[tap]
            grid = tokens.transpose(1, 2).reshape(tokens.shape[0], -1, self.grid, self.grid)
            out.append(
                proj(
                    F.interpolate(
                        grid, size=size // 2 ** (level + 1), mode="bilinear", align_corners=False
                    )
                )
            )
            if adapt is not None:
                out[-1] = adapt(level, out[-1])
        return out
