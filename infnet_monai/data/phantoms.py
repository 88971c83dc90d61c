"""Synthetic chest CT phantoms in HU, for tests, benchmarks and examples.

- :func:`chest_phantom`: a plain chest (ellipsoid lungs in a body) as an array, written as NIfTI
  by :func:`save_nifti` on the grid of :func:`affine_for`;
- :func:`lung_phantom`: two ellipsoid lungs, a lesion and an optional airway with their exact
  masks and volumes (the ground truth of the lung mask and burden tests);
- :func:`diseased_chest`: a chest with ribs, fat, consolidation, ground glass and effusion: the
  parts a lung mask must tell apart, with their masks.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import nibabel as nib
import numpy as np
import torch
from monai.data import MetaTensor


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


# ---------------------------------------------------------------- lungs with their ground truth

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


# ---------------------------------------------------------------- a chest with diseased lungs

CHEST_SPACING = (1.0, 1.0, 5.0)  # mm
CHEST_SHAPE = (360, 280, 24)
HEMITHORAX_X, HEMITHORAX_Y = 75.0, -5.0  # |x| and y (mm) of the hemithorax centres
HEMITHORAX_AXES = (60.0, 85.0, 100.0)  # mm
HU_MUSCLE, HU_FAT, HU_BONE = 40.0, -100.0, 700.0
HU_CONSOLIDATION, HU_GGO, HU_EFFUSION = -50.0, -600.0, 10.0


def diseased_chest(disease: bool = True, effusion: bool = False) -> dict:
    """A chest CT (1, X, Y, Z) in HU, RAS, 1 x 1 x 5 mm, with the parts a lung mask must tell apart.

    Body: an ellipse (170 x 125 mm) of muscle (+40 HU) under 12 mm of subcutaneous fat; ribs
    (bone, 12 x 7 mm) on a ring around the hemithoraces, a vertebral body behind and a sternum in
    front; the heart (+40 HU) between the lungs; two hemithorax ellipsoids of aerated lung
    (-850 HU). ``disease``: the right lung has diffuse ground-glass opacity (-600 HU) over all of
    it and a peripheral consolidation (-50 HU, a 22 mm ball) touching the lateral chest wall; the
    left lung a dependent consolidation (-50 HU) over its posterior third. ``effusion``: a
    crescent of fluid (+10 HU) fills the dependent part of the left hemithorax, the lung floats
    above it. Returns the CT and boolean truth masks (X, Y, Z): ``right``, ``left`` (lungs,
    effusion excluded), ``ggo``, ``peripheral``, ``dependent``, ``effusion``, ``heart``,
    ``chest_wall`` (body outside the rib ring), ``affine``.
    """
    affine = np.diag([*CHEST_SPACING, 1.0])
    affine[:3, 3] = -affine[:3, :3] @ ((np.asarray(CHEST_SHAPE) - 1) / 2.0)
    x, y, z = world_grid(affine, CHEST_SHAPE)
    xyz = np.stack([x, y, z])
    body = (x / 170.0) ** 2 + (y / 125.0) ** 2 <= 1.0
    inner_body = (x / 158.0) ** 2 + (y / 113.0) ** 2 <= 1.0
    ring_x, ring_y, ring_cy = 152.0, 112.0, -5.0  # the rib ring
    inside_ring = (x / ring_x) ** 2 + ((y - ring_cy) / ring_y) ** 2 <= 1.0
    hu = np.full(CHEST_SHAPE, HU_AIR, dtype=np.float32)
    hu[body] = HU_FAT
    hu[inner_body] = HU_MUSCLE
    bone = np.zeros(CHEST_SHAPE, dtype=bool)
    for angle in np.deg2rad(np.arange(-150, 181, 22.5)):
        if abs(np.rad2deg(angle) - 90) < 20:  # the sternum's place
            continue
        cx, cy = ring_x * np.cos(angle), ring_cy + ring_y * np.sin(angle)
        bone |= inside_ellipsoid(xyz, (cx, cy, 0.0), (6.0, 6.0, 1e4))
    bone |= inside_ellipsoid(xyz, (0.0, -95.0, 0.0), (18.0, 16.0, 1e4))  # vertebral body
    bone |= inside_ellipsoid(xyz, (0.0, 102.0, 0.0), (14.0, 5.0, 1e4))  # sternum
    hu[bone] = HU_BONE
    heart = inside_ellipsoid(xyz, (-10.0, 30.0, -30.0), (38.0, 42.0, 60.0))
    hu[heart] = HU_MUSCLE
    right = inside_ellipsoid(xyz, (HEMITHORAX_X, HEMITHORAX_Y, 0.0), HEMITHORAX_AXES)
    left = inside_ellipsoid(xyz, (-HEMITHORAX_X, HEMITHORAX_Y, 0.0), HEMITHORAX_AXES)
    right &= ~heart
    left &= ~heart
    hu[right | left] = HU_LUNG
    none = np.zeros(CHEST_SHAPE, dtype=bool)
    ggo, peripheral, dependent, fluid = none, none, none, none
    if disease:
        ggo = right.copy()
        hu[ggo] = HU_GGO
        peripheral = right & inside_ellipsoid(xyz, (HEMITHORAX_X + 52.0, HEMITHORAX_Y, 0.0), (22.0, 22.0, 22.0))
        dependent = left & (y < HEMITHORAX_Y - HEMITHORAX_AXES[1] + 2 * HEMITHORAX_AXES[1] / 3)
        hu[peripheral | dependent] = HU_CONSOLIDATION
    if effusion:
        floating = inside_ellipsoid(xyz, (-HEMITHORAX_X, HEMITHORAX_Y + 14.0, 0.0), (57.0, 72.0, 100.0))
        fluid = left & ~floating & (y < HEMITHORAX_Y)
        hu[fluid] = HU_EFFUSION
        left = left & ~fluid
    ct = MetaTensor(torch.from_numpy(hu[None]), affine=torch.from_numpy(affine))
    return {
        "ct": ct, "affine": affine, "right": right, "left": left, "ggo": ggo, "peripheral": peripheral,
        "dependent": dependent, "effusion": fluid, "heart": heart & body, "chest_wall": body & ~inside_ring,
    }
