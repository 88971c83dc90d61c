"""Folder-level evaluation: pair prediction and label files, score them, report per case and summary.

Two modes:

- ``volume``: NIfTI masks (``.nii``/``.nii.gz``) loaded with MONAI ``LoadImage`` (nibabel), scored
  in millimetres by :mod:`infnet_monai.metrics.volume` (binary, or per class with ``labels``).
  DICOM SEG files (``.dcm``, segment numbers as label values) are accepted on either side: placed
  on the grid of the series they reference, found in ``dicom_source``, or else on the grid of
  the NIfTI on the other side (:func:`infnet_monai.dicom.seg.load_seg`).
- ``slices``: PNG/JPEG slice images scored by the paper's toolbox protocol
  (:mod:`infnet_monai.metrics.slices`).

Files pair by name: the stem without ``.nii``/``.nii.gz`` (or the image suffix); in volume mode a
trailing ``_seg``, ``_mask`` or ``_pred`` is dropped from prediction names. Unpaired files, grids
that differ, and labels that are not binary (or not integer class maps with ``labels``) stop the
run with a one-line ``ValueError``. Reports go to ``.json`` (inf written as ``Infinity``) or
``.csv`` (policy and counts as leading ``#`` lines), written atomically.
"""

from __future__ import annotations

import csv
import inspect
import json
import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from monai.transforms import LoadImage

from infnet_monai.dicom.seg import is_seg_file
from infnet_monai.labels import class_folder
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
from infnet_monai.utils import atomic_output

__all__ = [
    "VOLUME_SUFFIXES",
    "SLICE_SUFFIXES",
    "PREDICTION_NAME_SUFFIXES",
    "case_name",
    "pair_files",
    "evaluate_volumes",
    "evaluate_slices",
    "evaluate_folders",
    "write_report",
    "format_report_table",
    "FolderEvaluation",
]

VOLUME_SUFFIXES = (".nii.gz", ".nii")
SLICE_SUFFIXES = (".png", ".jpg", ".jpeg")
PREDICTION_NAME_SUFFIXES = ("_seg", "_mask", "_pred")
MODES = ("volume", "slices")
_MAX_LISTED = 8


def _suffixes(mode: str) -> tuple[str, ...]:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    return VOLUME_SUFFIXES if mode == "volume" else SLICE_SUFFIXES


def case_name(path: str | os.PathLike, mode: str, prediction: bool) -> str | None:
    """Pairing key of a file, or None when its suffix does not belong to ``mode``."""
    name = Path(path).name
    lower = name.lower()
    for suffix in _suffixes(mode):
        if lower.endswith(suffix):
            stem = name[: -len(suffix)]
            if prediction and mode == "volume":
                for tail in PREDICTION_NAME_SUFFIXES:
                    if stem.endswith(tail) and len(stem) > len(tail):
                        return stem[: -len(tail)]
            return stem
    return None


def _listing(names: Sequence[str]) -> str:
    shown = ", ".join(sorted(names)[:_MAX_LISTED])
    return shown + (f" and {len(names) - _MAX_LISTED} more" if len(names) > _MAX_LISTED else "")


def _index_files(folder: Path, mode: str, prediction: bool) -> dict[str, Path]:
    if folder.is_file():
        files = [folder]
    elif folder.is_dir():
        files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    else:
        raise FileNotFoundError(f"{folder}: no such file or folder")
    index: dict[str, Path] = {}
    for path in files:
        key = case_name(path, mode, prediction)
        if key is None and mode == "volume" and path.suffix.lower() == ".dcm" and is_seg_file(path):
            key = case_name(path.with_suffix(".nii"), mode, prediction)  # a DICOM SEG: named as a NIfTI
        if key is None:
            continue
        if key in index:
            seg = [f for f in (index[key], path) if f.suffix.lower() == ".dcm"]
            if len(seg) == 1:  # the NIfTI and the DICOM SEG of one case (segment --output-type all): the NIfTI
                index[key] = index[key] if seg[0] is path else path
                continue
            raise ValueError(f"{folder}: {index[key].name} and {path.name} both pair as case {key!r}; keep one")
        index[key] = path
    if not index:
        other = "slices" if mode == "volume" else "volume"
        hint = f"; for {', '.join(_suffixes(other))} files pass --mode {other}" if any(
            case_name(p, other, prediction) for p in files
        ) else ""
        seg = " or DICOM SEG .dcm" if mode == "volume" else ""
        raise ValueError(f"{folder}: no {', '.join(_suffixes(mode))}{seg} files found{hint}")
    return index


def pair_files(pred: str | os.PathLike, label: str | os.PathLike, mode: str = "volume") -> list[tuple[str, Path, Path]]:
    """``[(case, prediction file, label file)]`` sorted by case; both may be folders or single files.

    Two single files pair with each other whatever their names. Raises ``ValueError`` listing the
    unpaired files of either side.
    """
    pred, label = Path(pred), Path(label)
    preds, labels = _index_files(pred, mode, True), _index_files(label, mode, False)
    if pred.is_file() and label.is_file():
        ((case, pred_file),), ((_, label_file),) = preds.items(), labels.items()
        return [(case, pred_file, label_file)]
    missing_label = [preds[k].name for k in preds.keys() - labels.keys()]
    missing_pred = [labels[k].name for k in labels.keys() - preds.keys()]
    if missing_label or missing_pred:
        parts = []
        if missing_label:
            parts.append(f"{len(missing_label)} prediction(s) without a label in {label}: {_listing(missing_label)}")
        if missing_pred:
            parts.append(f"{len(missing_pred)} label(s) without a prediction in {pred}: {_listing(missing_pred)}")
        raise ValueError("unpaired files: " + "; ".join(parts) + " (files pair by name; remove or rename them)")
    return [(k, preds[k], labels[k]) for k in sorted(preds)]


