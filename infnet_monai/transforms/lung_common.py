"""Shared pieces of the HU lung mask: label values, boxes, world sides, resampling, dilation.

Arrays are (X, Y, Z) voxel grids; ``affine`` maps indices to MONAI's RAS world (mm, +x = the
patient's Right). The lung-mask steps keep the slice axis last (:func:`axial_last`).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from scipy import ndimage

from infnet_monai.utils.geometry import axial_axis

from .slice_morphology import CROSS, fill_holes

__all__ = ["RIGHT_LUNG", "LEFT_LUNG", "THORAX", "dilate_mm"]

RIGHT_LUNG = 1
LEFT_LUNG = 2
THORAX = 3  # the rest of the thoracic cavity: mediastinum, heart, pleural space, hila

# In-plane 4-connectivity with no link between slices: makes ndimage ops act per axial slice
# on arrays whose last axis is the slice axis.
INPLANE = CROSS


def to_numpy(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def spatial(x: Any) -> np.ndarray:
    """(1, X, Y, Z) or (X, Y, Z) -> (X, Y, Z) numpy."""
    a = to_numpy(x)
    if a.ndim == 4:
        if a.shape[0] != 1:
            raise ValueError(f"expected one channel (1, X, Y, Z), got shape {a.shape}")
        a = a[0]
    if a.ndim != 3:
        raise ValueError(f"expected a 3D volume (1, X, Y, Z), got shape {a.shape}")
    return a


def axial_last(affine: np.ndarray) -> tuple[list[int], np.ndarray]:
    """Axis permutation putting the slice axis last, and the affine of the permuted array."""
    ax = axial_axis(affine)
    perm = [d for d in range(3) if d != ax] + [ax]
    permuted = affine.copy()
    permuted[:, :3] = affine[:, perm]
    return perm, permuted


def per_slice_fill(mask: np.ndarray) -> np.ndarray:
    """Holes of a boolean (X, Y, Z) mask filled in every axial slice (slice axis last): the
    same as ``ndimage.binary_fill_holes(mask, structure=INPLANE)``
    (:func:`~infnet_monai.transforms.slice_morphology.fill_holes`, bit-packed)."""
    return fill_holes(mask)


def label_set(labels: np.ndarray, count: int, members: Sequence[int] | np.ndarray) -> np.ndarray:
    """Lookup table over the labels 0..``count`` of a labelling: True for ``members`` except the
    background 0. ``table[labels]`` equals ``np.isin(labels, members) & (labels > 0)`` in one
    gather instead of a sort."""
    table = np.zeros(count + 1, dtype=bool)
    table[np.asarray(members, dtype=np.intp)] = True
    table[0] = False
    return table


def bbox(mask: np.ndarray, margin: Sequence[int]) -> tuple[slice, ...] | None:
    """Bounding box of ``mask`` grown by ``margin`` voxels per axis (clipped), None if empty."""
    box = []
    for axis, (m, n) in enumerate(zip(margin, mask.shape)):
        hits = np.flatnonzero(mask.any(axis=tuple(d for d in range(mask.ndim) if d != axis)))
        if not hits.size:
            return None
        box.append(slice(max(0, int(hits[0]) - m), min(n, int(hits[-1]) + m + 1)))
    return tuple(box)


def box_intersection(a: tuple[slice, ...], b: tuple[slice, ...]) -> tuple[slice, ...]:
    """The common part of two boxes of :func:`bbox` (an empty slice on axes where they miss)."""
    starts = [max(x.start, y.start) for x, y in zip(a, b)]
    return tuple(slice(start, max(start, min(x.stop, y.stop))) for start, x, y in zip(starts, a, b))


def sub_box(outer: tuple[slice, ...], inner: tuple[slice, ...]) -> tuple[slice, ...]:
    """Box ``inner``, given relative to box ``outer``, in the coordinates ``outer`` lies in."""
    return tuple(slice(o.start + i.start, o.start + i.stop) for o, i in zip(outer, inner))


def world_x(affine: np.ndarray, index: Sequence[np.ndarray]) -> np.ndarray:
    """World x (mm, + = patient's Right) of voxels given as index arrays."""
    return affine[0, 0] * index[0] + affine[0, 1] * index[1] + affine[0, 2] * index[2] + affine[0, 3]


def right_of(
    shape: Sequence[int], affine: np.ndarray, midline_x: float, origin: Sequence[int] = (0, 0, 0)
) -> np.ndarray:
    """Boolean, broadcastable to ``shape`` (X, Y, Z): world x > ``midline_x`` (patient's right)
    for the voxels of a box starting at index ``origin`` of the grid of ``affine``. (X, Y, 1)
    when the slice axis does not move along world x, else (X, Y, Z); the same values as
    :func:`world_x` of every voxel."""
    index = [
        np.arange(o, o + n, dtype=np.intp).reshape([-1 if d == axis else 1 for d in range(3)])
        for axis, (o, n) in enumerate(zip(origin, shape))
    ]
    if affine[0, 2] == 0:  # + 0 * k changes no value
        return affine[0, 0] * index[0] + affine[0, 1] * index[1] + affine[0, 3] > midline_x
    return world_x(affine, index) > midline_x


def centroid_x(mask: np.ndarray, affine: np.ndarray) -> float:
    """World x (mm) of the centroid of a boolean (X, Y, Z) mask, from its projections (the same
    value as the mean of the voxel indices)."""
    columns = np.count_nonzero(mask, axis=2)
    counts = [columns.sum(axis=1), columns.sum(axis=0), np.count_nonzero(mask, axis=(0, 1))]
    total = float(counts[0].sum())
    means = [float(c @ np.arange(c.size, dtype=np.int64)) / total for c in counts]
    return float(world_x(affine, means))


def margin_voxels(spacing: Sequence[float], mm: float) -> list[int]:
    """Voxels per axis that surely cover ``mm`` (one spare voxel)."""
    return [int(np.ceil(mm / s)) + 1 for s in spacing]


def _ball_rows(spacing: Sequence[float], mm: float) -> dict[int, list[tuple[int, int]]]:
    """The ball of radius ``mm`` (anisotropic ``spacing``) as rows along the first axis: for each
    half-width ``w`` (voxels), the (dy, dz) offsets whose row is ``-w..w``. An offset belongs to
    the ball when its Euclidean length in mm is at most ``mm``."""
    sx, sy, sz = (float(s) for s in spacing)
    rows: dict[int, list[tuple[int, int]]] = {}
    for dz in range(-int(mm // sz), int(mm // sz) + 1):
        for dy in range(-int(mm // sy), int(mm // sy) + 1):
            rest = (dy * sy) ** 2 + (dz * sz) ** 2
            if np.sqrt(rest) > mm:
                continue
            w = int(np.sqrt(max(mm**2 - rest, 0.0)) // sx)
            while np.sqrt(((w + 1) * sx) ** 2 + rest) <= mm:
                w += 1
            while w > 0 and np.sqrt((w * sx) ** 2 + rest) > mm:
                w -= 1
            rows.setdefault(w, []).append((dy, dz))
    return rows


def dilate_mm(mask: np.ndarray, spacing: Sequence[float], mm: float) -> np.ndarray:
    """Dilate a boolean (X, Y, Z) mask by ``mm`` (Euclidean, anisotropic ``spacing`` in mm).

    A voxel is set when a mask voxel lies within ``mm`` of it (the same set as
    ``distance_transform_edt(~mask, sampling=spacing) <= mm``). The ball is applied as rows: one
    1D maximum filter along the first axis per row half-width, OR-ed at each (y, z) offset of
    the ball, over the mask's bounding box (+ ``mm``) only; memory: two boolean copies of the box.
    """
    mask = np.asarray(mask, dtype=bool)
    if mm <= 0 or not mask.any():
        return mask.copy()
    box = bbox(mask, margin_voxels(spacing, mm))
    out = np.zeros_like(mask)
    sub, region = mask[box], out[box]
    ny, nz = sub.shape[1:]
    for w, offsets in _ball_rows(spacing, mm).items():
        rows = ndimage.maximum_filter1d(sub.view(np.uint8), 2 * w + 1, axis=0, mode="constant").view(bool) if w else sub
        for dy, dz in offsets:
            y0, y1, z0, z1 = max(0, dy), ny + min(0, dy), max(0, dz), nz + min(0, dz)
            region[:, y0:y1, z0:z1] |= rows[:, y0 - dy : y1 - dy, z0 - dz : z1 - dz]
    return out


def shift(affine: np.ndarray, offset: Sequence[int]) -> np.ndarray:
    """Affine of a crop starting at index ``offset``."""
    out = affine.copy()
    out[:3, 3] = affine[:3, :3] @ np.asarray(offset, dtype=np.float64) + affine[:3, 3]
    return out


def block_mean(a: np.ndarray, factors: Sequence[int]) -> np.ndarray:
    """Average (X, Y, Z) over in-plane blocks factors[0] x factors[1] (edges padded)."""
    fx, fy = factors
    a = np.asarray(a, dtype=np.float32)  # no copy of a float32 volume
    if fx == fy == 1:
        return a
    pad = [(0, (-a.shape[0]) % fx), (0, (-a.shape[1]) % fy), (0, 0)]
    if pad[0][1] or pad[1][1]:
        a = np.pad(a, pad, mode="edge")
    x, y, z = a.shape
    return a.reshape(x // fx, fx, y // fy, fy, z).mean(axis=(1, 3))


def upsample(a: np.ndarray, factors: Sequence[int], shape: Sequence[int]) -> np.ndarray:
    """Repeat (X, Y, ...) in-plane by ``factors``, cut to the in-plane ``shape`` (voxels)."""
    return np.repeat(np.repeat(a, factors[0], axis=0), factors[1], axis=1)[: shape[0], : shape[1]]


def full_box(coarse_box: tuple[slice, ...], factors: Sequence[int], shape: Sequence[int]) -> tuple[slice, ...]:
    """The full-resolution box (slice axis last, ``shape`` voxels) of a box on the grid
    block-averaged in-plane by ``factors``."""
    inplane = tuple(slice(b.start * f, min(n, b.stop * f)) for b, f, n in zip(coarse_box[:2], factors, shape[:2]))
    return inplane + tuple(coarse_box[2:])
