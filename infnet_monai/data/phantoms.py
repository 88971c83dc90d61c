"""Synthetic chest CT phantoms (tests, benchmarks, examples): ellipsoid lungs in a body, in HU, written as NIfTI."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import nibabel as nib
import numpy as np


def chest_phantom(
    shape: Sequence[int] = (96, 96, 12),
    spacing: Sequence[float] = (3.0, 3.0, 6.0),
    lesion_hu: float = -300.0,
    seed: int = 0,
) -> np.ndarray:
    """HU volume indexed (i: patient left→right... as given by the caller's affine, j, k axial):
    air -1000 outside a +40 HU body ellipse, two -850 HU lung ellipsoids, a -300 HU lesion in
    one lung and a few random blobs so that flips and transposes are visible."""
    rng = np.random.default_rng(seed)
    nx, ny, nz = shape
    x, y, z = np.meshgrid(
        (np.arange(nx) - nx / 2 + 0.5) * spacing[0],
        (np.arange(ny) - ny / 2 + 0.5) * spacing[1],
        (np.arange(nz) - nz / 2 + 0.5) * spacing[2],
        indexing="ij",
    )
    half_x, half_y, half_z = nx * spacing[0] / 2, ny * spacing[1] / 2, nz * spacing[2] / 2
    vol = np.full(shape, -1000.0, dtype=np.float32)
    body = (x / (0.9 * half_x)) ** 2 + (y / (0.7 * half_y)) ** 2 <= 1
    vol[body] = 40.0
    for side in (-1, 1):
        lung = ((x - side * 0.4 * half_x) / (0.3 * half_x)) ** 2 + (y / (0.5 * half_y)) ** 2 + (z / (1.2 * half_z)) ** 2 <= 1
        vol[lung] = -850.0
    lesion = ((x - 0.45 * half_x) ** 2 + (y - 0.1 * half_y) ** 2 + z**2) <= (0.12 * half_x) ** 2
    vol[lesion] = lesion_hu
    for _ in range(4):  # asymmetric landmarks
        cx, cy = rng.integers(nx // 4, 3 * nx // 4), rng.integers(ny // 4, 3 * ny // 4)
        vol[cx : cx + 3, cy : cy + 5, : nz // 2] = 200.0
    return vol


def save_nifti(path: Path, data: np.ndarray, affine: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(data.astype(np.float32), affine), str(path))
    return path


def affine_for(spacing: Sequence[float], axcodes: str = "RAS", origin: Sequence[float] = (-120.0, 30.0, 200.0)) -> np.ndarray:
    """Diagonal/permuted affine whose voxel axes point along ``axcodes`` with ``spacing`` mm."""
    directions = {"R": (0, 1), "L": (0, -1), "A": (1, 1), "P": (1, -1), "S": (2, 1), "I": (2, -1)}
    affine = np.zeros((4, 4))
    for axis, code in enumerate(axcodes):
        world, sign = directions[code]
        affine[world, axis] = sign * spacing[axis]
    affine[:3, 3] = origin
    affine[3, 3] = 1
    return affine
