"""Multiply-accumulate (MAC) count of a network's convolutions and matrix products, from
``torch.utils.flop_counter`` (which counts 2 FLOPs per MAC)."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

__all__ = ["count_macs"]


def count_macs(model: nn.Module, input_shape: Sequence[int]) -> int:
    """MACs of one forward pass in eval mode on a zero tensor of ``input_shape`` (batch
    included): convolutions (out elements × in/groups × kernel area) and matrix products;
    element-wise work (BatchNorm, activations, interpolation) is not counted. FLOPs ≈ 2 × MACs."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    try:
        model.eval()
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(torch.zeros(*input_shape))
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2
