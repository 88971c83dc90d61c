"""``infnet-monai report``: burden JSON, CSV row and QC PNG for a CT and an infection mask."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from monai.data import MetaTensor
from monai.transforms import Orientation

from infnet_monai.naming import case_name
from infnet_monai.report.burden import infection_burden, update_report_csv, write_report_json
from infnet_monai.report.qc import burden_lines, write_qc_png
from infnet_monai.transforms.io import LoadCT
from infnet_monai.transforms.chain import ct_lung_labels
from infnet_monai.utils.geometry import RAS_LABELS, affine_of, check_same_geometry

__all__ = ["load_volume", "make_report", "report_volumes"]


def load_volume(path: str | os.PathLike, check_hu: bool = True) -> MetaTensor:
    """Volume file (or DICOM series folder) -> MetaTensor (1, X, Y, Z) oriented RAS, read by the
    pipeline's CT reader (same geometry as ``infnet-monai segment``); ``check_hu=False`` for
    masks (a CT is refused when it is not in HU)."""
    image = LoadCT(image_only=True, ensure_channel_first=True, check_hu=check_hu)(str(path))
    return Orientation(axcodes="RAS", labels=RAS_LABELS)(image)


def make_report(
    image: str | os.PathLike,
    mask: str | os.PathLike,
    lung_mask: str | os.PathLike | None = None,
    out_dir: str | os.PathLike = ".",
    csv_path: str | os.PathLike | None = None,
    case: str | None = None,
    overwrite: bool = False,
    qc_slices: int = 12,
) -> dict[str, Any]:
    """Write ``<case>_burden.json`` and ``<case>_qc.png`` into ``out_dir`` and the case's row into
    ``csv_path`` (default ``out_dir/burden.csv``). Without ``lung_mask`` the lungs come from
    :func:`~infnet_monai.transforms.chain.ct_lung_labels` (the lungs a segmentation run measures).
    Returns the report with the written paths under ``"outputs"``."""
    case = case or case_name(image)
    out_dir = Path(out_dir)
    json_path, png_path = out_dir / f"{case}_burden.json", out_dir / f"{case}_qc.png"
    csv_path = Path(csv_path) if csv_path is not None else out_dir / "burden.csv"
    inputs = {Path(p).resolve() for p in (image, mask, lung_mask) if p is not None}
    for out in (json_path, png_path, csv_path):
        if out.resolve() in inputs:
            raise ValueError(f"{out}: output would overwrite an input; choose another -o/--csv")

    ct = load_volume(image)
    infection = load_volume(mask, check_hu=False)
    check_same_geometry(str(mask), infection.shape[1:], affine_of(infection), str(image), ct.shape[1:], affine_of(ct))
    lung = None
    if lung_mask is not None:
        lung = load_volume(lung_mask, check_hu=False)
        check_same_geometry(str(lung_mask), lung.shape[1:], affine_of(lung), str(image), ct.shape[1:], affine_of(ct))
    return report_volumes(ct, infection, lung, case, out_dir, csv_path, overwrite, qc_slices)


def report_volumes(
    ct: MetaTensor,
    infection: MetaTensor,
    lung: MetaTensor | None,
    case: str,
    out_dir: str | os.PathLike,
    csv_path: str | os.PathLike | None = None,
    overwrite: bool = False,
    qc_slices: int = 12,
    classes: str = "infection",
) -> dict[str, Any]:
    """:func:`make_report` on loaded volumes ``(1, X, Y, Z)`` sharing one grid (lung computed
    from the CT's HU when ``lung`` is None). ``classes="patterns"``: ``infection`` is a labelmap
    (:data:`~infnet_monai.labels.PATTERN_LABELS`), reported and drawn per class."""
    from infnet_monai.labels import class_names, labels_of

    names = class_names(classes)
    colours = {v: (name, rgb) for v, (name, _, rgb) in labels_of(classes).items() if v > 0} if names else None
    out_dir = Path(out_dir)
    json_path, png_path = out_dir / f"{case}_burden.json", out_dir / f"{case}_qc.png"
    csv_path = Path(csv_path) if csv_path is not None else out_dir / "burden.csv"
    if lung is None:
        lung = ct_lung_labels(ct)
    report = infection_burden(lung, infection, affine=affine_of(ct), case=case, class_names=names)
    write_report_json(report, json_path, overwrite=overwrite)
    write_qc_png(png_path, ct, infection, lung, title=f"case {case}", lines=burden_lines(report),
                 n_slices=qc_slices, overwrite=overwrite, class_colours=colours)
    update_report_csv(report, csv_path)
    return {**report, "outputs": {"json": str(json_path), "png": str(png_path), "csv": str(csv_path)}}
