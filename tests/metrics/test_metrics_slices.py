"""The paper's 2D protocol on small hand-computed masks and maps."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from PIL import Image

from infnet_monai.metrics.slices import (
    THRESHOLDS,
    e_measure,
    mean_absolute_error,
    normalise_map,
    read_ground_truth,
    read_prediction_map,
    resize_map,
    s_measure,
    slice_scores,
    summarise_slice_scores,
    threshold_scores,
)

# 4x4 GT with the top-left 2x2 block as foreground (|GT| = 4, 12 background pixels)
GT = np.zeros((4, 4), bool)
GT[:2, :2] = True
# foreground values {1, 1, 0.5, 0}; background values {0.5, 0.25, ten zeros}
PRED = np.array(
    [
        [1.0, 1.0, 0.5, 0.0],
        [0.5, 0.0, 0.0, 0.0],
        [0.0, 0.0, 0.25, 0.0],
        [0.0, 0.0, 0.0, 0.0],
    ]
)


def test_thresholds_match_matlab_colon():
    assert THRESHOLDS.shape == (256,) and THRESHOLDS[0] == 1.0 and THRESHOLDS[-1] == 0.0
    step = -1.0 / 255.0
    for k in range(128):  # MATLAB 1:-1/255:0 builds the first half from 1, the second half from 0
        assert THRESHOLDS[k] == 1.0 + k * step
        assert THRESHOLDS[255 - k] == 0.0 - k * step
    np.testing.assert_allclose(THRESHOLDS, np.arange(255, -1, -1) / 255, atol=1e-15)


def test_normalise_map_min_max_and_constant():
    np.testing.assert_allclose(normalise_map(np.array([[0.2, 0.6], [0.4, 0.3]])), [[0, 1], [0.5, 0.25]], atol=1e-15)
    np.testing.assert_array_equal(normalise_map(np.full((3, 3), 0.7)), np.zeros((3, 3)))


def test_dice_sensitivity_specificity_by_hand():
    curves = threshold_scores(PRED, GT)
    # t in (0.5, 1]  (t = m/255, m = 255..128, 128 thresholds): TP 2, FP 0
    # t in (0.25, 0.5] (m = 127..64, 64 thresholds):            TP 3, FP 1
    # t in (0, 0.25]  (m = 63..1, 63 thresholds):               TP 3, FP 2
    # t = 0 (1 threshold): everything predicted:                TP 4, FP 12
    blocks = [(128, 2 * 2 / (4 + 2), 2 / 4, 12 / 12), (64, 2 * 3 / (4 + 4), 3 / 4, 11 / 12),
              (63, 2 * 3 / (4 + 5), 3 / 4, 10 / 12), (1, 2 * 4 / (4 + 16), 4 / 4, 0 / 12)]
    expected = {name: np.concatenate([[b[i]] * b[0] for b in blocks]) for i, name in
                ((1, "dice"), (2, "sensitivity"), (3, "specificity"))}
    for name in expected:
        np.testing.assert_allclose(curves[name], expected[name], atol=1e-12, err_msg=name)
    assert curves["dice"].mean() == pytest.approx((128 * 2 / 3 + 64 * 0.75 + 63 * 2 / 3 + 0.4) / 256)


def test_no_true_positive_scores_zero():
    curves = threshold_scores(np.where(GT, 0.0, 1.0), GT)  # predicts exactly the background
    for name in ("dice", "sensitivity", "specificity"):
        assert curves[name][:-1].max() == 0.0  # TP = 0 at every threshold above 0 -> all three 0
    assert curves["dice"][-1] == pytest.approx(8 / 20)  # t = 0 selects all pixels: TP 4


def _e_measure_by_hand(fm: np.ndarray, gt: np.ndarray) -> float:
    """Enhanced alignment matrix pixel by pixel in exact fractions (eps dropped)."""
    n = gt.size
    mu_fm, mu_gt = Fraction(int(fm.sum()), n), Fraction(int(gt.sum()), n)
    total = Fraction(0)
    for f, g in zip(fm.ravel(), gt.ravel()):
        a_f, a_g = int(f) - mu_fm, int(g) - mu_gt
        den = a_f * a_f + a_g * a_g
        align = 2 * a_f * a_g / den if den else Fraction(0)
        total += (align + 1) ** 2 / 4
    return float(total / (n - 1))


def test_e_measure_by_hand():
    n = 16
    assert e_measure(GT, GT) == pytest.approx(n / (n - 1))  # perfect map: every entry is 1
    assert e_measure(np.zeros_like(GT), GT) == pytest.approx((n / 4) / (n - 1))  # empty map: all 1/4
    two_hits = np.zeros_like(GT)
    two_hits[0, :2] = True
    # TP 2, FN 2, TN 12: entries 0.98827 (TP), 0.11413 (FN), 0.81 (TN) -> 11.9248 / 15
    assert e_measure(two_hits, GT) == pytest.approx(_e_measure_by_hand(two_hits, GT), rel=1e-12)
    assert e_measure(two_hits, GT) == pytest.approx(0.794987, abs=1e-6)
    three = np.zeros_like(GT)
    three[3, :3] = True
    assert e_measure(three, np.zeros_like(GT)) == pytest.approx(13 / 15)  # all-background GT: sum(1 - FM)
    assert e_measure(three, np.ones_like(GT)) == pytest.approx(3 / 15)  # all-foreground GT: sum(FM)


def test_s_measure_by_hand():
    assert s_measure(GT.astype(float), GT) == pytest.approx(1.0)
    # uniform 0.5: S_object = 2*0.5 / (0.25 + 1) = 0.8 on both sides; every quadrant around the
    # centroid (X = Y = 2) is constant in both maps -> ssim 1 -> S_region = 1
    assert s_measure(np.full((4, 4), 0.5), GT) == pytest.approx(0.5 * 0.8 + 0.5 * 1.0)
    # one false-positive pixel in the top-right quadrant
    pred = GT.astype(float)
    pred[0, 2] = 1.0
    x = 11 / 12  # background object term: mean of 1 - pred, sample std sqrt(1/12)
    o_bg = 2 * x / (x * x + 1 + np.sqrt(1 / 12))
    s_object = 0.25 * 1.0 + 0.75 * o_bg
    # quadrants: LT, LB, RB constant in both maps -> 1; RT: GT all 0, pred mean 0.25 -> alpha 0, beta > 0 -> 0
    s_region = 0.25 * (1 + 0 + 1 + 1)
    assert s_measure(pred, GT) == pytest.approx(0.5 * s_object + 0.5 * s_region, abs=1e-12)
    # special cases of the GT
    assert s_measure(np.full((4, 4), 0.25), np.zeros((4, 4), bool)) == pytest.approx(0.75)
    assert s_measure(np.full((4, 4), 0.25), np.ones((4, 4), bool)) == pytest.approx(0.25)


def test_constant_prediction_becomes_zeros():
    scores = slice_scores(np.full((4, 4), 0.6), GT)
    assert scores.mae == pytest.approx(4 / 16)  # normalised to zeros: error 1 on the 4 GT pixels
    assert scores.dice[:-1].max() == 0.0 and scores.dice[-1] == pytest.approx(0.4)  # only t = 0 hits
    np.testing.assert_allclose(scores.e_measure, 4 / 15)  # zeros > t never holds: empty map
    # S_object = 0.75 * (2 / (1 + 1)) ; all quadrants constant -> S_region = 1
    assert scores.s_measure == pytest.approx(0.5 * 0.75 + 0.5 * 1.0)


def test_all_background_gt_image():
    pred = np.zeros((4, 4))
    pred[0, 0], pred[1, 1] = 1.0, 0.5
    scores = slice_scores(pred, np.zeros((4, 4), bool))
    assert scores.dice.max() == scores.sensitivity.max() == scores.specificity.max() == 0.0
    assert scores.s_measure == pytest.approx(1 - 1.5 / 16)
    assert scores.mae == pytest.approx(1.5 / 16)
    # pred > t: none at t = 1, one pixel for t in [0.5, 1) (127 thresholds), two below (128)
    assert scores.e_measure.mean() == pytest.approx((16 / 15 + 127 * 15 / 15 + 128 * 14 / 15) / 256)


def test_summary_means_per_threshold_then_mean_and_max():
    a = slice_scores(PRED, GT)
    b = slice_scores(GT.astype(float), GT)  # perfect: Dice 1 except t = 0 (8/20)
    summary = summarise_slice_scores([a, b])
    column = (a.dice + b.dice) / 2
    assert summary["dice"]["mean"] == pytest.approx(column.mean())
    assert summary["dice"]["max"] == pytest.approx((0.75 + 1.0) / 2)  # best threshold in (0.25, 0.5]
    assert summary["s_measure"] == pytest.approx((a.s_measure + 1.0) / 2)
    assert summary["mae"] == pytest.approx((mean_absolute_error(PRED, GT) + 0.0) / 2)
    assert len(summary["curves"]["dice"]) == 256


def test_reading_and_resizing(tmp_path):
    gt = np.array([[0, 128], [129, 255]], np.uint8)
    Image.fromarray(gt).save(tmp_path / "gt.png")
    np.testing.assert_array_equal(read_ground_truth(tmp_path / "gt.png"), [[False, False], [True, True]])
    rgb = np.zeros((2, 2, 3), np.uint8)
    rgb[0, 0] = (255, 255, 255)
    rgb[1, 1] = (255, 0, 0)  # gray 76 -> background
    Image.fromarray(rgb).save(tmp_path / "gt_rgb.png")
    np.testing.assert_array_equal(read_ground_truth(tmp_path / "gt_rgb.png"), [[True, False], [False, False]])
    Image.fromarray(np.array([[0, 51], [102, 255]], np.uint8)).save(tmp_path / "pred.png")
    np.testing.assert_allclose(read_prediction_map(tmp_path / "pred.png"), [[0, 0.2], [0.4, 1.0]], atol=1e-15)
    # bilinear, align_corners=False: 1x2 [0, 1] -> 1x4 [0, 0.25, 0.75, 1]
    np.testing.assert_allclose(resize_map(np.array([[0.0, 1.0]]), (1, 4)), [[0, 0.25, 0.75, 1]], atol=1e-12)