def _load_volume(path: Path, loader: LoadImage):
    try:
        image = loader(str(path))
    except Exception as exc:  # noqa: BLE001 - truncated or corrupt file: MONAI wraps the reader's error
        cause = exc
        while cause.__cause__ is not None:
            cause = cause.__cause__
        raise ValueError(
            f"{path}: unreadable ({cause.__class__.__name__}: {' '.join(str(cause).split())[:160]}); the file is "
            "truncated or corrupt, write it again"
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


def _output_format(path: str | os.PathLike) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in (".json", ".csv"):
        raise ValueError(f"{path}: report must end in .json or .csv")
    return suffix[1:]


def _csv_rows(report: dict) -> tuple[list[str], list[dict]]:
    """Columns and rows for CSV: per-case rows, then summary rows whose ``case`` names the statistic."""
    if "classes" in report:  # per-class slice reports: their rows with a class column
        columns, rows = ["class"], []
        for value, sub in report["classes"].items():
            sub_columns, sub_rows = _csv_rows(sub)
            columns += [c for c in sub_columns if c not in columns]
            rows += [{"class": value, **row} for row in sub_rows]
        return columns, rows
    columns = [k for k in report["cases"][0] if k not in ("pred_file", "label_file", "spacing_mm")]
    columns += ["pred_file", "label_file"]
    rows = [dict(row) for row in report["cases"]]
    if report["mode"] == "volume":
        stats = ("mean", "std", "median", "n_inf", "n_finite", "finite_mean", "finite_std", "finite_median")
        for c, summary in report["summary"].items():
            for stat in stats:
                values = {k: e[stat] for k, e in summary.items() if isinstance(e, dict) and stat in e}
                rows.append({"case": stat, "class": c, **values})
    else:
        for stat in ("mean", "std", "median"):
            rows.append({"case": stat, **{k: v[stat] for k, v in report["summary"]["per_image"].items()}})
        toolbox = report["summary"]["toolbox"]
        rows.append({"case": "max_over_thresholds", **{k: v["max"] for k, v in toolbox.items() if isinstance(v, dict)}})
    return columns, rows


def _csv_comments(report: dict) -> list[str]:
    lines = [f"mode: {report['mode']}", f"empty-mask policy: {report['empty_mask_policy']}"]
    if report["mode"] == "volume":
        lines.append(f"tolerance_mm: {report['tolerance_mm']:g}")
        for c, s in report["summary"].items():
            lines.append(f"class {c}: n={s['n']} n_both_empty={s['n_both_empty']} n_one_empty={s['n_one_empty']}")
    else:
        lines.append(f"protocol: {report['protocol']}")
    return lines


def write_report(report: dict, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write ``report`` as JSON or CSV (by suffix) via a temporary file and rename."""
    fmt = _output_format(path)
    with atomic_output(path, overwrite=overwrite) as tmp:
        with open(tmp, "w", newline="") as f:
            if fmt == "json":
                json.dump(report, f, indent=2)
                f.write("\n")
            else:
                for line in _csv_comments(report):
                    f.write(f"# {line}\n")
                columns, rows = _csv_rows(report)
                writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
                writer.writeheader()
                writer.writerows(rows)
    return Path(path)


def _fmt(value) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, float):
        return "inf" if math.isinf(value) else f"{value:.4f}"
    return str(value)


def format_report_table(report: dict) -> str:
    """Plain-text table: one line per case, then mean ± std and median per metric, and the policy."""
    if "classes" in report:
        return "\n".join(
            f"class {value} ({class_folder(int(value))} maps)\n{format_report_table(sub)}"
            for value, sub in report["classes"].items()
        )
    if report["mode"] == "volume":
        keys = ["dice", "asd_mm", "hd95_mm", "nsd", "pred_ml", "label_ml"]
        head = ["case", "class", *keys, "empty"]
    else:
        keys = ["dice", "sensitivity", "specificity", "s_measure", "e_measure", "mae", "dice_at_0.5"]
        head = ["case", *keys]
    table = [head] + [[_fmt(row.get(k)) for k in head] for row in report["cases"]]
    widths = [max(len(r[i]) for r in table) for i in range(len(head))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in table]
    if report["mode"] == "volume":
        lines.append(f"NSD tolerance {report['tolerance_mm']:g} mm")
        for c, s in report["summary"].items():
            lines.append(f"class {c}: n={s['n']}  both empty={s['n_both_empty']}  one empty={s['n_one_empty']}")
            for key in keys:
                e = s[key]
                line = f"  {key:<9} {_fmt(e['mean'])} ± {_fmt(e['std'])}  median {_fmt(e['median'])}"
                if "n_finite" in e and e["n_inf"]:
                    line += f"  finite mean {_fmt(e['finite_mean'])} over {e['n_finite']}"
                lines.append(line)
    else:
        toolbox = report["summary"]["toolbox"]
        lines.append(f"n={len(report['cases'])} images (toolbox protocol)")
        for key in keys:
            e, t = report["summary"]["per_image"][key], toolbox.get(key)
            extra = f"  [mean {_fmt(t['mean'])}, max {_fmt(t['max'])} over thresholds]" if isinstance(t, dict) else ""
            lines.append(f"  {key:<11} {_fmt(e['mean'])} ± {_fmt(e['std'])}  median {_fmt(e['median'])}{extra}")
    lines.append(f"empty-mask policy: {report['empty_mask_policy']}")
    return "\n".join(lines)


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
        _output_format(output_file)
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
