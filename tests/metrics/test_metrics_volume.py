"""Volume metrics in mm: analytic phantoms, an independent scipy check, empty-mask policy, grids."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from scipy import ndimage

from infnet_monai.metrics.volume import (
    BOTH_EMPTY_DICE,
    BOTH_EMPTY_DISTANCE_MM,
    BOTH_EMPTY_NSD,
    EMPTY_MASK_POLICY,
    ONE_EMPTY_DICE,
    ONE_EMPTY_NSD,
    binary_volume_metrics,
    label_volume_metrics,
    match_label_grid,
    spacing_mm,
    summarise_volume_metrics,
)

SPACING = (0.7, 0.9, 2.0)  # mm, anisotropic like a thick-slice CT


def _ball(shape, spacing, radius_mm, centre=None):
    """Voxels whose centre lies within ``radius_mm`` of ``centre`` (voxel coordinates)."""
    idx = np.indices(shape).astype(np.float64)
    centre = [(s - 1) / 2 for s in shape] if centre is None else centre
    dist2 = sum(((idx[i] - centre[i]) * spacing[i]) ** 2 for i in range(len(shape)))
    return dist2 <= radius_mm**2


@pytest.mark.parametrize("radius, gap", [(10.0, 5.0), (8.3, 4.1)])
def test_concentric_spheres_give_the_gap_in_mm(radius, gap):
    inner = _ball((56, 48, 24), SPACING, radius)
    outer = _ball((56, 48, 24), SPACING, radius + gap)
    # Edge voxels of a digitised sphere lie within one voxel step (at most the largest spacing,
    # h = 2.0 mm) inside the true surface, so no edge-to-edge distance is below gap - h, and each is
    # at most gap + h + half a voxel diagonal (1.15 mm < h): HD95 within h of the gap. Both spheres
    # are digitised the same way, so the inward biases largely cancel in the mean: ASD within h / 2.
    h = max(SPACING)
    m = binary_volume_metrics(inner, outer, SPACING, tolerance_mm=gap - h - 1e-3)
    assert m.asd_mm == pytest.approx(gap, abs=h / 2)
    assert m.hd95_mm == pytest.approx(gap, abs=h)
    assert m.asd_mm <= m.hd95_mm
    assert m.empty == "none"
    assert m.nsd == 0.0  # no boundary point within gap - h of the other
    assert binary_volume_metrics(inner, outer, SPACING, tolerance_mm=gap + 2 * h).nsd == 1.0
    # Dice = |inner| / (|inner| + |outer|) * 2 since inner is inside outer
    assert m.dice == pytest.approx(2 * inner.sum() / (inner.sum() + outer.sum()), abs=1e-6)


def test_shifted_cubes_dice_by_hand():
    pred = np.zeros((20, 20, 10), bool)
    label = np.zeros_like(pred)
    pred[4:10, 4:10, 2:8] = True  # 6x6x6 = 216 voxels
    label[6:12, 4:10, 2:8] = True  # shifted 2 voxels along axis 0: overlap 4x6x6 = 144
    m = binary_volume_metrics(pred, label, SPACING)
    assert m.dice == pytest.approx(2 * 144 / (216 + 216), abs=1e-7)  # = 2/3
    voxel_ml = 0.7 * 0.9 * 2.0 / 1000
    assert m.pred_ml == pytest.approx(216 * voxel_ml) and m.label_ml == pytest.approx(216 * voxel_ml)
    # the two faces normal to axis 0 are 2 voxels = 1.4 mm apart; no edge point is farther
    assert 0.0 < m.asd_mm < m.hd95_mm <= 1.4 + 1e-5


def _edt_surface_distances(pred, label, spacing):
    """Independent reference: surface = mask XOR eroded mask, EDT with ``sampling=spacing``."""
    surf_p = pred ^ ndimage.binary_erosion(pred)
    surf_l = label ^ ndimage.binary_erosion(label)
    to_label = ndimage.distance_transform_edt(~surf_l, sampling=spacing)[surf_p]
    to_pred = ndimage.distance_transform_edt(~surf_p, sampling=spacing)[surf_l]
    return to_label, to_pred


def test_random_blob_agrees_with_scipy_edt():
    rng = np.random.default_rng(0)
    shape = (48, 48, 16)
    noise = ndimage.gaussian_filter(rng.standard_normal(shape), sigma=(3, 3, 1.5))
    inner = np.zeros(shape, bool)
    inner[4:-4, 4:-4, 2:-2] = True  # keep the blobs off the volume border
    label = (noise > 0.05) & inner
    pred = ndimage.binary_dilation(label, iterations=1) ^ ((noise > 0.25) & inner)  # hole + grown rim
    pred = np.roll(pred, 1, axis=1) & inner
    assert label.any() and pred.any()
    to_label, to_pred = _edt_surface_distances(pred, label, SPACING)
    asd = np.concatenate([to_label, to_pred]).mean()
    hd95 = max(np.percentile(to_label, 95), np.percentile(to_pred, 95))
    nsd = ((to_label <= 3.0).sum() + (to_pred <= 3.0).sum()) / (to_label.size + to_pred.size)
    m = binary_volume_metrics(pred, label, SPACING, tolerance_mm=3.0)
    assert m.asd_mm == pytest.approx(asd, rel=1e-5)
    assert m.hd95_mm == pytest.approx(hd95, rel=1e-5)
    assert m.nsd == pytest.approx(nsd, rel=1e-6)
    assert m.dice == pytest.approx(2 * (pred & label).sum() / (pred.sum() + label.sum()), rel=1e-6)


def test_empty_mask_policy_and_summary_never_nan():
    full = np.zeros((12, 12, 6), bool)
    full[3:8, 3:8, 1:4] = True
    shifted = np.roll(full, 1, axis=0)
    empty = np.zeros_like(full)

    both = binary_volume_metrics(empty, empty, SPACING)
    assert (both.dice, both.asd_mm, both.hd95_mm, both.nsd, both.empty) == (
        BOTH_EMPTY_DICE, BOTH_EMPTY_DISTANCE_MM, BOTH_EMPTY_DISTANCE_MM, BOTH_EMPTY_NSD, "both"
    ) == (1.0, 0.0, 0.0, 1.0, "both")
    missed = binary_volume_metrics(empty, full, SPACING)  # prediction empty, label not
    assert (missed.dice, missed.nsd, missed.empty) == (ONE_EMPTY_DICE, ONE_EMPTY_NSD, "pred") == (0.0, 0.0, "pred")
    assert math.isinf(missed.asd_mm) and math.isinf(missed.hd95_mm)
    assert binary_volume_metrics(full, empty, SPACING).empty == "label"

    normal = binary_volume_metrics(shifted, full, SPACING)
    summary = summarise_volume_metrics([normal, missed, both])
    assert (summary["n"], summary["n_one_empty"], summary["n_both_empty"]) == (3, 1, 1)
    assert summary["dice"]["mean"] == pytest.approx((normal.dice + 0.0 + 1.0) / 3)
    hd = summary["hd95_mm"]
    assert math.isinf(hd["mean"]) and math.isinf(hd["std"])  # the one-empty case is not dropped
    assert (hd["n_inf"], hd["n_finite"]) == (1, 2)
    assert hd["finite_mean"] == pytest.approx((normal.hd95_mm + 0.0) / 2)
    assert hd["median"] == pytest.approx(normal.hd95_mm)  # sorted: 0, hd, inf
    flat = [v for entry in summary.values() if isinstance(entry, dict) for v in entry.values()]
    assert not any(isinstance(v, float) and math.isnan(v) for v in flat)
    assert "exactly one empty" in EMPTY_MASK_POLICY and "inf" in EMPTY_MASK_POLICY


def test_per_class_metrics_split_label_values():
    label = np.zeros((16, 16, 6), np.uint8)
    label[2:6, 2:6, 1:5] = 1
    label[9:13, 9:13, 1:5] = 2
    pred = label.copy()
    pred[9:13, 9:13, 1:5] = 0  # class 2 missed entirely
    result = label_volume_metrics(pred, label, [1, 2], SPACING)
    assert result[1].dice == pytest.approx(1.0) and result[1].hd95_mm == 0.0
    assert result[2].dice == 0.0 and result[2].empty == "pred" and math.isinf(result[2].asd_mm)


def _meta(array, spacing, origin=(0.0, 0.0, 0.0)):
    affine = torch.eye(4, dtype=torch.float64)
    affine[:3, :3] = torch.diag(torch.tensor(spacing, dtype=torch.float64))
    affine[:3, 3] = torch.tensor(origin, dtype=torch.float64)
    return MetaTensor(torch.as_tensor(array, dtype=torch.float32), affine=affine)


def test_geometry_mismatch_raises_and_resampling_restores_the_mask():
    pred = np.zeros((32, 32, 8), np.float32)
    pred[8:24, 8:24, 2:6] = 1
    # the same physical box on a 2 mm in-plane grid whose voxel j is centred at 0.5 + 2 j mm:
    # prediction voxel i (centre i mm) falls in label voxel round((i - 0.5) / 2), never on a tie
    label = np.zeros((16, 16, 8), np.float32)
    label[4:12, 4:12, 2:6] = 1
    pred_img = _meta(pred, (1.0, 1.0, 2.0))
    label_img = _meta(label, (2.0, 2.0, 2.0), origin=(0.5, 0.5, 0.0))
    assert spacing_mm(label_img) == (2.0, 2.0, 2.0)
    with pytest.raises(ValueError, match=r"pred\.nii\.gz and lab\.nii\.gz .*--resample-label"):
        match_label_grid(pred_img, label_img, pred_name="pred.nii.gz", label_name="lab.nii.gz")
    resampled = match_label_grid(pred_img, label_img, resample_label=True)
    assert tuple(resampled.shape) == pred.shape
    np.testing.assert_array_equal(np.asarray(resampled), pred)
    # the same grid passes through untouched, within the affine tolerance
    nudged = _meta(pred, (1.0, 1.0, 2.0 + 5e-5))
    assert match_label_grid(pred_img, nudged) is nudged


def test_grid_message_names_what_differs_and_resampling_never_drops_label():
    pred = _meta(np.zeros((16, 16, 10), np.float32), (1.0, 1.0, 2.0))
    label = np.zeros((16, 16, 12), np.float32)
    label[4:12, 4:12, 8:12] = 1  # half of it on the two slices the prediction does not cover
    label_img = _meta(label, (1.0, 1.0, 2.0))
    with pytest.raises(ValueError) as err:
        match_label_grid(pred, label_img, pred_name="p.nii.gz", label_name="l.nii.gz")
    message = str(err.value)
    assert "(shape (16, 16, 10) vs (16, 16, 12));" in message and "affine" not in message
    assert "resample_label=True" not in message and message.endswith("by nearest neighbour")
    with pytest.raises(ValueError, match=r"l\.nii\.gz: 50\.0 % of its labelled volume lies outside the grid of p\.nii\.gz"):
        match_label_grid(pred, label_img, resample_label=True, pred_name="p.nii.gz", label_name="l.nii.gz")
    shifted = _meta(np.zeros((16, 16, 10), np.float32), (1.0, 1.0, 2.0), origin=(0.0, 0.0, 0.3))
    with pytest.raises(ValueError, match=r"\(affines differ by up to 0\.3 mm\)"):
        match_label_grid(pred, shifted)


def test_prediction_outside_the_labels_field_of_view_is_refused():
    label = _meta(np.zeros((16, 16, 10), np.float32), (1.0, 1.0, 2.0))
    pred = np.zeros((16, 16, 12), np.float32)
    pred[4:12, 4:12, 9:12] = 1  # two of its three slices beyond the label's last slice
    with pytest.raises(ValueError, match=r"p\.nii\.gz: 66\.7 % of its predicted voxels lie outside the field of view of l\.nii\.gz"):
        match_label_grid(_meta(pred, (1.0, 1.0, 2.0)), label, resample_label=True, pred_name="p.nii.gz", label_name="l.nii.gz")
