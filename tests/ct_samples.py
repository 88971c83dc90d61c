"""Test volumes: analytic lung phantoms and the real DICOM series (loading kept in the tests)."""

from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import LoadImage, Orientation

from infnet_monai.utils.geometry import RAS_LABELS

SPACING = (0.8, 0.8, 2.5)  # mm
SHAPE = (160, 128, 32)
BODY_AXES = (60.0, 48.0, 70.0)  # mm, centred at the world origin
LUNG_AXES = (20.0, 30.0, 30.0)  # mm
LUNG_X = 28.0  # |world x| of the lung centres; +x = patient's right (RAS world)
LESION_RADIUS = 10.0  # mm, centred in the right lung
HU_AIR, HU_BODY, HU_LUNG, HU_LESION = -1000.0, 40.0, -850.0, -300.0


def phantom_affine(orientation: str = "RAS", shape=SHAPE, spacing=SPACING) -> np.ndarray:
    """Affine of a grid centred on the world origin, array axes along RAS or LPS."""
    signs = {"RAS": (1, 1, 1), "LPS": (-1, -1, 1)}[orientation]
    affine = np.eye(4)
    affine[:3, :3] = np.diag(np.multiply(signs, spacing))
    affine[:3, 3] = -affine[:3, :3] @ ((np.asarray(shape) - 1) / 2.0)
    return affine


def world_grid(affine: np.ndarray, shape=SHAPE) -> np.ndarray:
    """World coordinates (3, X, Y, Z) in mm of the voxel centres."""
    ijk = np.indices(shape, dtype=np.float64)
    return np.einsum("ij,j...->i...", affine[:3, :3], ijk) + affine[:3, 3, None, None, None]


def inside_ellipsoid(xyz: np.ndarray, centre, axes) -> np.ndarray:
    return sum(((xyz[d] - centre[d]) / axes[d]) ** 2 for d in range(3)) <= 1.0


def near_segment(xyz: np.ndarray, start, end, radius: float) -> np.ndarray:
    """Points within ``radius`` mm of the segment ``start``-``end`` (a tube with round ends)."""
    a, b = np.asarray(start, dtype=np.float64), np.asarray(end, dtype=np.float64)
    rel = xyz - a[:, None, None, None]
    t = np.clip(np.einsum("i,i...->...", b - a, rel) / np.dot(b - a, b - a), 0, 1)
    return np.sum((rel - t * (b - a)[:, None, None, None]) ** 2, axis=0) <= radius**2


def lung_phantom(orientation: str = "RAS", airway: bool = False) -> dict:
    """CT (1, X, Y, Z) in HU with two ellipsoid lungs and a spherical lesion in the right lung.

    ``airway``: add an air-filled trachea (radius 7 mm, midline, from the top down to a carina
    at z = 12 mm) and main bronchi (radius 4.5 mm) running to the lung centres. Voxels take the
    value of the region holding their centre (no partial volume). Returns the CT MetaTensor and
    the boolean truth masks ``right``, ``left``, ``lesion``, ``airway`` (X, Y, Z).
    """
    affine = phantom_affine(orientation)
    xyz = world_grid(affine)
    body = inside_ellipsoid(xyz, (0, 0, 0), BODY_AXES)
    right = inside_ellipsoid(xyz, (LUNG_X, 0, 0), LUNG_AXES)
    left = inside_ellipsoid(xyz, (-LUNG_X, 0, 0), LUNG_AXES)
    lesion = inside_ellipsoid(xyz, (LUNG_X, 0, 0), (LESION_RADIUS,) * 3)
    tubes = np.zeros(SHAPE, dtype=bool)
    if airway:
        carina = (0.0, 0.0, 12.0)
        tubes = near_segment(xyz, (0.0, 0.0, 60.0), carina, 7.0)
        for side in (1, -1):
            tubes |= near_segment(xyz, carina, (side * LUNG_X, 0.0, -5.0), 4.5)
    hu = np.full(SHAPE, HU_AIR, dtype=np.float32)
    hu[body] = HU_BODY
    hu[right | left] = HU_LUNG
    hu[lesion] = HU_LESION
    hu[tubes & body] = HU_AIR
    ct = MetaTensor(torch.from_numpy(hu[None]), affine=torch.from_numpy(affine))
    return {"ct": ct, "right": right, "left": left, "lesion": lesion, "airway": tubes & body, "affine": affine}


def ellipsoid_volume_ml(axes) -> float:
    return 4.0 / 3.0 * math.pi * float(np.prod(axes)) / 1000.0


def discretisation_bound_ml(axes, spacing=SPACING) -> float:
    """Largest |voxel-count volume - analytic volume| (mL) of a convex ellipsoid voxelised by
    voxel centres.

    Every misassigned point lies within h = half the voxel diagonal of the surface, so the error
    is at most the larger of the inner and outer parallel shells; the outer one is larger and by
    Steiner's formula measures S h + M h^2 + 4/3 pi h^3 with M = 2 pi x mean width <= 4 pi a_max.
    The surface S uses Thomsen's approximation (error < 1.07 %), enlarged by 1.07 %.
    """
    a, b, c = axes
    p = 1.6075
    surface = 4 * math.pi * (((a * b) ** p + (a * c) ** p + (b * c) ** p) / 3) ** (1 / p) * 1.0107
    h = 0.5 * float(np.linalg.norm(spacing))
    return (surface * h + 4 * math.pi * max(axes) * h**2 + 4 / 3 * math.pi * h**3) / 1000.0


@functools.lru_cache(maxsize=1)
def real_ct(series_dir: Path) -> MetaTensor:
    """The real DICOM series as a MetaTensor (1, X, Y, Z) in HU, oriented RAS."""
    ct = LoadImage(image_only=True, ensure_channel_first=True, reader="PydicomReader")(str(series_dir))
    return Orientation(axcodes="RAS", labels=RAS_LABELS)(ct)


@functools.lru_cache(maxsize=1)
def real_lung(series_dir: Path) -> MetaTensor:
    """LungMask of :func:`real_ct` (computed once per test session)."""
    from infnet_monai.transforms.lung import LungMask

    return LungMask()(real_ct(series_dir))
