"""``--output-type``: which outputs a segmentation writes (NIfTI mask, DICOM SEG, overlay series),
their names, the check of a DICOM input before the inference, and the writer after it.

- ``nifti`` (default): ``<case>_seg.nii.gz`` only.
- ``dicom-seg``: ``<case>_seg.dcm`` (:mod:`infnet_monai.dicom.seg`) instead of the NIfTI mask.
- ``all``: the NIfTI mask, the SEG and the overlay series folder ``<case>_overlay/``
  (:mod:`infnet_monai.dicom.overlay`).

A patterns run's names carry ``patterns`` instead of ``seg`` (``<case>_patterns.dcm``,
``<case>_patterns_overlay/``). Names follow :mod:`infnet_monai.naming`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from monai.config import KeysCollection
from monai.transforms import MapTransform
from monai.utils import ImageMetaKey

from infnet_monai.dicom.source import dicom_source_problem
from infnet_monai.naming import CASE_NAME_KEY, MASK_POSTFIXES, case_name, output_file
from infnet_monai.utils.geometry import volume_array

__all__ = [
    "OUTPUT_TYPES",
    "check_output_type",
    "writes_nifti",
    "writes_dicom",
    "dicom_output_files",
    "is_folder_output",
    "dicom_input_problem",
    "write_dicom_outputs",
    "segment_dicom_outputs",
    "load_written_mask",
    "DicomOutputsd",
]

OUTPUT_TYPES = ("nifti", "dicom-seg", "all")
_OVERLAY = "overlay"


def check_output_type(output_type: str) -> str:
    """``output_type`` if it is one of :data:`OUTPUT_TYPES`, else a one-line ``ValueError``."""
    if output_type not in OUTPUT_TYPES:
        raise ValueError(f"output type must be one of {', '.join(OUTPUT_TYPES)}, got {output_type!r}")
    return output_type


def writes_nifti(output_type: str) -> bool:
    """Whether ``output_type`` writes the NIfTI mask (and a patterns run's label sidecar)."""
    return check_output_type(output_type) in ("nifti", "all")


def writes_dicom(output_type: str) -> bool:
    """Whether ``output_type`` writes a DICOM SEG (and needs a DICOM series input)."""
    return check_output_type(output_type) in ("dicom-seg", "all")


def dicom_output_files(case: str, output_dir: str | os.PathLike, postfix: str, output_type: str) -> list[Path]:
    """The DICOM outputs of a case: ``<case>_<postfix>.dcm`` (dicom-seg, all) and the overlay
    folder ``<case>_overlay`` (``<case>_<postfix>_overlay`` unless the postfix is ``seg``; all)."""
    files = [output_file(case, output_dir, postfix, ".dcm")] if writes_dicom(output_type) else []
    if output_type == "all":
        files.append(Path(output_dir) / f"{case}_{_OVERLAY if postfix == 'seg' else f'{postfix}_{_OVERLAY}'}")
    return files


def is_folder_output(path: str | os.PathLike) -> bool:
    """Whether an output path names a folder (an overlay series) rather than a file."""
    return Path(path).name.endswith(f"_{_OVERLAY}")


def dicom_input_problem(path: str | os.PathLike, series_uid: str | None, output_type: str) -> str | None:
    """Before the inference: why ``output_type`` cannot be written for the input ``path`` (a
    line starting ``error:`` naming the input or the file), or None."""
    if not writes_dicom(output_type):
        return None
    problem = dicom_source_problem(path, series_uid)
    return None if problem is None else f"error: {problem}"


def write_dicom_outputs(
    source: str | os.PathLike,
    pred: Any,
    output_dir: str | os.PathLike,
    *,
    output_type: str = "all",
    classes: str = "infection",
    postfix: str | None = None,
    series_uid: str | None = None,
    weights: str | os.PathLike,
    pattern_weights: str | os.PathLike | None = None,
    lung: Any = None,
    parameters: dict | None = None,
    overwrite: bool = True,
) -> list[Path]:
    """Write the DICOM outputs of ``output_type`` for the mask ``pred`` ((1,) X, Y, Z MetaTensor on
    the grid ``CTReader`` gave the series folder ``source``); returns their paths.

    ``weights``/``pattern_weights``: the model files identified (SHA-256 prefix) in the SEG;
    ``lung`` (same grid, labels > 0): adds the % of lung to the overlay's description;
    ``parameters``: run settings recorded with the algorithm (e.g. the threshold)."""
    from infnet_monai.dicom.overlay import burden_description, write_overlay
    from infnet_monai.dicom.seg import algorithm_identification, write_seg
    from infnet_monai.dicom.source import read_source_series, volume_slices

    files = dicom_output_files(case_name(source, series_uid), output_dir,
                               postfix or MASK_POSTFIXES[classes][0], output_type)
    if not files:
        return []
    series = read_source_series(source, series_uid)
    volume = volume_array(pred)
    affine = np.asarray(pred.affine, dtype=np.float64)
    lung_volume = None if lung is None else volume_array(lung)
    labels = volume_slices(volume.astype(np.uint8), affine, series)
    description = burden_description(volume, affine, classes, lung_volume)
    algorithm = algorithm_identification(classes, weights, pattern_weights, parameters)
    write_seg(files[0], labels, series, classes, algorithm, description=description, overwrite=overwrite)
    if len(files) > 1:
        write_overlay(files[1], series, labels, classes, description, overwrite=overwrite)
    return files


def segment_dicom_outputs(path: Path, result, opts, weights: Path) -> list[Path]:
    """:func:`write_dicom_outputs` for one volume of ``infnet-monai segment`` (``opts``: its
    ``SegmentOptions``; ``result``: the ``VolumeResult``)."""
    if not writes_dicom(opts.output_type):
        return []
    pattern_weights = None
    if opts.classes == "patterns":
        from infnet_monai.shipped import default_pattern_weights

        pattern_weights = opts.pattern_weights or default_pattern_weights()
    return write_dicom_outputs(
        path, result.item["pred"], opts.output_dir, output_type=opts.output_type, classes=opts.classes,
        series_uid=opts.series_uid, weights=weights, pattern_weights=pattern_weights, lung=result.item.get("lung"),
        parameters={"threshold": opts.threshold},
    )


def load_written_mask(output: str | os.PathLike, source: str | os.PathLike):
    """A mask an earlier run wrote, read back as a (1, X, Y, Z) MetaTensor: a NIfTI as it is, a
    DICOM SEG on the grid of its source series (in the input folder ``source``)."""
    if Path(output).suffix.lower() == ".dcm":
        from infnet_monai.dicom.seg import load_seg

        return load_seg(output, dicom_source=source).unsqueeze(0)
    from infnet_monai.report.run import load_volume

    return load_volume(output, check_hu=False)


class DicomOutputsd(MapTransform):
    """Bundle postprocessing: the DICOM outputs of ``output_type`` for the mask under ``keys``
    (after ``SaveImaged``; the source is the mask's ``filename_or_obj``, a DICOM series folder).
    ``nifti`` writes nothing here. ``lung_key``: the lung labels, when kept, for the % of lung."""

    def __init__(self, keys: KeysCollection, output_dir: str | os.PathLike, output_type: str = "nifti",
                 classes: str = "infection", weights: str | os.PathLike | None = None,
                 pattern_weights: str | os.PathLike | None = None, lung_key: str = "lung",
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.output_type = check_output_type(output_type)
        self.output_dir, self.classes, self.lung_key = output_dir, classes, lung_key
        self.weights, self.pattern_weights = weights, pattern_weights

    def __call__(self, data):
        d = dict(data)
        if not writes_dicom(self.output_type):
            return d
        for key in self.key_iterator(d):
            meta = getattr(d[key], "meta", {})
            source = meta.get(ImageMetaKey.FILENAME_OR_OBJ)
            problem = dicom_input_problem(source, None, self.output_type) if source else "error: no source path in the meta"
            if problem:
                raise ValueError(problem[len("error: "):])
            series_uid = None
            case = str(meta.get(CASE_NAME_KEY) or "")
            if "_series-" in case and Path(source).is_dir():
                series_uid = case.rsplit("_series-", 1)[1]
            write_dicom_outputs(
                source, d[key], self.output_dir, output_type=self.output_type, classes=self.classes,
                series_uid=series_uid, weights=self.weights, pattern_weights=self.pattern_weights,
                lung=d.get(self.lung_key),
            )
        return d
