"""Bit-packed per-slice morphology equals scipy's; the lung fills give the same on crops."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from infnet_monai.transforms import slice_morphology as sm
from infnet_monai.transforms.lung_pathology import dependent_fill, pocket_fill


def _volumes(count: int = 25, seed: int = 0):
    rng = np.random.default_rng(seed)
    for _ in range(count):
        shape = tuple(int(n) for n in rng.integers(1, 30, 3))
        yield rng, rng.random(shape) < rng.random(), rng.random(shape) < 0.6


def test_erode_dilate_and_geodesic_dilation_equal_scipy():
    for rng, mask, within in _volumes():
        k = int(rng.integers(1, 4))
        packed, z = sm.pack(mask), mask.shape[2]
        np.testing.assert_array_equal(sm.unpack(sm.erode(packed, k), z), ndimage.binary_erosion(mask, sm.CROSS, k))
        np.testing.assert_array_equal(sm.unpack(sm.dilate(packed, k), z), ndimage.binary_dilation(mask, sm.CROSS, k))
        np.testing.assert_array_equal(
            sm.unpack(sm.dilate(packed, k, within=sm.pack(within)), z),
            ndimage.binary_dilation(mask, sm.CROSS, k, mask=within),
        )


def test_rectangle_dilation_equals_maximum_filter():
    for rng, mask, _ in _volumes():
        mask &= rng.random(mask.shape) < 0.1
        reach = (int(rng.integers(0, 12)), int(rng.integers(0, 12)))
        expected = ndimage.maximum_filter(mask, size=(2 * reach[0] + 1, 2 * reach[1] + 1, 1))
        np.testing.assert_array_equal(sm.unpack(sm.dilate_rect(sm.pack(mask), reach), mask.shape[2]), expected)


def test_reconstruction_and_hole_filling_equal_labelling():
    for _, seed, allowed in _volumes():
        labels, _ = ndimage.label(allowed, structure=sm.CROSS)
        expected = np.isin(labels, labels[seed & allowed]) & (labels > 0)
        got = sm.unpack(sm.reconstruct(sm.pack(seed), sm.pack(allowed)), seed.shape[2])
        np.testing.assert_array_equal(got, expected)
        np.testing.assert_array_equal(sm.fill_holes(allowed), ndimage.binary_fill_holes(allowed, sm.CROSS))
    # a spiral: many sweeps to converge
    yy, xx = np.mgrid[:41, :41]
    angle, radius = np.arctan2(yy - 20, xx - 20), np.hypot(yy - 20, xx - 20)
    spiral = (np.mod(radius - 6 * angle / np.pi, 6) < 2)[:, :, None] & (radius < 19)[:, :, None]
    np.testing.assert_array_equal(sm.fill_holes(spiral), ndimage.binary_fill_holes(spiral, sm.CROSS))


@pytest.mark.parametrize("direction", [(0, 1), (0, -1), (1, 1), (1, -1)])
def test_fills_on_a_crop_equal_the_fills_on_the_whole_grid(direction):
    """The lung fills run on crops around each lung (:func:`pathology_and_cavity`): a dependent
    fill on the lung box grown by the longest run + 2 along its direction, pockets on the filled
    lung's box with its origin, give the same voxels as on the whole grid."""
    rng = np.random.default_rng(1)
    shape = (60, 50, 6)
    hu = np.where(rng.random(shape) < 0.85, -100.0, 60.0).astype(np.float32)
    lung = np.zeros(shape, dtype=bool)
    lung[18:40, 12:35, 1:5] = rng.random((22, 23, 4)) < 0.9
    body = np.ones(shape, dtype=bool)
    affine = np.diag([-1.5, -1.5, 5.0, 1.0])
    spacing = (1.5, 1.5, 5.0)
    whole = dependent_fill(lung, hu, body, affine, spacing, -320.0, -20.0, 12.0, direction)
    reach = int(np.floor(12.0 / 1.5)) + 2
    crop = [slice(18, 40), slice(12, 35), slice(1, 5)]
    axis = direction[0]
    crop[axis] = slice(crop[axis].start - reach, crop[axis].stop + reach)
    crop = tuple(crop)
    part = np.zeros_like(lung)
    part[crop] = dependent_fill(lung[crop], hu[crop], body[crop], affine, spacing, -320.0, -20.0, 12.0, direction)
    np.testing.assert_array_equal(part, whole)
    assert whole.any()
    grown = lung | whole
    hits = [np.flatnonzero(grown.any(axis=tuple(d for d in range(3) if d != a))) for a in range(3)]
    box = tuple(slice(int(h[0]), int(h[-1]) + 1) for h in hits)
    pockets = np.zeros_like(lung)
    pockets[box] = pocket_fill(grown[box], hu[box], affine, True, (-160.0, -60.0), [s.start for s in box])
    np.testing.assert_array_equal(pockets, pocket_fill(grown, hu, affine, True, (-160.0, -60.0)))
    assert pockets.any()
