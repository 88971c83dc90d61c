"""The Inf-Net paper's 2D evaluation protocol for slice images (Fan et al., IEEE TMI 2020).

Reproduces the authors' MATLAB evaluation toolbox (``EvaluationTool/main.m`` with
``Fmeasure_calu.m``, ``StructureMeasure.m``, ``Enhancedmeasure.m``) per image:

1. GT: colour images to gray (MATLAB ``rgb2gray`` weights), then ``gt > 128`` (1-bit images are
   used as they are).
2. Prediction: first channel, scaled to [0, 1] like MATLAB ``im2double``; resized to the GT size
   (bilinear) when the sizes differ; min-max normalised to [0, 1] (``mapminmax(x, 0, 1)``:
   ``(x - min) * (1 / (max - min))``); a constant map becomes all zeros.
3. 256 thresholds ``1:-1/255:0`` (built like MATLAB's colon operator, so threshold values match the
   toolbox bit for bit). Dice, sensitivity and specificity of ``pred >= t``, each 0 when there is no
   true positive; the E-measure of ``pred > t`` (strict, as ``main.m`` binarises for it).
4. S-measure (alpha = 0.5) and MAE on the normalised map.

The S-measure and E-measure themselves are in :mod:`infnet_monai.metrics.structure_measures`
(``s_measure``, ``e_measure`` and ``EPS`` are re-exported here); this module reads the images,
thresholds the maps, and scores and summarises images.

Over a folder: per-threshold means over images, then the mean and the max over the 256 thresholds
(``meanDic``, ``maxDic``, ...); S-measure and MAE are means over images.

Deviations, all in corner cases the toolbox does not handle: a constant prediction becomes zeros
(MATLAB's ``mapminmax`` would leave it unchanged; the authors' test script saves it as zeros); an
all-foreground GT gets specificity 1 where TP > 0 (MATLAB: 0/0 = NaN); an empty S-measure quadrant
(all foreground in the last row or column) adds 0 where MATLAB yields NaN. The toolbox resizes a
mismatched map with MATLAB ``imresize`` (bicubic); here it is bilinear.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from monai.transforms import Resize
from monai.utils import convert_to_numpy
from PIL import Image

from infnet_monai.metrics.structure_measures import EPS, e_measure, e_measure_from_counts, s_measure

__all__ = [
    "EPS",
    "THRESHOLDS",
    "GT_THRESHOLD",
    "SLICE_EMPTY_POLICY",
    "matlab_colon",
    "read_ground_truth",
    "read_prediction_map",
    "resize_map",
    "normalise_map",
    "threshold_scores",
    "s_measure",
    "e_measure",
    "e_measure_curve",
    "mean_absolute_error",
    "SliceScores",
    "slice_scores",
    "summarise_slice_scores",
]

GT_THRESHOLD = 128
"""Ground-truth pixels with gray value > 128 are foreground."""


def matlab_colon(start: float, step: float, stop: float) -> np.ndarray:
    """``start:step:stop`` computed like MATLAB's colon operator (symmetric about the midpoint).

    Source: C. Moler, "How the colon operator works" (MathWorks blog, 2011): the first half is
    ``start + k*step``, the second half ``stop - k*step`` counted from the end.
    """
    n = int(round((stop - start) / step))
    values = np.empty(n + 1, dtype=np.float64)
    k = np.arange(n // 2 + 1, dtype=np.float64)
    values[: n // 2 + 1] = start + k * step
    values[n - np.arange(n // 2 + 1)] = stop - k * step
    if n % 2 == 0:
        values[n // 2] = (start + stop) / 2
    return values


THRESHOLDS = matlab_colon(1.0, -1.0 / 255.0, 0.0)
"""The toolbox's 256 thresholds, 1 down to 0 in steps of 1/255."""

SLICE_EMPTY_POLICY = (
    "toolbox rules: Dice/sensitivity/specificity are 0 at a threshold with no true positive; "
    "S-measure is 1 - mean(pred) for an all-background GT and mean(pred) for an all-foreground GT; "
    "E-measure uses 1 - FM (all-background GT) or FM (all-foreground GT) as its enhanced matrix; "
    "a constant prediction map normalises to zeros"
)
"""One-line statement of how empty masks and maps are scored, written into every slice report."""


