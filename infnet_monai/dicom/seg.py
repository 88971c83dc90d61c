"""DICOM Segmentation (SEG) objects of Inf-Net masks, written with highdicom and read back onto a
volume grid.

A SEG is BINARY with one segment per class of :mod:`infnet_monai.labels` (segment number = the
label value: 1 infection, or 1 ground-glass opacity and 2 consolidation), the labels' coded
concepts as property types and their display colours (as CIELab), the algorithm's name, package version and
weights digest, patient and study attributes copied from the source, and one frame per source
slice and segment where the mask is not empty, each referencing its source slice.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import pydicom

from infnet_monai.dicom.source import SourceSeries, find_series, plane_indices, series_grid
from infnet_monai.labels import labels_of
from infnet_monai.utils import atomic_output, file_digest

__all__ = [
    "SEG_SOP_CLASS",
    "package_version",
    "weights_digest",
    "algorithm_identification",
    "write_seg",
    "is_seg_file",
    "referenced_series_uid",
    "seg_on_grid",
    "load_seg",
]

SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
MANUFACTURER = "infnet_monai"
SEG_SERIES_OFFSET = 1000  # SEG series number = the source's + this (overlays: + 2000)
DIGEST_CHARS = 12


def package_version() -> str:
    """The installed infnet_monai version ("unknown" when not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("infnet_monai")
    except PackageNotFoundError:
        return "unknown"


@functools.lru_cache(maxsize=8)
def _digest(path: str, size: int, mtime_ns: int) -> str:
    return file_digest(path)


def weights_digest(path: str | os.PathLike) -> str:
    """The first :data:`DIGEST_CHARS` hex digits of the file's SHA-256 (cached per file state)."""
    stat = os.stat(path)
    return _digest(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)[:DIGEST_CHARS]


def algorithm_identification(classes: str, weights: str | os.PathLike, pattern_weights: str | os.PathLike | None = None,
                             parameters: dict | None = None):
    """highdicom ``AlgorithmIdentificationSequence``: name, family (artificial intelligence),
    version "infnet_monai <version>, weights sha256:<prefix>[+<pattern prefix>]" and parameters."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    digests = [weights_digest(weights)] + ([weights_digest(pattern_weights)] if pattern_weights else [])
    name = "Inf-Net + multi-class UNet" if classes == "patterns" else "Inf-Net"
    params = {"weights_sha256": digests[0], **({"pattern_weights_sha256": digests[1]} if len(digests) > 1 else {})}
    params.update({str(k): str(v) for k, v in (parameters or {}).items()})
    return hd.AlgorithmIdentificationSequence(
        name=name, family=codes.cid7162.ArtificialIntelligence,
        version=f"{MANUFACTURER} {package_version()}, weights sha256:{'+'.join(digests)}",
        source=MANUFACTURER, parameters=params,
    )


def _segment_descriptions(classes: str, algorithm) -> list:
    import highdicom as hd
    from pydicom.sr.codedict import codes

    return [
        hd.seg.SegmentDescription(
            segment_number=value,
            segment_label=name,
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=hd.sr.CodedConcept(code[1], code[0], code[2]),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            display_color=hd.color.CIELabColor.from_rgb(*colour),
        )
        for value, (name, code, colour) in labels_of(classes).items() if value > 0
    ]


@contextlib.contextmanager
def quiet_highdicom():
    """highdicom's notices that are expected here: one frame kept for an empty mask (a log
    line), and a source's one-component patient name copied as it is (a warning)."""
    logger = logging.getLogger("highdicom")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*unlikely to represent the intended person name")
            yield
    finally:
        logger.setLevel(level)


def write_seg(
    path: str | os.PathLike,
    labels: np.ndarray,
    series: SourceSeries,
    classes: str,
    algorithm,
    description: str | None = None,
    overwrite: bool = True,
) -> Path:
    """Write the SEG of ``labels`` (slices, rows, columns; label values, on the pixels of
    ``series``' slices in its order) to ``path`` atomically; returns ``path``.

    Frames are kept only where a segment is present; an empty mask keeps one empty frame per
    segment (on the first slice) so that the object is valid. ``description``: the content
    description (e.g. burden figures, at most 64 characters)."""
    import highdicom as hd

    labels = np.asarray(labels, dtype=np.uint8)
    if labels.shape != (len(series.headers), int(series.headers[0].Rows), int(series.headers[0].Columns)):
        raise ValueError(f"labels of shape {labels.shape} do not match the {len(series.headers)} source slices")
    source = series.headers[0]
    geometry = {}
    if not labels.any():  # one empty frame on the first slice, every slice still referenced by the series
        labels = labels[:1]
        geometry = {
            "plane_positions": [hd.PlanePositionSequence("PATIENT", source.ImagePositionPatient)],
            "plane_orientation": hd.PlaneOrientationSequence("PATIENT", source.ImageOrientationPatient),
            "pixel_measures": hd.PixelMeasuresSequence(
                source.PixelSpacing, source.get("SliceThickness") or None, source.get("SpacingBetweenSlices") or None,
            ),
        }
    with quiet_highdicom():
        seg = hd.seg.Segmentation(
            source_images=list(series.headers),
            pixel_array=labels,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=_segment_descriptions(classes, algorithm),
            series_instance_uid=hd.UID(),
            series_number=int(source.get("SeriesNumber") or 0) + SEG_SERIES_OFFSET,
            sop_instance_uid=hd.UID(),
            instance_number=1,
            manufacturer=MANUFACTURER,
            manufacturer_model_name=algorithm[0].AlgorithmName[:64],
            software_versions=package_version(),
            device_serial_number=algorithm[0].AlgorithmVersion.rsplit(":", 1)[-1][:64],
            omit_empty_frames=True,
            series_description=f"Inf-Net {classes} segmentation"[:64],
            content_label=classes.upper()[:16],
            content_description=(description or f"Inf-Net {classes}")[:64],
            **geometry,
        )
    with atomic_output(path, overwrite=overwrite) as tmp:
        seg.save_as(tmp, enforce_file_format=True)
    return Path(path)


