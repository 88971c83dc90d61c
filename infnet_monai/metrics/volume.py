"""Volume overlap and surface-distance metrics in millimetres for binary and per-class masks.

Dice, average symmetric surface distance (ASD), 95th-percentile Hausdorff distance (HD95) and
normalised surface Dice (NSD) come from ``monai.metrics``; distances use each volume's voxel
spacing (mm). What MONAI leaves open (masks that are empty, grids that differ, summaries that must
not hide failures) is fixed here by the documented constants below.

Definitions (MONAI 1.6, edge voxels = mask XOR binary_erosion(mask), Euclidean in mm):

- ASD: mean of the pooled distances pred-edge -> label-edge and label-edge -> pred-edge.
- HD95: max of the two directed 95th percentiles (linear interpolation), as in DeepMind's
  ``surface-distance`` ``compute_robust_hausdorff``.
- NSD: fraction of edge voxels of both masks lying within ``tolerance_mm`` of the other mask's
  edge (Nikolov et al. 2021, edge-voxel counting, no sub-voxel areas).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass
from typing import Iterable, Mapping, Sequence

import numpy as np
import torch
from monai.data import MetaTensor
from monai.data.utils import affine_to_spacing
from monai.metrics import (
    compute_average_surface_distance,
    compute_dice,
    compute_hausdorff_distance,
    compute_surface_dice,
)
from monai.transforms import ResampleToMatch

from infnet_monai.defaults import DEFAULT_TOLERANCE_MM, GRID_ATOL_MM

__all__ = [
    "DEFAULT_TOLERANCE_MM",
    "BOTH_EMPTY_DICE",
    "BOTH_EMPTY_DISTANCE_MM",
    "BOTH_EMPTY_NSD",
    "ONE_EMPTY_DICE",
    "ONE_EMPTY_DISTANCE_MM",
    "ONE_EMPTY_NSD",
    "EMPTY_MASK_POLICY",
    "DISTANCE_DEFINITIONS",
    "VolumeMetrics",
    "binary_volume_metrics",
    "label_volume_metrics",
    "summarise_volume_metrics",
    "spacing_mm",
    "match_label_grid",
]


# Empty-mask policy. MONAI returns NaN (or inf) for these cases; a NaN would silently drop the case
# from a nan-mean, so every case gets a number and the summary counts the one-empty cases.
BOTH_EMPTY_DICE = 1.0
"""Prediction and label both empty: a correct "no infection" call."""
BOTH_EMPTY_DISTANCE_MM = 0.0
"""Prediction and label both empty: no boundary, no error (ASD, HD95)."""
BOTH_EMPTY_NSD = 1.0
"""Prediction and label both empty: the (absent) boundary is entirely correct."""
ONE_EMPTY_DICE = 0.0
"""Exactly one of prediction and label empty: no overlap."""
ONE_EMPTY_DISTANCE_MM = math.inf
"""Exactly one empty: the distance to a missing surface is undefined, reported as ``inf`` and
counted (``n_one_empty``); a mean over cases that contain one is ``inf``."""
ONE_EMPTY_NSD = 0.0
"""Exactly one empty: no boundary element lies within tolerance."""

EMPTY_MASK_POLICY = (
    f"both empty -> Dice {BOTH_EMPTY_DICE:g}, ASD/HD95 {BOTH_EMPTY_DISTANCE_MM:g} mm, NSD {BOTH_EMPTY_NSD:g}; "
    f"exactly one empty -> Dice {ONE_EMPTY_DICE:g}, NSD {ONE_EMPTY_NSD:g}, ASD/HD95 {ONE_EMPTY_DISTANCE_MM} "
    "(counted as n_one_empty; distance means over cases with an inf are inf, finite_mean excludes them "
    "and n_finite says over how many)"
)
"""One-line statement of the empty-mask policy, written into every report."""

DISTANCE_DEFINITIONS = {
    "asd_mm": "mean of pooled symmetric edge-to-edge distances (mm)",
    "hd95_mm": "max of the two directed 95th percentiles of edge-to-edge distances (mm)",
    "nsd": "fraction of both masks' edge voxels within tolerance_mm of the other mask's edge",
}
"""Short definitions of the distance metrics, written into every report."""


@dataclass(frozen=True)
class VolumeMetrics:
    """Metrics of one binary mask pair.

    ``empty`` is ``"none"``, ``"both"``, ``"pred"`` (only the prediction is empty) or ``"label"``.
    Volumes in mL (1 mL = 1000 mm^3).
    """

    dice: float
    asd_mm: float
    hd95_mm: float
    nsd: float
    empty: str
    pred_ml: float
    label_ml: float

    def as_dict(self) -> dict:
        return asdict(self)


def spacing_mm(image: MetaTensor) -> tuple[float, ...]:
    """Voxel spacing (mm) per spatial axis from a MetaTensor's affine."""
    affine = np.asarray(image.affine, dtype=np.float64)
    return tuple(float(s) for s in affine_to_spacing(affine, r=image.ndim, suppress_zeros=False))


