"""Folder-level evaluation: score paired prediction and label files, per case and in summary.

Two modes:

- ``volume``: NIfTI masks (``.nii``/``.nii.gz``) loaded with MONAI ``LoadImage`` (nibabel), scored
  in millimetres by :mod:`infnet_monai.metrics.volume` (binary, or per class with ``labels``).
  DICOM SEG files (``.dcm``, segment numbers as label values) are accepted on either side: placed
  on the grid of the series they reference, found in ``dicom_source``, or else on the grid of
  the NIfTI on the other side (:func:`infnet_monai.dicom.seg.load_seg`).
- ``slices``: PNG/JPEG slice images scored by the paper's toolbox protocol
  (:mod:`infnet_monai.metrics.slices`).

Files pair by case name (:mod:`infnet_monai.metrics.pairing`). Unpaired files, grids that differ,
and labels that are not binary (or not integer class maps with ``labels``) stop the run with a
one-line ``ValueError``. Reports are written and printed by :mod:`infnet_monai.metrics.reports`.
``case_name`` and ``pair_files`` are re-exported here for existing imports.
"""

from __future__ import annotations

import inspect
import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from monai.transforms import LoadImage

from infnet_monai.dicom.seg import is_seg_file
from infnet_monai.labels import class_folder
from infnet_monai.metrics.pairing import case_name, pair_files
from infnet_monai.metrics.reports import format_report_table, report_format, write_report
from infnet_monai.metrics.slices import (
    SLICE_EMPTY_POLICY,
    read_ground_truth,
    read_prediction_map,
    slice_scores,
    summarise_slice_scores,
)
from infnet_monai.metrics.volume import (
    DEFAULT_TOLERANCE_MM,
    DISTANCE_DEFINITIONS,
    EMPTY_MASK_POLICY,
    label_volume_metrics,
    match_label_grid,
    spacing_mm,
    summarise_volume_metrics,
)
from infnet_monai.utils.errors import one_line

__all__ = [
    "case_name",
    "pair_files",
    "evaluate_volumes",
    "evaluate_slices",
    "evaluate_folders",
    "FolderEvaluation",
]


def _load_volume(path: Path, loader: LoadImage):
    try:
        image = loader(str(path))
    except Exception as exc:  # noqa: BLE001 - truncated or corrupt file: MONAI wraps the reader's error
        cause = exc
        while cause.__cause__ is not None:
            cause = cause.__cause__
        raise ValueError(
            f"{path}: unreadable ({one_line(cause, with_type=True, first_only=True)}); the file is truncated or "
            "corrupt, write it again"
        ) from exc
    if image.ndim == 4 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim not in (2, 3):
        raise ValueError(f"{path}: expected a 2D or 3D mask, got shape {tuple(image.shape)}")
    return image


def _load_pair(pred_file: Path, label_file: Path, loader: LoadImage, dicom_source=None):
    """Prediction and label volumes; a DICOM SEG on its source series' grid (``dicom_source``),
    else on the other side's."""
    from infnet_monai.dicom.seg import load_seg

    pred = None if is_seg_file(pred_file) else _load_volume(pred_file, loader)
    label = None if is_seg_file(label_file) else _load_volume(label_file, loader)
    if pred is None:
        pred = load_seg(pred_file, label, dicom_source)
    if label is None:
        label = load_seg(label_file, pred, dicom_source)
    return pred, label


def _check_values(image, path: Path, labels: Sequence[int] | None, role: str) -> None:
    values = torch.unique(image.as_tensor() if hasattr(image, "as_tensor") else torch.as_tensor(image))
    shown = ", ".join(f"{v:g}" for v in values[:6].tolist()) + (", ..." if values.numel() > 6 else "")
    if labels is None:
        if not bool(torch.isin(values, torch.tensor([0.0, 1.0], dtype=values.dtype)).all()):
            fix = (
                "threshold the prediction to {0,1}, or pass --labels for class label maps"
                if role == "prediction"
                else "pass --labels with the class values to score per class"
            )
            raise ValueError(f"{path}: {role} values [{shown}] are not binary {{0,1}}; {fix}")
    elif not bool((values == torch.round(values)).all()):
        raise ValueError(f"{path}: {role} values [{shown}] are not integer class labels; save a label map")