def is_seg_file(path: str | os.PathLike) -> bool:
    """True for a DICOM file whose SOP class is Segmentation Storage."""
    path = Path(path)
    if not path.is_file() or not (path.suffix.lower() == ".dcm" or pydicom.misc.is_dicom(path)):
        return False
    try:
        header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID"], force=True)
    except Exception:  # noqa: BLE001 - not readable DICOM: not a SEG
        return False
    return str(header.get("SOPClassUID", "")) == SEG_SOP_CLASS


def referenced_series_uid(seg) -> str:
    """SeriesInstanceUID of the (first) series a SEG dataset references."""
    for item in seg.get("ReferencedSeriesSequence") or ():
        return str(item.SeriesInstanceUID)
    raise ValueError(f"{seg.filename}: the SEG references no source series (ReferencedSeriesSequence)")


def _functional(seg, item, key: str):
    """The first item of functional group ``key`` of a frame: its own, else the shared one."""
    shared = seg.SharedFunctionalGroupsSequence[0] if "SharedFunctionalGroupsSequence" in seg else None
    for group in (item, shared):
        if group is not None and key in group:
            return group[key].value[0]
    raise ValueError(f"{seg.filename}: SEG frames lack {key}, so they cannot be placed on a grid")


def seg_on_grid(path: str | os.PathLike, affine: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """The SEG at ``path`` as a label volume (``shape`` (X, Y, Z), uint8: each segment's number
    where it is present, 0 elsewhere; a FRACTIONAL segment where it is at least half) on the grid
    of RAS ``affine``. Raises ``ValueError`` when a frame does not lie on that grid."""
    import highdicom as hd

    seg = hd.seg.segread(path)
    frames = np.asarray(seg.pixel_array).reshape(int(seg.get("NumberOfFrames") or 1), int(seg.Rows), int(seg.Columns))
    kind = str(seg.SegmentationType)
    threshold = 0.5 * int(seg.get("MaximumFractionalValue") or 1) if kind == "FRACTIONAL" else 0.5
    out = np.zeros(tuple(int(s) for s in shape), np.uint8)
    for n, item in enumerate(seg.PerFrameFunctionalGroupsSequence):
        if kind == "LABELMAP":
            values = frames[n].astype(np.uint8)
        else:
            number = int(_functional(seg, item, "SegmentIdentificationSequence").ReferencedSegmentNumber)
            values = np.where(frames[n] >= threshold, number, 0).astype(np.uint8)
        index = plane_indices(
            affine, out.shape, _functional(seg, item, "PlanePositionSequence").ImagePositionPatient,
            _functional(seg, item, "PlaneOrientationSequence").ImageOrientationPatient,
            _functional(seg, item, "PixelMeasuresSequence").PixelSpacing, int(seg.Rows), int(seg.Columns),
            what=f"{path}: frame {n + 1}",
        )
        out[index] = np.where(values > 0, values, out[index])
    return out


def load_seg(path: str | os.PathLike, reference=None, dicom_source: str | os.PathLike | None = None):
    """The SEG at ``path`` as a float32 MetaTensor (X, Y, Z) of label values, placed on the grid
    of the series it references, found in ``dicom_source`` (a folder holding that series, or a
    folder above it); without ``dicom_source``, on the grid of ``reference`` (a MetaTensor on the
    source grid, e.g. the NIfTI mask it is compared with). One-line ``ValueError`` otherwise."""
    import highdicom as hd
    import torch
    from monai.data import MetaTensor

    uid = referenced_series_uid(hd.seg.segread(path))
    if dicom_source is not None:
        shape, affine = series_grid(find_series(dicom_source, uid))
    elif reference is not None:
        shape, affine = tuple(reference.shape[-3:]), np.asarray(reference.affine, dtype=np.float64)
    else:
        raise ValueError(
            f"{path}: a DICOM SEG is placed on the grid of the series it references ({uid}); pass --dicom-source "
            "with the folder of that series, or a NIfTI on the other side"
        )
    array = seg_on_grid(path, affine, shape)
    return MetaTensor(torch.from_numpy(array.astype(np.float32)), affine=torch.as_tensor(affine, dtype=torch.float64),
                      meta={"filename_or_obj": str(path)})
