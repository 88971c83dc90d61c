"""Inf-Net training losses: weighted structure loss, edge loss and their deep-supervision sum.

All losses take raw logits. Shapes: predictions and targets are (B, 1, H, W) float tensors;
targets may be soft (pseudo labels in [0, 1]).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch.nn.modules.loss import _Loss

__all__ = ["StructureLoss", "EdgeLoss", "DeepSupervisionLoss", "boundary_weights"]


def boundary_weights(mask: torch.Tensor, kernel_size: int = 31, boundary_gain: float = 5.0) -> torch.Tensor:
    """Pixel weights ``1 + gain * |avg_pool(mask) - mask|`` (B, 1, H, W): large near mask boundaries.

    The average pool has stride 1 and zero padding ``kernel_size // 2`` (padding counted in the
    mean, as in the authors' code), so the output has the mask's size. It runs as two 1D pools
    (a box filter is separable: the same values up to float rounding, 2k instead of k² additions
    per pixel; the 31×31 pool was a third of a CPU training step). No gradient flows to ``mask``.
    """
    if kernel_size % 2 != 1:
        raise ValueError(f"kernel_size must be odd to keep the mask size, got {kernel_size}")
    pad = kernel_size // 2
    with torch.no_grad():
        local_mean = F.avg_pool2d(mask, kernel_size=(kernel_size, 1), stride=1, padding=(pad, 0))
        local_mean = F.avg_pool2d(local_mean, kernel_size=(1, kernel_size), stride=1, padding=(0, pad))
        return 1.0 + boundary_gain * torch.abs(local_mean - mask)


class StructureLoss(_Loss):
    """Weighted BCE + weighted IoU on logits (Inf-Net's joint loss, Fan et al. 2020, eq. 6-7).

    ``wbce = sum(w * bce) / sum(w)`` and ``wiou = 1 - (inter + 1) / (union - inter + 1)`` per
    sample, with ``inter = sum(sigmoid(pred) * mask * w)``, ``union = sum((sigmoid(pred) + mask) * w)``
    and ``w = boundary_weights(mask)``; the loss is the batch mean of ``wbce + wiou``.

    Args:
        kernel_size: side (pixels) of the average pool that finds boundary regions.
        boundary_gain: extra weight at boundaries (5 in the paper).
    """

    def __init__(self, kernel_size: int = 31, boundary_gain: float = 5.0) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.boundary_gain = boundary_gain

    def forward(self, pred: torch.Tensor, mask: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        """pred: logits (B, 1, H, W); mask: target in [0, 1] (B, 1, H, W); ``weights``: the mask's
        :func:`boundary_weights` when already computed (deep supervision shares them over its
        maps). Returns a scalar."""
        if pred.shape != mask.shape:
            raise ValueError(f"prediction {tuple(pred.shape)} and mask {tuple(mask.shape)} must have the same shape")
        mask = mask.to(pred.dtype)
        weit = boundary_weights(mask, self.kernel_size, self.boundary_gain) if weights is None else weights
        dims = tuple(range(2, pred.ndim))
        bce = F.binary_cross_entropy_with_logits(pred, mask, reduction="none")
        wbce = (weit * bce).sum(dim=dims) / weit.sum(dim=dims)
        prob = torch.sigmoid(pred)
        inter = (prob * mask * weit).sum(dim=dims)
        union = ((prob + mask) * weit).sum(dim=dims)
        wiou = 1.0 - (inter + 1.0) / (union - inter + 1.0)
        return (wbce + wiou).mean()


class EdgeLoss(_Loss):
    """Binary cross entropy with logits between the edge map and the edge target (B, 1, H, W)."""

    def forward(self, pred: torch.Tensor, edge: torch.Tensor) -> torch.Tensor:
        if pred.shape != edge.shape:
            raise ValueError(f"edge prediction {tuple(pred.shape)} and edge target {tuple(edge.shape)} differ in shape")
        return F.binary_cross_entropy_with_logits(pred, edge.to(pred.dtype))


class DeepSupervisionLoss(_Loss):
    """Inf-Net's total loss over its five outputs: structure loss on four maps + edge loss.

    Contract with the trainer: ``pred`` is the network's training output
    ``(map5, map4, map3, map2, edge)``, each (B, 1, H, W) logits; ``target`` is (B, 2, H, W) with
    the infection mask in channel ``mask_channel`` and the edge target in ``edge_channel``
    (the training transforms concatenate ``label`` and ``edge`` into that tensor).

    Args:
        map_weights: weight of the structure loss of each segmentation map, in output order.
        edge_weight: weight of the edge loss.
        mask_channel, edge_channel: channels of ``target`` holding the mask and the edge.
        kernel_size, boundary_gain: passed to :class:`StructureLoss`.
    """

    def __init__(
        self,
        map_weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
        edge_weight: float = 1.0,
        mask_channel: int = 0,
        edge_channel: int = 1,
        kernel_size: int = 31,
        boundary_gain: float = 5.0,
    ) -> None:
        super().__init__()
        self.map_weights = tuple(float(w) for w in map_weights)
        self.edge_weight = float(edge_weight)
        self.mask_channel = mask_channel
        self.edge_channel = edge_channel
        self.structure = StructureLoss(kernel_size, boundary_gain)
        self.edge = EdgeLoss()

    def forward(self, pred: Sequence[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        """pred: (map5, map4, map3, map2, edge) logits; target: (B, 2, H, W) mask + edge."""
        if isinstance(pred, torch.Tensor) or len(pred) != len(self.map_weights) + 1:
            raise ValueError(
                f"expected {len(self.map_weights) + 1} network outputs (segmentation maps then the edge map); "
                "put the network in training mode or call it with return_all=True"
            )
        if target.ndim < 3 or target.shape[1] < 2:
            raise ValueError(f"target must be (B, 2, H, W) with mask and edge channels, got {tuple(target.shape)}")
        *maps, edge_pred = pred
        mask = target[:, self.mask_channel : self.mask_channel + 1].to(maps[0].dtype)
        edge = target[:, self.edge_channel : self.edge_channel + 1]
        weights = boundary_weights(mask, self.structure.kernel_size, self.structure.boundary_gain)
        loss = self.edge_weight * self.edge(edge_pred, edge)
        for weight, seg in zip(self.map_weights, maps):
            loss = loss + weight * self.structure(seg, mask, weights)
        return loss
