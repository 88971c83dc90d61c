"""Multiply-accumulate (MAC) count of a network's convolutions and linear layers."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

__all__ = ["count_macs"]


def count_macs(model: nn.Module, input_shape: Sequence[int]) -> int:
    """MACs of one forward pass on a zero tensor of ``input_shape`` (batch included), counting
    ``Conv2d`` (out elements × in/groups × kernel area) and ``Linear`` layers; element-wise work
    (BatchNorm, activations, interpolation) is not counted. FLOPs ≈ 2 × MACs."""
    total = 0

    def conv_hook(mod: nn.Conv2d, _inp, out: torch.Tensor) -> None:
        nonlocal total
        kh, kw = mod.kernel_size
        total += out.numel() * (mod.in_channels // mod.groups) * kh * kw

    def linear_hook(mod: nn.Linear, _inp, out: torch.Tensor) -> None:
        nonlocal total
        total += out.numel() * mod.in_features

    handles = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(*input_shape))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return total