def evaluate_volumes(
    pairs: Sequence[tuple[str, Path, Path]],
    labels: Sequence[int] | None = None,
    tolerance_mm: float = DEFAULT_TOLERANCE_MM,
    resample_label: bool = False,
    dicom_source: str | os.PathLike | None = None,
) -> dict:
    """Score NIfTI (or DICOM SEG) pairs; ``labels=None`` means binary masks in {0, 1} (class 1).
    ``dicom_source``: a folder holding the series the SEG files reference (see the module docstring)."""
    loader = LoadImage(reader="NibabelReader", image_only=True)
    classes = [1] if labels is None else [int(c) for c in labels]
    if not (math.isfinite(tolerance_mm) and tolerance_mm >= 0):
        raise ValueError(f"--tolerance must be a finite number of mm >= 0, got {tolerance_mm}")
    if labels is not None and (not classes or 0 in classes):
        raise ValueError(f"--labels must list foreground class values (not 0), got {list(labels)}")
    cases, per_class = [], {c: [] for c in classes}
    for case, pred_file, label_file in pairs:
        pred, label = _load_pair(pred_file, label_file, loader, dicom_source)
        _check_values(label, label_file, labels, "label")
        _check_values(pred, pred_file, labels, "prediction")
        matched = match_label_grid(pred, label, resample_label, str(pred_file), str(label_file))
        spacing = spacing_mm(pred)
        for c, metrics in label_volume_metrics(pred, matched, classes, spacing, tolerance_mm).items():
            per_class[c].append(metrics)
            cases.append(
                {
                    "case": case,
                    "class": c,
                    **metrics.as_dict(),
                    "spacing_mm": [round(s, 6) for s in spacing],
                    "label_resampled": matched is not label,
                    "pred_file": str(pred_file),
                    "label_file": str(label_file),
                }
            )
    return {
        "mode": "volume",
        "tolerance_mm": float(tolerance_mm),
        "labels": classes,
        "empty_mask_policy": EMPTY_MASK_POLICY,
        "definitions": DISTANCE_DEFINITIONS,
        "cases": cases,
        "summary": {str(c): summarise_volume_metrics(rows) for c, rows in per_class.items()},
    }


def evaluate_slices(pairs: Sequence[tuple[str, Path, Path]], class_value: int | None = None) -> dict:
    """Score slice-image pairs by the toolbox protocol; per-image rows average over thresholds.
    ``class_value``: the labels are class-index images, scored against that class."""
    cases, scores = [], []
    for case, pred_file, label_file in pairs:
        score = slice_scores(read_prediction_map(pred_file), read_ground_truth(label_file, class_value))
        scores.append(score)
        cases.append(
            {
                "case": case,
                **score.row(),
                "resized": score.resized,
                "pred_file": str(pred_file),
                "label_file": str(label_file),
            }
        )
    protocol = summarise_slice_scores(scores)
    curves = protocol.pop("curves")
    per_image = {
        key: _mean_std_median(np.array([row[key] for row in cases], dtype=np.float64))
        for key in ("dice", "sensitivity", "specificity", "s_measure", "e_measure", "mae", "dice_at_0.5")
    }
    return {
        "mode": "slices",
        "empty_mask_policy": SLICE_EMPTY_POLICY,
        "protocol": "Inf-Net evaluation toolbox: 256 thresholds 1:-1/255:0; dice/sensitivity/specificity/"
        "e_measure as mean and max over thresholds of per-threshold image means; s_measure, mae: image means; "
        "dice_at_0.5 (not in the toolbox): Dice of the map as written, thresholded at 0.5, mean over images",
        "cases": cases,
        "summary": {"toolbox": protocol, "per_image": per_image},
        "curves": curves,
    }


def _mean_std_median(values: np.ndarray) -> dict:
    return {
        "mean": float(values.mean()),
        "std": float(values.std(ddof=1)) if values.size > 1 else 0.0,
        "median": float(np.median(values)),
    }


