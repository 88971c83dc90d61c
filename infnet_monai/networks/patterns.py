"""Infection patterns on a slice: the paper's multi-class pipeline as one network (Sec. III-D).

The binary Inf-Net's infection probability is the prior of the multi-class UNet
(:class:`~infnet_monai.networks.unet.InfNetUNet`), prepared as the training slices' priors are
(:func:`~infnet_monai.transforms.train2d.multiclass_slice_transforms`: [0, 1], repeated to three
channels, ImageNet-normalised) and concatenated to the slice: ``(B, 3, H, W)`` network input ->
``(B, 3, H, W)`` logits of background, ground-glass opacity (GGO) and consolidation.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["InfectionPatternNetwork"]

class InfectionPatternNetwork(nn.Module):
    """Inf-Net prior + UNet: ``(B, 3, H, W)`` ImageNet-normalised slices -> class logits
    ``(B, 3, H, W)`` (background, GGO, consolidation). H and W divisible by 32."""

    def __init__(self, infection: nn.Module, unet: nn.Module) -> None:
        super().__init__()
        self.infection = infection
        self.unet = unet

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from infnet_monai.transforms.chain import network_input_batch

        logits = self.infection(x)
        if isinstance(logits, (tuple, list)):  # a training-mode Inf-Net: its final map is map2
            logits = logits[3]
        prior = network_input_batch(torch.sigmoid(logits.float()))
        return self.unet(torch.cat([x, prior.to(x.dtype)], dim=1).contiguous(memory_format=torch.channels_last))
