"""Task heads on the encoder's features: pooled linear classifier and a U-Net style decoder."""

from monai.networks.blocks import Convolution
import torch
from torch import nn
import torch.nn.functional as F

from meduniverse.models.encoder import NORM


class ClassificationHead(nn.Module):
    """Global average pool of the two deepest levels, then a linear layer to the task's logits."""

    def __init__(self, widths: tuple[int, ...], num_outputs: int, dropout: float = 0.1):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(widths[-1] + widths[-2], num_outputs)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        pooled = torch.cat([features[-1].mean((-2, -1)), features[-2].mean((-2, -1))], dim=1)
        return self.linear(self.dropout(pooled))


class DecoderHead(nn.Module):
    """Decoder over the encoder's multi-scale features (skip connections), back to full resolution.

    Used per segmentation task (per-pixel logits) and as the MIM pixel decoder.
    """

    def __init__(self, widths: tuple[int, ...], num_outputs: int, channels: int = 32):
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(w, channels, 1) for w in widths)
        self.fuse = nn.ModuleList(
            Convolution(2, channels, channels, kernel_size=3, norm=NORM, act="GELU")
            for _ in widths[:-1]
        )
        self.out = nn.Conv2d(channels, num_outputs, 1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = self.lateral[-1](features[-1])
        for level in range(len(features) - 2, -1, -1):
            skip = self.lateral[level](features[level])
            x = F.interpolate(x, size=skip.shape[-2:], mode="nearest") + skip
            x = self.fuse[level](x)
        # logits at stride 2, then upsampled: 16x cheaper on CPU than upsampling the 32 feature
        # channels
        return F.interpolate(self.out(x), scale_factor=2, mode="bilinear", align_corners=False)