def _plain_tensor(array: np.ndarray | torch.Tensor) -> torch.Tensor:
    """A torch.Tensor without MONAI metadata."""
    if isinstance(array, MetaTensor):
        return array.as_tensor()
    return array if isinstance(array, torch.Tensor) else torch.as_tensor(np.asarray(array))


def _as_bool(mask: np.ndarray | torch.Tensor) -> torch.Tensor:
    return _plain_tensor(mask).bool()


def binary_volume_metrics(
    pred: np.ndarray | torch.Tensor,
    label: np.ndarray | torch.Tensor,
    spacing: Sequence[float],
    tolerance_mm: float = DEFAULT_TOLERANCE_MM,
) -> VolumeMetrics:
    """Dice, ASD (mm), HD95 (mm) and NSD at ``tolerance_mm`` of two binary masks on one grid.

    Args:
        pred, label: masks of the same spatial shape (H, W[, D]); nonzero = foreground.
        spacing: voxel size in mm per axis of the masks.
        tolerance_mm: NSD tolerance in mm.
    """
    pred_t, label_t = _as_bool(pred), _as_bool(label)
    if pred_t.shape != label_t.shape:
        raise ValueError(f"prediction shape {tuple(pred_t.shape)} differs from label shape {tuple(label_t.shape)}")
    spacing = [float(s) for s in spacing]
    if len(spacing) != pred_t.ndim:
        raise ValueError(f"spacing {spacing} has {len(spacing)} entries for a {pred_t.ndim}-D mask")
    if not (math.isfinite(tolerance_mm) and tolerance_mm >= 0):
        raise ValueError(f"tolerance must be a finite number >= 0 mm, got {tolerance_mm}")
    voxel_ml = float(np.prod(spacing)) / 1000.0
    pred_ml = float(pred_t.sum()) * voxel_ml
    label_ml = float(label_t.sum()) * voxel_ml
    pred_empty, label_empty = pred_ml == 0.0, label_ml == 0.0
    if pred_empty and label_empty:
        return VolumeMetrics(
            BOTH_EMPTY_DICE, BOTH_EMPTY_DISTANCE_MM, BOTH_EMPTY_DISTANCE_MM, BOTH_EMPTY_NSD, "both", 0.0, 0.0
        )
    if pred_empty or label_empty:
        return VolumeMetrics(
            ONE_EMPTY_DICE,
            ONE_EMPTY_DISTANCE_MM,
            ONE_EMPTY_DISTANCE_MM,
            ONE_EMPTY_NSD,
            "pred" if pred_empty else "label",
            pred_ml,
            label_ml,
        )
    y_pred, y = pred_t[None, None].float(), label_t[None, None].float()  # (B=1, C=1, spatial)
    with warnings.catch_warnings():  # MONAI 1.6 warns about its own deprecated internal argument
        warnings.filterwarnings("ignore", message=".*always_return_as_numpy.*", category=FutureWarning)
        dice = compute_dice(y_pred, y, include_background=True)
        hd95 = compute_hausdorff_distance(y_pred, y, include_background=True, percentile=95, spacing=spacing)
        asd = compute_average_surface_distance(y_pred, y, include_background=True, symmetric=True, spacing=spacing)
        nsd = compute_surface_dice(
            y_pred, y, class_thresholds=[float(tolerance_mm)], include_background=True, spacing=spacing
        )
    return VolumeMetrics(float(dice), float(asd), float(hd95), float(nsd), "none", pred_ml, label_ml)


def label_volume_metrics(
    pred: np.ndarray | torch.Tensor,
    label: np.ndarray | torch.Tensor,
    labels: Iterable[int],
    spacing: Sequence[float],
    tolerance_mm: float = DEFAULT_TOLERANCE_MM,
) -> dict[int, VolumeMetrics]:
    """Per-class metrics of two label maps: ``{class value: binary_volume_metrics(pred == c, label == c)}``."""
    pred_t, label_t = _plain_tensor(pred), _plain_tensor(label)
    return {
        int(c): binary_volume_metrics(pred_t == c, label_t == c, spacing, tolerance_mm) for c in labels
    }


def _stats(values: np.ndarray) -> dict | None:
    """Mean, sample std (0 for one value) and median; inf propagates (std of values with an inf is inf)."""
    if values.size == 0:
        return None
    has_inf = bool(np.isinf(values).any())
    mean = math.inf if has_inf else float(values.mean())
    std = math.inf if has_inf else (float(values.std(ddof=1)) if values.size > 1 else 0.0)
    ordered = np.sort(values)
    mid = values.size // 2
    median = float(ordered[mid]) if values.size % 2 else float(0.5 * ordered[mid - 1] + 0.5 * ordered[mid])
    return {"mean": mean, "std": std, "median": median}