def _read_array(path: str | os.PathLike) -> np.ndarray:
    """Image as MATLAB ``imread`` returns it: bool (1-bit), uint8/uint16, palette indices, HxWxC."""
    with Image.open(path) as img:
        if img.mode in ("I", "I;16", "I;16B", "I;16L"):
            array = np.asarray(img)
            if array.min() < 0 or array.max() > 65535:
                raise ValueError(f"{path}: 32-bit integer image; save the map as 8- or 16-bit PNG")
            return array.astype(np.uint16)
        if img.mode not in ("1", "L", "P", "LA", "RGB", "RGBA"):
            raise ValueError(f"{path}: unsupported image mode {img.mode!r}; save it as 8-bit gray or RGB PNG")
        return np.asarray(img)


def read_ground_truth(path: str | os.PathLike, class_value: int | None = None) -> np.ndarray:
    """Binary GT (H, W) bool: ``rgb2gray`` for colour, then ``> 128`` (``main.m``); with
    ``class_value``, the pixels of that class in a class-index (palette or gray) image."""
    gt = _read_array(path)
    if class_value is not None:
        if gt.ndim != 2:
            raise ValueError(f"{path}: per-class scoring needs a class-index image (palette or gray), got shape {gt.shape}")
        return gt == class_value
    if gt.dtype == bool:
        return gt
    if gt.ndim == 3:
        if gt.shape[2] >= 3:  # MATLAB rgb2gray weights, rounded back to the integer type
            rgb = gt[..., :3].astype(np.float64)
            gray = rgb @ np.array([0.298936021293775, 0.587043074451121, 0.114020904255103])
            gt = np.round(gray).astype(gt.dtype)
        else:
            gt = gt[..., 0]
    return gt > GT_THRESHOLD


def read_prediction_map(path: str | os.PathLike) -> np.ndarray:
    """Prediction map (H, W) float64 in [0, 1]: first channel, ``im2double`` scaling (/255, /65535)."""
    pred = _read_array(path)
    if pred.ndim == 3:
        pred = pred[..., 0]
    if pred.dtype == bool:
        return pred.astype(np.float64)
    scale = 65535.0 if pred.dtype == np.uint16 else 255.0
    return pred.astype(np.float64) / scale


