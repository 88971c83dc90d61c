"""Losses against a hand-written reference and analytic values."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from infnet_monai.losses import DeepSupervisionLoss, EdgeLoss, StructureLoss, boundary_weights


def reference_structure_loss(pred, mask):
    """Straight transcription of the paper's weighted BCE + weighted IoU, one sample at a time."""
    total = 0.0
    for p, m in zip(pred, mask):
        p, m = p[0].double(), m[0].double()
        h, w = m.shape
        padded = torch.zeros(h + 30, w + 30, dtype=torch.float64)
        padded[15:-15, 15:-15] = m
        local_mean = torch.empty_like(m)
        for i in range(h):
            for j in range(w):
                local_mean[i, j] = padded[i : i + 31, j : j + 31].sum() / 31**2
        weit = 1 + 5 * (local_mean - m).abs()
        s = 1 / (1 + torch.exp(-p))
        bce = -(m * torch.log(s) + (1 - m) * torch.log(1 - s))
        wbce = (weit * bce).sum() / weit.sum()
        inter = (s * m * weit).sum()
        union = ((s + m) * weit).sum()
        total += wbce + 1 - (inter + 1) / (union - inter + 1)
    return total / len(pred)


def test_structure_loss_matches_reference():
    g = torch.Generator().manual_seed(0)
    pred = torch.randn(3, 1, 20, 24, generator=g) * 3
    mask = (torch.rand(3, 1, 20, 24, generator=g) > 0.6).float()
    mask[2] = torch.rand(1, 20, 24, generator=g)  # a soft pseudo label
    pred.requires_grad_(True)
    loss = StructureLoss()(pred, mask)
    assert loss.item() == pytest.approx(reference_structure_loss(pred.detach(), mask).item(), rel=1e-5)
    loss.backward()
    assert torch.isfinite(pred.grad).all() and pred.grad.abs().sum() > 0


def test_structure_loss_analytic_values():
    # empty mask, logits 0: weights 1, wbce = ln 2, wiou = 1 - 1 / (0.5 * H * W + 1)
    pred, mask = torch.zeros(1, 1, 8, 10), torch.zeros(1, 1, 8, 10)
    assert StructureLoss()(pred, mask).item() == pytest.approx(math.log(2) + 1 - 1 / 41, rel=1e-6)
    # a near-perfect prediction costs almost nothing
    mask[..., 2:6, 3:7] = 1
    assert StructureLoss()((mask * 2 - 1) * 30, mask).item() == pytest.approx(0.0, abs=1e-6)


def test_boundary_weights_values():
    mask = torch.zeros(1, 1, 40, 40)
    mask[..., 10:30, 10:30] = 1
    w = boundary_weights(mask)
    assert w[0, 0, 20, 20].item() == pytest.approx(1 + 5 * (1 - 400 / 961))  # square inside the window
    assert w[0, 0, 10, 10].item() == pytest.approx(1 + 5 * (1 - 16 * 16 / 961))  # corner: 16x16 inside
    assert w[0, 0, 0, 0].item() == pytest.approx(1 + 5 * 6 * 6 / 961)  # outside, zero padding counted
    assert w.min().item() >= 1.0
    with pytest.raises(ValueError, match="odd"):
        boundary_weights(mask, kernel_size=30)


def test_deep_supervision_loss_sums_four_maps_and_edge():
    g = torch.Generator().manual_seed(1)
    outs = tuple(torch.randn(2, 1, 16, 16, generator=g, requires_grad=True) for _ in range(5))
    mask = (torch.rand(2, 1, 16, 16, generator=g) > 0.5).float()
    edge = (torch.rand(2, 1, 16, 16, generator=g) > 0.9).float()
    loss = DeepSupervisionLoss()(outs, torch.cat([mask, edge], dim=1))
    expected = sum(reference_structure_loss(o.detach(), mask) for o in outs[:4])
    expected = expected + F.binary_cross_entropy_with_logits(outs[4].detach().double(), edge.double())
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert EdgeLoss()(outs[4], edge).item() == pytest.approx(
        F.binary_cross_entropy_with_logits(outs[4], edge).item()
    )
    loss.backward()
    assert all(torch.isfinite(o.grad).all() and o.grad.abs().sum() > 0 for o in outs)


def test_deep_supervision_loss_rejects_bad_contract():
    loss = DeepSupervisionLoss()
    with pytest.raises(ValueError, match="training mode"):
        loss(torch.zeros(1, 1, 8, 8), torch.zeros(1, 2, 8, 8))
    with pytest.raises(ValueError, match="mask and edge"):
        loss(tuple(torch.zeros(1, 1, 8, 8) for _ in range(5)), torch.zeros(1, 1, 8, 8))


def test_boundary_weights_separable_pool_equals_the_31x31_pool():
    g = torch.Generator().manual_seed(2)
    mask = (torch.rand(2, 1, 50, 70, generator=g) > 0.5).float()
    mask[1] = torch.rand(1, 50, 70, generator=g)  # soft pseudo label
    direct = 1 + 5 * (F.avg_pool2d(mask, 31, stride=1, padding=15) - mask).abs()
    torch.testing.assert_close(boundary_weights(mask), direct, atol=1e-5, rtol=0)  # float32 rounding x 5
    assert not boundary_weights(mask.requires_grad_()).requires_grad  # a target-only weight map
