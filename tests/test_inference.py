"""Volume inference geometry: masks come back on the input grid, with no flip, transpose or shift."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from torch import nn

from infnet_monai.inference import infer_volume
from infnet_monai.inferers import slice_inferer
from infnet_monai.transforms.chain import IMAGENET_MEAN, IMAGENET_STD, ct_postprocessing, ct_preprocessing

from infnet_monai.transforms.lung import dilate_mm, lung_labels

from infnet_monai.data.phantoms import affine_for, chest_phantom, save_nifti


class IntensityAsLogit(nn.Module):
    """Test double: the logit is the windowed input intensity minus 0.5 (so the mask is
    'windowed intensity > 0.5', i.e. HU > -500 for the default window)."""

    def __init__(self) -> None:
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :1] * IMAGENET_STD[0] + IMAGENET_MEAN[0] - 0.5


def _run(path, lung_crop=False, restrict=False, size=352):
    """The chain at ``size`` px (352: the phantoms' in-plane size, so that nothing is resized)."""
    pre = ct_preprocessing(lung_crop=lung_crop, keep_lung_mask=restrict, spatial_size=size)
    post = ct_postprocessing(pre, restrict_to_lung=restrict)
    item = pre({"image": str(path)})
    return infer_volume(item, IntensityAsLogit(), slice_inferer(4, "cpu", size=size), post)


@pytest.mark.parametrize(
    "axcodes, order",
    [("RAS", (0, 1, 2)), ("LPS", (0, 1, 2)), ("ASR", (1, 2, 0)), ("SLP", (2, 0, 1)), ("PRI", (1, 0, 2))],
)
def test_exact_geometry_round_trip(tmp_path, axcodes, order):
    """In-plane 352x352 (no resize, no crop): the mask must equal the thresholded input exactly."""
    spacing_ras = (0.7, 0.9, 2.5)
    vol_ras = chest_phantom((352, 352, 5), spacing_ras)
    # store the same anatomy with voxel axes along `axcodes`
    vol = np.transpose(vol_ras, order)
    spacing = tuple(spacing_ras[i] for i in order)
    for axis, code in enumerate(axcodes):
        if code in "LPI":
            vol = np.flip(vol, axis)
    path = save_nifti(tmp_path / f"ct_{axcodes}.nii.gz", np.ascontiguousarray(vol), affine_for(spacing, axcodes))
    result = _run(path)
    mask = result.item["pred"]
    expected = (vol > -500).astype(np.uint8)
    assert tuple(mask.shape[1:]) == vol.shape
    np.testing.assert_array_equal(mask[0].numpy(), expected)
    np.testing.assert_allclose(np.asarray(mask.affine), nib.load(str(path)).affine, atol=1e-4)


def test_resized_and_cropped_round_trip_matches_threshold(tmp_path):
    """With lung crop and in-plane resize: inside the lung box (+ margin) the mask equals the
    thresholded input up to the resampling band at edges; outside it the mask is empty."""
    spacing = (0.8, 0.8, 5.0)
    vol = chest_phantom((200, 240, 6), spacing)
    affine = affine_for(spacing, "LPS")
    path = save_nifti(tmp_path / "ct.nii.gz", vol, affine)
    result = _run(path, lung_crop=True)
    mask = result.item["pred"][0].numpy().astype(bool)
    assert mask.shape == vol.shape and result.slices == 6
    np.testing.assert_allclose(np.asarray(result.item["pred"].affine), affine, atol=1e-4)
    xs, ys = np.nonzero(lung_labels(vol, affine).any(-1))
    margin = 10  # ct_preprocessing's default crop margin, voxels
    inside = np.zeros(vol.shape, bool)
    inside[max(xs.min() - margin, 0) : xs.max() + margin + 1, max(ys.min() - margin, 0) : ys.max() + margin + 1] = True
    expected = (vol > -500) & inside
    assert not (mask & ~inside).any()
    dice = 2 * (mask & expected).sum() / (mask.sum() + expected.sum())
    assert dice > 0.98
    assert inside.sum() < 0.8 * inside.size  # the crop really removed something


def test_restrict_to_lung_keeps_only_lung_region(tmp_path):
    """With the lung restriction on, the dense body (> -500 HU) outside the lungs is removed,
    the lesion inside the lung stays."""
    spacing = (0.8, 0.8, 5.0)
    vol = chest_phantom((200, 240, 6), spacing)
    affine = affine_for(spacing, "RAS")
    path = save_nifti(tmp_path / "ct.nii.gz", vol, affine)
    mask = _run(path, lung_crop=True, restrict=True).item["pred"][0].numpy().astype(bool)
    lung = lung_labels(vol, affine) > 0
    near_lung = dilate_mm(lung, spacing, 6.0)
    assert not (mask & ~near_lung).any()
    lesion = vol == -300
    assert mask[lesion].mean() > 0.95


def test_volume_without_lungs_is_not_cropped_to_nothing(tmp_path):
    """A volume in which no lung is found (solid tissue) falls back to the whole in-plane field."""
    spacing = (1.5, 1.5, 5.0)
    vol = np.full((64, 80, 3), 40.0, np.float32)
    vol[10:20, 10:30, :] = -200.0
    vol[0] = -1000.0  # air outside the body: a CT in HU, only without lung
    path = save_nifti(tmp_path / "nolung.nii.gz", vol, affine_for(spacing, "RAS"))
    mask = _run(path, lung_crop=True)
    assert tuple(mask.item["pred"].shape[1:]) == vol.shape
    # the stand-in marks HU > -500: everything here
    assert mask.item["pred"].float().mean() > 0.95
