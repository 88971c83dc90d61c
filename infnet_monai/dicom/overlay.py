"""Overlay series for any DICOM viewer: RGB Secondary Capture images (highdicom ``SCImage``) of the
source slices that hold infection, in the lung window of the QC images, with each class outlined
in its display colour (:mod:`infnet_monai.labels`).

Each image has its source slice's pixel grid, ImagePositionPatient, ImageOrientationPatient,
PixelSpacing and frame of reference, references that slice (SourceImageSequence), and belongs to
the source's study in a new series whose description carries the burden figures.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
from pydicom.dataset import Dataset
from scipy import ndimage

from infnet_monai.dicom.source import SourceSeries
from infnet_monai.labels import labels_of
from infnet_monai.report.qc import LUNG_WINDOW, window_uint8
from infnet_monai.utils import atomic_folder
from infnet_monai.utils.geometry import voxel_volume_ml

__all__ = ["OVERLAY_SERIES_OFFSET", "outline", "overlay_rgb", "burden_description", "write_overlay"]

OVERLAY_SERIES_OFFSET = 2000  # overlay series number = the source's + this
_AXIS_LETTERS = (("L", "R"), ("P", "A"), ("H", "F"))  # LPS +x, +y, +z and their opposites


def outline(region: np.ndarray) -> np.ndarray:
    """The border band of a 2D boolean ``region`` (rows, columns): pixels within one pixel of its
    edge, inside or outside (3 px wide, visible on a 512 x 512 slice)."""
    region = np.asarray(region, dtype=bool)
    if not region.any():
        return region
    return ndimage.binary_dilation(region) & ~ndimage.binary_erosion(region, border_value=1)


def overlay_rgb(hu: np.ndarray, labels: np.ndarray, classes: str = "infection",
                window: tuple[float, float] = LUNG_WINDOW) -> np.ndarray:
    """(rows, columns, 3) uint8: the slice ``hu`` (rows, columns, HU) in ``window`` (width,
    level HU) with each label value of ``labels`` (rows, columns) outlined in its colour."""
    gray = window_uint8(np.asarray(hu, dtype=np.float32), window)
    rgb = np.repeat(gray[..., None], 3, axis=-1)
    for value, (_, _, colour) in labels_of(classes).items():
        if value > 0:
            rgb[outline(labels == value)] = colour
    return rgb


def burden_description(
    pred: np.ndarray, affine: np.ndarray, classes: str = "infection", lung: np.ndarray | None = None
) -> str:
    """SeriesDescription (at most 64 characters) with the burden figures of a mask (X, Y, Z;
    RAS ``affine``): infected mL and mL per class for a patterns labelmap, counted as the burden
    report counts them (:func:`~infnet_monai.report.burden.infection_burden`: in the lungs or
    attached to them) with ``lung`` labels on the same grid, plus the % of lung involved; without
    ``lung``, every labelled voxel."""
    from infnet_monai.labels import class_names
    from infnet_monai.report.burden import infection_burden

    pred = np.asarray(pred)
    names = class_names(classes)
    if lung is not None and np.shape(lung) == pred.shape:
        report = infection_burden(np.asarray(lung), pred, affine=np.asarray(affine, dtype=np.float64), class_names=names)
        infected, per_class = report["infection_ml"]["total"], list(report.get("pattern_ml", {}).values())
        share = f" ({report['percent_involved']['total']:.1f}% {'lung' if names else 'of lung'})"
    else:
        voxel_ml = voxel_volume_ml(np.asarray(affine, dtype=np.float64))
        infected = np.count_nonzero(pred) * voxel_ml
        per_class = [np.count_nonzero(pred == value) * voxel_ml for value in names or {}]
        share = ""
    if not names:
        return f"Inf-Net infection {infected:.1f} mL{share}"[:64]
    short = {"ground-glass opacity": "GGO", "consolidation": "cons."}
    text = f"Inf-Net {infected:.1f} mL{share}: " + ", ".join(
        f"{short.get(name, name)} {ml:.1f}" for name, ml in zip(names.values(), per_class)
    ) + " mL"
    return text[:64]


def _patient_orientation(orientation: Sequence[float]) -> tuple[str, str]:
    """PatientOrientation letters of the row and column directions (their main LPS axis)."""
    letters = []
    for cosines in (orientation[:3], orientation[3:]):
        axis = int(np.argmax(np.abs(cosines)))
        letters.append(_AXIS_LETTERS[axis][0 if float(cosines[axis]) > 0 else 1])
    return letters[0], letters[1]


def _hu(path: Path) -> np.ndarray:
    """One DICOM slice's pixels in HU (rows, columns), decoded by GDCM with its rescale."""
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(sitk.ReadImage(str(path), sitk.sitkFloat32))[0]


def write_overlay(
    folder: str | os.PathLike,
    series: SourceSeries,
    labels: np.ndarray,
    classes: str,
    description: str,
    overwrite: bool = True,
    window: tuple[float, float] = LUNG_WINDOW,
) -> list[Path]:
    """Write the overlay series of ``labels`` (slices, rows, columns; on ``series``' slices in
    its order) into ``folder``, one ``IM<nnnn>.dcm`` per slice holding a label (nnnn: the
    slice's place in the series, from 1), atomically as a whole; returns the files written."""
    import highdicom as hd
    from pydicom.uid import ExplicitVRLittleEndian

    from infnet_monai.dicom.seg import MANUFACTURER, quiet_highdicom

    labels = np.asarray(labels)
    series_uid = hd.UID()
    number = int(series.headers[0].get("SeriesNumber") or 0) + OVERLAY_SERIES_OFFSET
    names = []
    with atomic_folder(folder, overwrite=overwrite) as tmp, quiet_highdicom():
        for n in np.flatnonzero(labels.reshape(len(labels), -1).any(axis=1)):
            header, name = series.headers[n], f"IM{n + 1:04d}.dcm"
            image = hd.sc.SCImage.from_ref_dataset(
                ref_dataset=header,
                pixel_array=overlay_rgb(_hu(series.files[n]), labels[n], classes, window),
                photometric_interpretation="RGB",
                bits_allocated=8,
                coordinate_system="PATIENT",
                series_instance_uid=series_uid,
                series_number=number,
                sop_instance_uid=hd.UID(),
                instance_number=int(n) + 1,
                manufacturer=MANUFACTURER,
                pixel_spacing=tuple(float(v) for v in header.PixelSpacing),
                patient_orientation=_patient_orientation([float(v) for v in header.ImageOrientationPatient]),
                transfer_syntax_uid=ExplicitVRLittleEndian,
                series_description=description[:64],
            )
            for key in ("ImagePositionPatient", "ImageOrientationPatient", "FrameOfReferenceUID", "SliceThickness",
                        "SliceLocation", "PositionReferenceIndicator"):
                if key in header:
                    setattr(image, key, header[key].value)
            reference = Dataset()
            reference.ReferencedSOPClassUID, reference.ReferencedSOPInstanceUID = header.SOPClassUID, header.SOPInstanceUID
            image.SourceImageSequence = [reference]
            image.save_as(tmp / name, enforce_file_format=True)
            names.append(name)
    return [Path(folder) / name for name in names]
