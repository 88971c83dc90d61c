"""Multi-class Inf-Net + UNet (Fan et al., IEEE TMI 2020, Sec. III-D): a UNet on the CT slice
concatenated with the Inf-Net infection prior, predicting background / GGO / consolidation."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["InfNetUNet", "DoubleConv"]


class DoubleConv(nn.Sequential):
    """(3×3 conv + bias → BatchNorm → ReLU) × 2; ``(B, C_in, H, W) -> (B, C_out, H, W)``."""

    def __init__(self, in_channels: int, out_channels: int, mid_channels: int = 0) -> None:
        mid = mid_channels or out_channels
        super().__init__(
            nn.Conv2d(in_channels, mid, kernel_size=3, padding=1),
            nn.BatchNorm2d(mid),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid, out_channels, kernel_size=3, padding=1),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class _Down(nn.Module):
    """2×2 max pooling then :class:`DoubleConv`; halves H and W."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.pool = nn.MaxPool2d(2)
        self.conv = DoubleConv(in_channels, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.pool(x))


class _Up(nn.Module):
    """Bilinear ×2 upsampling (align_corners), pad to the skip's size, concat [skip, up], DoubleConv."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)
        self.conv = DoubleConv(in_channels, out_channels, in_channels // 2)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up(x)
        dy = skip.shape[2] - x.shape[2]
        dx = skip.shape[3] - x.shape[3]
        x = F.pad(x, [dx // 2, dx - dx // 2, dy // 2, dy - dy // 2])
        return self.conv(torch.cat([skip, x], dim=1))


class InfNetUNet(nn.Module):
    """UNet (bilinear decoder) for multi-class infection segmentation.

    Input ``(B, in_channels, H, W)``: by default 6 channels, the 3-channel normalised slice and
    the 3-channel infection prior (Inf-Net probability map repeated). Output logits
    ``(B, out_channels, H, W)`` for background, ground-glass opacity, consolidation.
    H and W divisible by 16.
    """

    def __init__(self, in_channels: int = 6, out_channels: int = 3) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.inc = DoubleConv(in_channels, 64)
        self.down1 = _Down(64, 128)
        self.down2 = _Down(128, 256)
        self.down3 = _Down(256, 512)
        self.down4 = _Down(512, 512)
        self.up1 = _Up(1024, 256)
        self.up2 = _Up(512, 128)
        self.up3 = _Up(256, 64)
        self.up4 = _Up(128, 64)
        self.outc = nn.Conv2d(64, out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                "InfNetUNet expects input (B, " + str(self.in_channels) + ", H, W) (slice + infection prior), got "
                + str(list(x.shape))
            )
        x1 = self.inc(x)
        x2 = self.down1(x1)
        x3 = self.down2(x2)
        x4 = self.down3(x3)
        x = self.up1(self.down4(x4), x4)
        x = self.up2(x, x3)
        x = self.up3(x, x2)
        x = self.up4(x, x1)
        return self.outc(x)