def resize_map(pred: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Bilinear resize (MONAI ``Resize``, align_corners=False, no anti-aliasing) of a 2D map to ``shape``."""
    if tuple(pred.shape) == tuple(shape):
        return pred
    size = tuple(int(s) for s in shape)
    resize = Resize(spatial_size=size, mode="bilinear", align_corners=False, dtype=torch.float64)
    return convert_to_numpy(resize(torch.as_tensor(pred, dtype=torch.float64)[None])[0], dtype=np.float64)


def normalise_map(pred: np.ndarray) -> np.ndarray:
    """Min-max normalisation to [0, 1] like MATLAB ``mapminmax(x, 0, 1)``; a constant map gives zeros.

    Source: MATLAB ``mapminmax`` (y = (ymax - ymin) * (x - xmin) / (xmax - xmin) + ymin), applied
    as ``(x - xmin) * gain`` with ``gain = 1 / (xmax - xmin)``.
    """
    pred = np.asarray(pred, dtype=np.float64)
    low, high = float(pred.min()), float(pred.max())
    if not high > low:
        return np.zeros_like(pred)
    return (pred - low) * (1.0 / (high - low))


def _count_at_least(sorted_values: np.ndarray, thresholds: np.ndarray, strict: bool) -> np.ndarray:
    """How many of ``sorted_values`` are >= (or > when ``strict``) each threshold."""
    side = "right" if strict else "left"
    return sorted_values.size - np.searchsorted(sorted_values, thresholds, side=side)


def _confusion(pred: np.ndarray, gt: np.ndarray, thresholds: np.ndarray, strict: bool) -> tuple[np.ndarray, ...]:
    """TP, FP, FN, TN per threshold for ``pred >= t`` (``pred > t`` when ``strict``)."""
    fg = np.sort(pred[gt], kind="stable")
    bg = np.sort(pred[~gt], kind="stable")
    tp = _count_at_least(fg, thresholds, strict).astype(np.float64)
    fp = _count_at_least(bg, thresholds, strict).astype(np.float64)
    return tp, fp, fg.size - tp, bg.size - fp


def threshold_scores(
    pred: np.ndarray, gt: np.ndarray, thresholds: np.ndarray = THRESHOLDS
) -> dict[str, np.ndarray]:
    """Dice, sensitivity, specificity of ``pred >= t`` per threshold; all 0 where TP = 0.

    Source: ``Fmeasure_calu.m`` of the Inf-Net toolbox: Dice = 2TP / (|GT| + |P|),
    sensitivity = TP / |GT|, specificity = TN / (TN + FP).
    """
    tp, fp, fn, tn = _confusion(pred, np.asarray(gt, dtype=bool), np.asarray(thresholds), strict=False)
    hit = tp > 0
    return {
        "dice": _ratio(2 * tp, (tp + fn) + (tp + fp), hit),
        "sensitivity": _ratio(tp, tp + fn, hit),
        # an all-foreground GT has no negatives: specificity 1 (MATLAB would give 0/0 = NaN)
        "specificity": np.where(hit & (tn + fp == 0), 1.0, _ratio(tn, tn + fp, hit & (tn + fp > 0))),
    }


def _ratio(num: np.ndarray, den: np.ndarray, where: np.ndarray) -> np.ndarray:
    """``num / den`` where ``where`` holds, 0 elsewhere."""
    out = np.zeros_like(num, dtype=np.float64)
    np.divide(num, den, out=out, where=where)
    return out


def e_measure_curve(pred: np.ndarray, gt: np.ndarray, thresholds: np.ndarray = THRESHOLDS) -> np.ndarray:
    """E-measure of ``pred > t`` per threshold (``main.m`` binarises strictly for it)."""
    return e_measure_from_counts(*_confusion(pred, np.asarray(gt, dtype=bool), np.asarray(thresholds), strict=True))


def mean_absolute_error(pred: np.ndarray, gt: np.ndarray) -> float:
    """MAE = mean |GT - pred| on the normalised map (``main.m``)."""
    return float(np.abs(np.asarray(gt, dtype=np.float64) - np.asarray(pred, dtype=np.float64)).mean())


@dataclass
class SliceScores:
    """Scores of one image: per-threshold curves (256,) and scalar S-measure and MAE; besides
    the toolbox, ``dice_at_half``: Dice of the map as given (not normalised) thresholded at 0.5
    (1 when both it and the GT are empty)."""

    dice: np.ndarray
    sensitivity: np.ndarray
    specificity: np.ndarray
    e_measure: np.ndarray
    s_measure: float
    mae: float
    resized: bool = field(default=False)
    dice_at_half: float = field(default=float("nan"))

    def row(self) -> dict:
        """Per-image row: curve metrics averaged over thresholds."""
        return {
            "dice": float(self.dice.mean()),
            "sensitivity": float(self.sensitivity.mean()),
            "specificity": float(self.specificity.mean()),
            "s_measure": self.s_measure,
            "e_measure": float(self.e_measure.mean()),
            "mae": self.mae,
            "dice_at_0.5": self.dice_at_half,
        }


def slice_scores(pred_map: np.ndarray, gt: np.ndarray) -> SliceScores:
    """Toolbox scores of one image: ``pred_map`` (h, w) in [0, 1] (any size), ``gt`` (H, W) bool."""
    gt = np.asarray(gt, dtype=bool)
    resized = tuple(pred_map.shape) != tuple(gt.shape)
    probabilities = resize_map(np.asarray(pred_map, dtype=np.float64), gt.shape)
    binary = probabilities >= 0.5
    both = int(gt.sum()) + int(binary.sum())
    dice_at_half = 2.0 * float(np.logical_and(binary, gt).sum()) / both if both else 1.0
    pred = normalise_map(probabilities)
    curves = threshold_scores(pred, gt)
    return SliceScores(
        dice=curves["dice"],
        sensitivity=curves["sensitivity"],
        specificity=curves["specificity"],
        e_measure=e_measure_curve(pred, gt),
        s_measure=s_measure(pred, gt),
        mae=mean_absolute_error(pred, gt),
        resized=resized,
        dice_at_half=dice_at_half,
    )


def summarise_slice_scores(scores: Sequence[SliceScores]) -> dict:
    """Toolbox summary over images: mean and max over thresholds of the per-threshold image means.

    Returns ``{"dice": {"mean": meanDic, "max": maxDic}, ..., "s_measure": Sm, "mae": MAE,
    "curves": {name: list of 256 per-threshold means}}`` (keys as in ``main.m``'s output).
    """
    if not scores:
        raise ValueError("no images to summarise")
    summary: dict = {}
    curves: dict = {"thresholds": THRESHOLDS.tolist()}
    for name in ("dice", "sensitivity", "specificity", "e_measure"):
        column = np.mean(np.stack([getattr(s, name) for s in scores]), axis=0)
        curves[name] = column.tolist()
        summary[name] = {"mean": float(column.mean()), "max": float(column.max())}
    summary["s_measure"] = float(np.mean([s.s_measure for s in scores]))
    summary["mae"] = float(np.mean([s.mae for s in scores]))
    summary["curves"] = curves
    return summary