def evaluate_folders(
    pred: str | os.PathLike,
    label: str | os.PathLike,
    mode: str = "volume",
    tolerance_mm: float = DEFAULT_TOLERANCE_MM,
    labels: Sequence[int] | None = None,
    resample_label: bool = False,
    output_file: str | os.PathLike | None = None,
    overwrite: bool = False,
    dicom_source: str | os.PathLike | None = None,
) -> dict:
    """Pair, score and (optionally) write a report; returns the report dict.

    Args:
        pred, label: folders (or two single files) of predictions and labels.
        mode: ``"volume"`` (NIfTI, mm metrics) or ``"slices"`` (PNG/JPEG, toolbox protocol).
        tolerance_mm: NSD tolerance (volume mode).
        labels: class values to score per class; None = binary {0, 1} masks. Slices mode: the
            labels are class-index images and the maps of class ``c`` are in
            ``pred/<class_folder(c)>`` (``GGO``, ``Consolidation``: as ``predict-slices --classes
            patterns`` writes them).
        resample_label: resample labels onto the prediction grid (nearest) when grids differ.
        output_file: ``.json`` or ``.csv`` report path; None writes nothing.
        overwrite: replace an existing ``output_file``.
        dicom_source: volume mode: a folder holding the DICOM series that SEG files among ``pred``
            and ``label`` reference (searched below too); None: a SEG is placed on the grid of the
            NIfTI it is compared with.
    """
    if output_file is not None:
        report_format(output_file)
        if Path(output_file).exists() and not overwrite:
            raise FileExistsError(f"{output_file}: output exists; pass --overwrite to replace it")
    if mode == "slices" and resample_label:
        raise ValueError("--resample-label applies to --mode volume only")
    if mode == "slices" and dicom_source is not None:
        raise ValueError("--dicom-source applies to --mode volume only")
    if mode == "volume":
        pairs = pair_files(pred, label, mode)
        report = evaluate_volumes(pairs, labels=labels, tolerance_mm=tolerance_mm, resample_label=resample_label,
                                  dicom_source=dicom_source)
    elif labels is None:
        report = evaluate_slices(pair_files(pred, label, mode))
    else:  # one map folder per class (infnet-monai predict-slices --classes patterns), class-index labels
        per_class = {
            str(value): evaluate_slices(pair_files(Path(pred) / class_folder(value), label, mode), class_value=value)
            for value in labels
        }
        first = next(iter(per_class.values()))
        report = {"mode": "slices", "empty_mask_policy": first["empty_mask_policy"], "protocol": first["protocol"],
                  "classes": per_class}
    report = {"pred": str(pred), "label": str(label), **report}
    if output_file is not None:
        write_report(report, output_file, overwrite=overwrite)
    return report


class FolderEvaluation:
    """Callable evaluation for configs: ``FolderEvaluation(pred_dir, label_dir, **options).run()``.

    ``options`` are the keyword arguments of :func:`evaluate_folders` (``mode``, ``tolerance_mm``,
    ``labels``, ``resample_label``, ``output_file``, ``overwrite``, ``dicom_source``), checked here. The bundle's
    ``configs/evaluate.json`` and the ``infnet-monai evaluate`` command both run through this
    class; ``run`` returns the report and prints its table unless ``print_table=False``.
    """

    def __init__(
        self, pred_dir: str | os.PathLike, label_dir: str | os.PathLike, print_table: bool = True, **options
    ) -> None:
        inspect.signature(evaluate_folders).bind(pred_dir, label_dir, **options)  # TypeError on unknown options
        self.pred_dir = pred_dir
        self.label_dir = label_dir
        self.print_table = bool(print_table)
        self.options = options

    def run(self) -> dict:
        report = evaluate_folders(self.pred_dir, self.label_dir, **self.options)
        if self.print_table:
            print(format_report_table(report))
            if self.options.get("output_file") is not None:
                print(f"report written to {self.options['output_file']}")
        return report
