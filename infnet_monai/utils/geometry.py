"""Voxel geometry from a MONAI 4x4 affine (array index -> RAS world coordinates in mm).

MONAI readers convert DICOM/ITK LPS to RAS, so world +x points to the patient's Right, +y
Anterior, +z Superior whatever the array orientation; these helpers read sides and slice axes
from the affine instead of assuming an array orientation.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from infnet_monai.defaults import GRID_ATOL_MM

__all__ = [
    "volume_array",
    "RAS_LABELS",
    "affine_of",
    "voxel_spacing",
    "voxel_volume_ml",
    "axial_axis",
    "world_points",
    "slice_z_mm",
    "check_same_geometry",
]

# World axis ends (negative, positive) of MONAI affines, for Orientation(labels=...).
RAS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))


def volume_array(x: Any) -> np.ndarray:
    """A volume ``(1, X, Y, Z)`` or ``(X, Y, Z)`` (tensor, MetaTensor or array) as a NumPy
    ``(X, Y, Z)`` array on the host."""
    a = x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)
    return a[0] if a.ndim == 4 and a.shape[0] == 1 else a


def affine_of(img: Any, affine: Any = None) -> np.ndarray:
    """Return ``affine`` or else ``img.affine`` (MetaTensor) as a float64 (4, 4) array."""
    if affine is None:
        affine = getattr(img, "affine", None)
    if affine is None:
        raise ValueError("image has no affine: pass a MetaTensor (e.g. from LoadImage) or affine=")
    if isinstance(affine, torch.Tensor):
        affine = affine.detach().cpu().numpy()
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4):
        raise ValueError(f"expected a (4, 4) affine, got shape {affine.shape}")
    return affine


def voxel_spacing(affine: np.ndarray) -> np.ndarray:
    """Voxel edge lengths in mm along the three array axes, shape (3,)."""
    return np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, :3], axis=0)


def voxel_volume_ml(affine: np.ndarray) -> float:
    """Volume of one voxel in mL: |det| of the affine's 3x3 part (mm^3) / 1000."""
    return float(abs(np.linalg.det(np.asarray(affine, dtype=np.float64)[:3, :3]))) / 1000.0


def axial_axis(affine: np.ndarray) -> int:
    """Array axis (0-2) best aligned with the world inferior-superior axis (the slice axis)."""
    affine = np.asarray(affine, dtype=np.float64)
    return int(np.argmax(np.abs(affine[2, :3]) / voxel_spacing(affine)))


def world_points(affine: np.ndarray, index_points: np.ndarray) -> np.ndarray:
    """World coordinates (N, 3) in mm of voxel index points (N, 3)."""
    affine = np.asarray(affine, dtype=np.float64)
    return np.asarray(index_points, dtype=np.float64) @ affine[:3, :3].T + affine[:3, 3]


def slice_z_mm(affine: np.ndarray, shape: tuple, index: int) -> float:
    """World z (mm, + = superior) of axial slice ``index`` at the centre of an (X, Y, Z) grid."""
    axis = axial_axis(affine)
    centre = (np.asarray(shape[-3:], dtype=np.float64) - 1) / 2
    centre[axis] = index
    return float(world_points(affine, centre[None])[0, 2])


def check_same_geometry(
    name: str, shape: tuple, affine: np.ndarray, ref_name: str, ref_shape: tuple, ref_affine: np.ndarray,
    atol_mm: float = GRID_ATOL_MM,
) -> None:
    """Raise ``ValueError`` unless ``name`` lies on the same voxel grid as ``ref_name``."""
    if tuple(shape) != tuple(ref_shape) or not np.allclose(affine, ref_affine, atol=atol_mm):
        raise ValueError(
            f"{name}: geometry (shape {tuple(shape)}, spacing {np.round(voxel_spacing(affine), 3).tolist()} mm, "
            f"origin {np.round(np.asarray(affine)[:3, 3], 2).tolist()}) differs from {ref_name} (shape "
            f"{tuple(ref_shape)}, spacing {np.round(voxel_spacing(ref_affine), 3).tolist()} mm, origin "
            f"{np.round(np.asarray(ref_affine)[:3, 3], 2).tolist()}); resample it onto the image grid first"
        )
