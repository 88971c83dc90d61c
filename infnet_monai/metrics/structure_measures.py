"""Structure measures of the Inf-Net toolbox: S-measure and E-measure of one 2D map.

Both compare a map (H, W) with a binary GT (H, W) of the same size: :func:`s_measure` takes a
continuous map in [0, 1] (the toolbox's min-max normalised prediction), :func:`e_measure` a binary
map, and :func:`e_measure_from_counts` gives the E-measure from confusion counts (TP, FP, FN, TN),
vectorised over thresholds. Ports of the reference MATLAB code (``StructureMeasure.m``,
``S_object.m``, ``S_region.m``, ``Enhancedmeasure.m``); one deviation: an empty S-measure quadrant
(all foreground in the last row or column) adds 0 where MATLAB yields NaN. The per-image protocol
that uses them is in :mod:`infnet_monai.metrics.slices`.
"""

from __future__ import annotations

import numpy as np

__all__ = ["EPS", "s_measure", "e_measure", "e_measure_from_counts"]

EPS = float(np.finfo(np.float64).eps)
"""MATLAB ``eps`` (2.2204e-16), used where the toolbox guards a division."""


def _object_score(values: np.ndarray) -> float:
    """``Object`` of ``StructureMeasure.m``: 2x / (x^2 + 1 + sigma_x + eps), sigma with N-1 (MATLAB std)."""
    x = float(values.mean())
    sigma = float(values.std(ddof=1)) if values.size > 1 else 0.0
    return 2.0 * x / (x * x + 1.0 + sigma + EPS)


def _region_ssim(pred: np.ndarray, gt: np.ndarray) -> float:
    """``ssim`` of ``S_region.m``: the SSIM-like structural similarity of one quadrant."""
    n = pred.size
    dgt = gt.astype(np.float64)
    x, y = float(pred.mean()), float(dgt.mean())
    sigma_x2 = float(((pred - x) ** 2).sum()) / (n - 1 + EPS)
    sigma_y2 = float(((dgt - y) ** 2).sum()) / (n - 1 + EPS)
    sigma_xy = float(((pred - x) * (dgt - y)).sum()) / (n - 1 + EPS)
    alpha = 4 * x * y * sigma_xy
    beta = (x * x + y * y) * (sigma_x2 + sigma_y2)
    if alpha != 0:
        return alpha / (beta + EPS)
    return 1.0 if beta == 0 else 0.0


def _matlab_round(value: float) -> int:
    return int(np.floor(value + 0.5))  # MATLAB rounds halves away from zero (values here are > 0)


def _s_region(pred: np.ndarray, gt: np.ndarray) -> float:
    """Region-aware term: SSIM of the four quadrants around the GT centroid, area-weighted."""
    rows, cols = gt.shape
    total = float(gt.sum())
    col_x = _matlab_round(float(gt.sum(axis=0) @ np.arange(1, cols + 1)) / total)  # 1-based centroid
    row_y = _matlab_round(float(gt.sum(axis=1) @ np.arange(1, rows + 1)) / total)
    area = rows * cols
    w1 = col_x * row_y / area
    w2 = (cols - col_x) * row_y / area
    w3 = col_x * (rows - row_y) / area
    weights = (w1, w2, w3, 1.0 - w1 - w2 - w3)
    quadrants = (
        (slice(0, row_y), slice(0, col_x)),
        (slice(0, row_y), slice(col_x, cols)),
        (slice(row_y, rows), slice(0, col_x)),
        (slice(row_y, rows), slice(col_x, cols)),
    )
    score = 0.0
    for weight, (rs, cs) in zip(weights, quadrants):
        if pred[rs, cs].size:  # an empty quadrant has weight 0 (MATLAB would give NaN here)
            score += weight * _region_ssim(pred[rs, cs], gt[rs, cs])
    return score


def s_measure(pred: np.ndarray, gt: np.ndarray, alpha: float = 0.5) -> float:
    """Structure measure S = alpha * S_object + (1 - alpha) * S_region, clipped at 0.

    Source: Fan et al., "Structure-measure: A New Way to Evaluate Foreground Maps", ICCV 2017, and
    its reference code ``StructureMeasure.m`` / ``S_object.m`` / ``S_region.m``. All-background GT:
    1 - mean(pred); all-foreground GT: mean(pred).
    """
    pred = np.asarray(pred, dtype=np.float64)
    gt = np.asarray(gt, dtype=bool)
    fg_fraction = float(gt.mean())
    if fg_fraction == 0.0:
        return 1.0 - float(pred.mean())
    if fg_fraction == 1.0:
        return float(pred.mean())
    s_object = fg_fraction * _object_score(pred[gt]) + (1 - fg_fraction) * _object_score(1.0 - pred[~gt])
    score = alpha * s_object + (1 - alpha) * _s_region(pred, gt)
    return max(score, 0.0)


def e_measure_from_counts(tp, fp, fn, tn) -> np.ndarray:
    """E-measure from the confusion counts of a binary map (vectorised over thresholds).

    The enhanced alignment matrix takes only four values (FM, GT in {0, 1}), so its sum is the
    count-weighted sum of those four values.
    """
    tp, fp, fn, tn = (np.asarray(a, dtype=np.float64) for a in (tp, fp, fn, tn))
    n = tp + fp + fn + tn
    n_gt = tp + fn
    n_fm = tp + fp
    mu_fm, mu_gt = n_fm / n, n_gt / n
    total = np.zeros_like(n)
    for count, fm, g in ((tp, 1.0, 1.0), (fp, 1.0, 0.0), (fn, 0.0, 1.0), (tn, 0.0, 0.0)):
        a_fm, a_gt = fm - mu_fm, g - mu_gt
        align = 2.0 * a_gt * a_fm / (a_gt * a_gt + a_fm * a_fm + EPS)
        total = total + count * (align + 1.0) ** 2 / 4.0
    total = np.where(n_gt == 0, n - n_fm, total)  # all-background GT: sum(1 - FM)
    total = np.where(n_gt == n, n_fm, total)  # all-foreground GT: sum(FM)
    return total / (n - 1 + EPS)


def e_measure(binary_map: np.ndarray, gt: np.ndarray) -> float:
    """Enhanced-alignment measure of a binary map.

    Source: Fan et al., "Enhanced-alignment Measure for Binary Foreground Map Evaluation", IJCAI 2018,
    reference code ``Enhancedmeasure.m``: phi = 2 (GT - mu_GT)(FM - mu_FM) / ((GT - mu_GT)^2 +
    (FM - mu_FM)^2 + eps), E = sum((phi + 1)^2 / 4) / (H * W - 1 + eps); all-background GT uses
    1 - FM, all-foreground GT uses FM as the enhanced matrix.
    """
    fm = np.asarray(binary_map).astype(bool)
    gt = np.asarray(gt, dtype=bool)
    tp = np.sum(fm & gt)
    fp = np.sum(fm & ~gt)
    fn = np.sum(~fm & gt)
    tn = np.sum(~fm & ~gt)
    return float(e_measure_from_counts(tp, fp, fn, tn))