def summarise_volume_metrics(rows: Sequence[VolumeMetrics | Mapping]) -> dict:
    """Summary over cases of one class: counts, and mean/std/median per metric, never NaN.

    Distances additionally get ``n_inf``, ``n_finite`` and ``finite_{mean,std,median}`` (over the
    cases with a finite distance; ``None`` when there are none).
    """
    rows = [r.as_dict() if isinstance(r, VolumeMetrics) else dict(r) for r in rows]
    summary: dict = {
        "n": len(rows),
        "n_both_empty": sum(r["empty"] == "both" for r in rows),
        "n_one_empty": sum(r["empty"] in ("pred", "label") for r in rows),
        "n_pred_empty_only": sum(r["empty"] == "pred" for r in rows),
        "n_label_empty_only": sum(r["empty"] == "label" for r in rows),
    }
    for key in ("dice", "nsd", "asd_mm", "hd95_mm", "pred_ml", "label_ml"):
        values = np.array([float(r[key]) for r in rows], dtype=np.float64)
        if np.isnan(values).any():
            raise ValueError(f"{key}: NaN in per-case values; every case must follow the empty-mask policy")
        empty_stats = {"mean": None, "std": None, "median": None}
        entry = _stats(values) or dict(empty_stats)
        if key.endswith("_mm"):
            finite = values[np.isfinite(values)]
            entry["n_inf"] = int(values.size - finite.size)
            entry["n_finite"] = int(finite.size)
            entry.update({f"finite_{k}": v for k, v in (_stats(finite) or empty_stats).items()})
        summary[key] = entry
    return summary


def match_label_grid(
    pred: MetaTensor,
    label: MetaTensor,
    resample_label: bool = False,
    pred_name: str = "prediction",
    label_name: str = "label",
    atol: float = GRID_ATOL_MM,
) -> MetaTensor:
    """Return ``label`` on the prediction's grid (spatial MetaTensors without a channel axis).

    Same shape and affine (within ``atol``): ``label`` unchanged. Otherwise, with
    ``resample_label=True``, the label resampled onto the prediction grid by nearest neighbour
    (``monai.transforms.ResampleToMatch``, zeros outside the label's field of view); without it a
    ``ValueError`` naming both files and the ``--resample-label`` fix.
    """
    same_shape = tuple(pred.shape) == tuple(label.shape)
    pred_affine = np.asarray(pred.affine, dtype=np.float64)
    label_affine = np.asarray(label.affine, dtype=np.float64)
    same_rank = pred_affine.shape == label_affine.shape
    affine_diff = float(np.abs(pred_affine - label_affine).max()) if same_rank else math.inf
    if same_shape and affine_diff <= atol:
        return label
    if not resample_label:
        differences = []
        if not same_shape:
            differences.append(f"shape {tuple(pred.shape)} vs {tuple(label.shape)}")
        if affine_diff > atol:
            differences.append(f"affines differ by up to {affine_diff:.3g} mm")
        raise ValueError(
            f"{pred_name} and {label_name} are on different grids ({', '.join(differences)}); pass "
            "--resample-label to resample the label onto the prediction grid by nearest neighbour"
        )
    resampled = ResampleToMatch(mode="nearest", padding_mode="zeros")(label[None], img_dst=pred[None])[0]
    before = float(np.count_nonzero(np.asarray(label))) * abs(np.linalg.det(label_affine[:3, :3]))
    after = float(np.count_nonzero(np.asarray(resampled))) * abs(np.linalg.det(pred_affine[:3, :3]))
    if before > 0 and after < 0.99 * before:
        raise ValueError(
            f"{label_name}: {100 * (1 - after / before):.1f} % of its labelled volume lies outside the grid of "
            f"{pred_name}, so resampling would drop it; score a prediction that covers the whole label"
        )
    covered = ResampleToMatch(mode="nearest", padding_mode="zeros")(torch.ones_like(label)[None], img_dst=pred[None])[0]
    predicted = np.asarray(pred) != 0
    outside = int(np.count_nonzero(predicted & (np.asarray(covered) == 0)))
    if outside > 0.01 * max(1, int(np.count_nonzero(predicted))):
        raise ValueError(
            f"{pred_name}: {100 * outside / np.count_nonzero(predicted):.1f} % of its predicted voxels lie outside the "
            f"field of view of {label_name}, where they would count as false positives; score against a label "
            "that covers the whole prediction, or crop the prediction to the label"
        )
    return resampled
