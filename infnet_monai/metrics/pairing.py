"""Pairing of prediction and label files by case name, for folder-level evaluation.

A file's case name is its name without the mode's suffix: ``.nii.gz``/``.nii`` in ``volume`` mode
(a DICOM SEG ``.dcm`` is named as if it were a ``.nii``), ``.png``/``.jpg``/``.jpeg`` in ``slices``
mode (case-insensitive); in volume mode a trailing ``_seg``, ``_mask`` or ``_pred`` is dropped from
prediction names. :func:`pair_files` returns ``(case, prediction file, label file)`` triples sorted
by case and raises a one-line ``ValueError`` for unpaired files, or for two files of one case (a
NIfTI and a DICOM SEG of one case keep the NIfTI).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from infnet_monai.dicom.seg import is_seg_file
from infnet_monai.naming import strip_suffix

__all__ = [
    "VOLUME_SUFFIXES",
    "SLICE_SUFFIXES",
    "PREDICTION_NAME_SUFFIXES",
    "MODES",
    "case_name",
    "pair_files",
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
    stem = "" if name.lower() in _suffixes(mode) else strip_suffix(name, _suffixes(mode))
    if stem and prediction and mode == "volume":
        return _strip_tail(stem, PREDICTION_NAME_SUFFIXES)
    return stem


def _strip_tail(stem: str, tails: Sequence[str]) -> str:
    """``stem`` less the first of ``tails`` it ends with (case-sensitive), unless that is all of it."""
    for tail in tails:
        if stem.endswith(tail) and len(stem) > len(tail):
            return stem[: -len(tail)]
    return stem


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
