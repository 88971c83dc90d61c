"""Building blocks of Inf-Net (Fan et al., IEEE TMI 2020).

- :class:`ConvBN`: convolution + BatchNorm, no activation (the reference "BasicConv2d").
- :class:`ReceptiveFieldBlock`: RFB-like multi-branch context module, C_in -> C channels.
- :class:`PartialDecoder`: parallel partial decoder aggregating the three high-level
  RFB outputs (strides 32, 16, 8) into a coarse global map at stride 8.
- :class:`EdgeAttention`: edge branch on the stage-1 features; returns the 64-channel edge
  guidance and the edge logits (stride 4).
- :class:`ReverseAttention`: erases the current prediction from a backbone feature
  (``1 - sigmoid(prior)``), fuses edge guidance and predicts a residual on the prior.
"""

from __future__ import annotations

from typing import Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ConvBN", "ReceptiveFieldBlock", "PartialDecoder", "EdgeAttention", "ReverseAttention"]

_Size = Union[int, Tuple[int, int]]


class ConvBN(nn.Sequential):
    """``Conv2d(bias=False)`` followed by ``BatchNorm2d``; shapes ``(B, C_in, H, W) -> (B, C_out, H', W')``."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: _Size, padding: _Size = 0, dilation: int = 1
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size=kernel_size, padding=padding, dilation=dilation, bias=False
        )
        self.bn = nn.BatchNorm2d(out_channels)


def _separable_branch(in_channels: int, channels: int, k: int) -> nn.Sequential:
    """1×1 reduction, 1×k and k×1 convolutions, then a 3×3 convolution dilated by k."""
    return nn.Sequential(
        ConvBN(in_channels, channels, 1),
        ConvBN(channels, channels, (1, k), padding=(0, k // 2)),
        ConvBN(channels, channels, (k, 1), padding=(k // 2, 0)),
        ConvBN(channels, channels, 3, padding=k, dilation=k),
    )


class ReceptiveFieldBlock(nn.Module):
    """RFB-like module: four branches (1×1; k = 3, 5, 7 separable + dilated), concatenated,
    fused by a 3×3 conv and added to a 1×1 shortcut, then ReLU. ``(B, C_in, H, W) -> (B, C, H, W)``."""

    def __init__(self, in_channels: int, channels: int) -> None:
        super().__init__()
        self.relu = nn.ReLU(True)
        self.branch0 = nn.Sequential(ConvBN(in_channels, channels, 1))
        self.branch1 = _separable_branch(in_channels, channels, 3)
        self.branch2 = _separable_branch(in_channels, channels, 5)
        self.branch3 = _separable_branch(in_channels, channels, 7)
        self.conv_cat = ConvBN(4 * channels, channels, 3, padding=1)
        self.conv_res = ConvBN(in_channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_cat = self.conv_cat(torch.cat((self.branch0(x), self.branch1(x), self.branch2(x), self.branch3(x)), 1))
        return self.relu(x_cat + self.conv_res(x))


class PartialDecoder(nn.Module):
    """Parallel partial decoder.

    Inputs ``x4 (B, C, H/32, W/32)``, ``x3 (B, C, H/16, W/16)``, ``x2 (B, C, H/8, W/8)``;
    output the global map logits ``(B, out_channels, H/8, W/8)``.
    """

    def __init__(self, channels: int, out_channels: int) -> None:
        super().__init__()
        self.relu = nn.ReLU(True)
        self.upsample = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)
        self.conv_upsample1 = ConvBN(channels, channels, 3, padding=1)
        self.conv_upsample2 = ConvBN(channels, channels, 3, padding=1)
        self.conv_upsample3 = ConvBN(channels, channels, 3, padding=1)
        self.conv_upsample4 = ConvBN(channels, channels, 3, padding=1)
        self.conv_upsample5 = ConvBN(2 * channels, 2 * channels, 3, padding=1)
        self.conv_concat2 = ConvBN(2 * channels, 2 * channels, 3, padding=1)
        self.conv_concat3 = ConvBN(3 * channels, 3 * channels, 3, padding=1)
        self.conv4 = ConvBN(3 * channels, 3 * channels, 3, padding=1)
        self.conv5 = nn.Conv2d(3 * channels, out_channels, 1)

    def forward(self, x4: torch.Tensor, x3: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        up = self.upsample
        x3_1 = self.conv_upsample1(up(x4)) * x3
        x2_1 = self.conv_upsample2(up(up(x4))) * self.conv_upsample3(up(x3)) * x2
        x3_2 = self.conv_concat2(torch.cat((x3_1, self.conv_upsample4(up(x4))), 1))
        x2_2 = self.conv_concat3(torch.cat((x2_1, self.conv_upsample5(up(x3_2))), 1))
        return self.conv5(self.conv4(x2_2))


class EdgeAttention(nn.Module):
    """Edge branch on the stage-1 features ``(B, C_in, H/4, W/4)``.

    Returns the edge guidance ``(B, 64, H/4, W/4)`` fed to every reverse-attention branch and
    the edge logits ``(B, out_channels, H/4, W/4)`` supervised by the edge target.
    """

    def __init__(self, in_channels: int, out_channels: int, channels: int = 64) -> None:
        super().__init__()
        self.reduce = ConvBN(in_channels, channels, 1)
        self.refine = nn.Sequential(ConvBN(channels, channels, 3, padding=1), ConvBN(channels, channels, 3, padding=1))
        self.predict = ConvBN(channels, out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        guidance = self.refine(self.reduce(x))
        return guidance, self.predict(guidance)


class ReverseAttention(nn.Module):
    """Reverse attention with edge guidance.

    ``feature (B, C_in, h, w)`` is weighted by ``1 - sigmoid(prior)`` (``prior (B, 1, h, w)``
    logits), reduced to ``mid_channels`` by a 1×1 conv, concatenated with the edge guidance
    ``(B, edge_channels, h, w)``, refined by ``num_refine`` ReLU convolutions, and mapped to a
    residual added to ``prior``. Returns refined logits ``(B, out_channels, h, w)``.
    """

    def __init__(
        self,
        in_channels: int,
        mid_channels: int,
        out_channels: int,
        kernel_size: int,
        num_refine: int,
        predict_kernel_size: int,
        edge_channels: int = 64,
    ) -> None:
        super().__init__()
        pad = kernel_size // 2
        self.reduce = ConvBN(in_channels, mid_channels, 1)
        self.refine = nn.ModuleList(
            ConvBN(mid_channels + (edge_channels if i == 0 else 0), mid_channels, kernel_size, padding=pad)
            for i in range(num_refine)
        )
        self.predict = ConvBN(mid_channels, out_channels, predict_kernel_size, padding=predict_kernel_size // 2)

    def forward(self, feature: torch.Tensor, prior: torch.Tensor, edge: torch.Tensor) -> torch.Tensor:
        reverse = -1 * torch.sigmoid(prior) + 1
        x = torch.cat((self.reduce(reverse * feature), edge), dim=1)
        for conv in self.refine:
            x = F.relu(conv(x))
        return self.predict(x) + prior
