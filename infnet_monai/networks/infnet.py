"""Inf-Net: Res2Net-50 encoder, RFB modules, parallel partial decoder, edge attention and
three reverse-attention branches with deep supervision (Fan et al., IEEE TMI 2020)."""

from __future__ import annotations

from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import EdgeAttention, PartialDecoder, ReceptiveFieldBlock, ReverseAttention
from .res2net import Res2Net50

__all__ = ["InfNet"]

InfNetOutputs = Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def _resize(x: torch.Tensor, scale: float) -> torch.Tensor:
    return F.interpolate(x, scale_factor=scale, mode="bilinear")


class InfNet(nn.Module):
    """Inf-Net for binary lung-infection segmentation of 2D CT slices.

    Input ``(B, 1 or 3, H, W)`` with ``H`` and ``W`` divisible by 32 (352×352 in the paper);
    a single channel is repeated to three. Returns logits (apply a sigmoid for probabilities):

    - training mode, or ``return_all=True``: the five deep-supervision maps at input size
      ``(map5, map4, map3, map2, edge)``, each ``(B, out_channels, H, W)``: the partial
      decoder's global map, the three reverse-attention outputs (coarse to fine) and the edge map;
    - eval mode: only the final map ``map2`` ``(B, out_channels, H, W)``, so MONAI inferers,
      ``SupervisedEvaluator`` and MONAI Label can use the network unchanged.

    Args:
        out_channels: output channels of every map (1 for binary infection).
        channels: width of the RFB outputs and the partial decoder (32).
        pretrained_backbone: optional path of a Res2Net-50 v1b 26w×4s ImageNet checkpoint
            (``res2net50_v1b_26w_4s-3cf99910.pth``) loaded into the encoder.

    31,072,721 parameters; about 13.9 G multiply-accumulates per 352×352 slice.
    """

    def __init__(self, out_channels: int = 1, channels: int = 32, pretrained_backbone: Optional[str] = None) -> None:
        super().__init__()
        self.backbone = Res2Net50()
        self.rfb2 = ReceptiveFieldBlock(512, channels)
        self.rfb3 = ReceptiveFieldBlock(1024, channels)
        self.rfb4 = ReceptiveFieldBlock(2048, channels)
        self.partial_decoder = PartialDecoder(channels, out_channels)
        self.reverse_attention4 = ReverseAttention(2048, 256, out_channels, 5, 3, predict_kernel_size=1)
        self.reverse_attention3 = ReverseAttention(1024, 64, out_channels, 3, 2, predict_kernel_size=3)
        self.reverse_attention2 = ReverseAttention(512, 64, out_channels, 3, 2, predict_kernel_size=3)
        self.edge_attention = EdgeAttention(256, out_channels)
        if pretrained_backbone:
            from .convert import load_res2net_imagenet

            load_res2net_imagenet(self.backbone, pretrained_backbone)

    def forward_all(self, x: torch.Tensor) -> InfNetOutputs:
        """All five logit maps ``(map5, map4, map3, map2, edge)`` at input size."""
        if x.dim() != 4 or x.shape[1] not in (1, 3):
            raise ValueError(
                "InfNet expects input (B, 1 or 3, H, W), got shape " + str(list(x.shape))
                + "; give a 1-channel CT slice or its 3-channel repetition"
            )
        if x.shape[2] % 32 != 0 or x.shape[3] % 32 != 0:
            raise ValueError(
                "InfNet needs H and W divisible by 32, got " + str(list(x.shape[2:]))
                + "; resize the slices (e.g. to 352x352)"
            )
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x1, x2, x3, x4 = self.backbone(x)
        edge_guidance, edge = self.edge_attention(x1)
        global_map = self.partial_decoder(self.rfb4(x4), self.rfb3(x3), self.rfb2(x2))  # stride 8

        prior4 = _resize(global_map, 0.25)  # stride 32
        out4 = self.reverse_attention4(x4, prior4, _resize(edge_guidance, 1 / 8))
        prior3 = _resize(out4, 2.0)  # stride 16
        out3 = self.reverse_attention3(x3, prior3, _resize(edge_guidance, 1 / 4))
        prior2 = _resize(out3, 2.0)  # stride 8
        out2 = self.reverse_attention2(x2, prior2, _resize(edge_guidance, 1 / 2))
        return (
            _resize(global_map, 8.0),
            _resize(out4, 32.0),
            _resize(out3, 16.0),
            _resize(out2, 8.0),
            _resize(edge, 4.0),
        )

    def forward(self, x: torch.Tensor, return_all: bool = False) -> Union[torch.Tensor, InfNetOutputs]:
        outputs = self.forward_all(x)
        if self.training or return_all:
            return outputs
        return outputs[3]
