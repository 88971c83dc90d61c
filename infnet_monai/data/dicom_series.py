"""DICOM series in a folder: headers read once (pydicom, no pixels), series listed and sorted
along the slice normal, odd or duplicated slices named, geometry checked, pixels decoded in HU
(SimpleITK/GDCM: uncompressed, RLE, JPEG lossless, JPEG-2000).

The series of the last few folders listed are kept (with their headers) while the folder's
files are unchanged (same names, sizes and modification times), so that the checks before a
run, the CT reader and the DICOM SEG writer read each header once between them."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from monai.config import PathLike
from pydicom.multival import MultiValue

from infnet_monai.data.inputs import _UNKNOWN_FIX, CTInputError, _folder_files, _looks_dicom, _read_header
from infnet_monai.utils.errors import one_line

__all__ = ["SeriesInfo", "list_dicom_series", "pick_series"]


@dataclass(frozen=True)
class SeriesInfo:
    """One DICOM series in a folder. ``files`` are sorted along the slice normal (ascending),
    ``positions`` are their ImagePositionPatient (mm, LPS; empty if absent), ``orientation`` the
    ImageOrientationPatient row/column cosines (empty if absent)."""

    uid: str
    description: str
    modality: str
    n_slices: int
    files: tuple[Path, ...]
    positions: tuple[tuple[float, float, float], ...] = ()
    orientation: tuple[float, ...] = ()
    problem: str = ""  # files that do not fit the series (size, orientation, modality, position)
    headers: tuple[pydicom.Dataset, ...] = field(default=(), compare=False, repr=False)  # of ``files``, no pixels

    def __str__(self) -> str:
        return f"{self.uid} '{self.description}' ({self.modality}, {self.n_slices} slices)"


def _names(paths: Sequence[Path], limit: int = 4) -> str:
    shown = ", ".join(p.name for p in paths[:limit])
    return shown + (f" and {len(paths) - limit} more" if len(paths) > limit else "")


def _odd_files(headers: list[tuple[Path, pydicom.Dataset]]) -> str:
    """What sets some files apart from the rest of their series, naming them ("" if nothing):
    another image size, orientation or modality than most slices (a localizer, a stray export),
    or two files at one position (a copied slice)."""
    checks = {
        "image size (Rows x Columns)": lambda ds: f"{ds.get('Rows')} x {ds.get('Columns')}",
        "orientation (ImageOrientationPatient)": lambda ds: tuple(
            round(float(v), 3) for v in (ds.get("ImageOrientationPatient") or ())
        ),
        "modality": lambda ds: str(ds.get("Modality", "")),
    }
    for what, key in checks.items():
        values = [key(ds) for _, ds in headers]
        common = max(set(values), key=values.count)
        odd = [path for (path, _), value in zip(headers, values) if value != common]
        if odd:
            value = key(dict(headers)[odd[0]])
            return (
                f"{_names(odd)} differ from the other {len(headers) - len(odd)} slices in {what} "
                f"({value} instead of {common}); move them out of the folder"
            )
    if len(headers) > 1 and all("ImagePositionPatient" in ds and "ImageOrientationPatient" in ds for _, ds in headers):
        at: dict[tuple, list[Path]] = {}
        for path, ds in headers:
            at.setdefault(tuple(round(float(v), 3) for v in ds.ImagePositionPatient), []).append(path)
        shared = [paths for paths in at.values() if len(paths) > 1]
        if shared and len(shared) < len(at):  # a few copies; every position repeated is a 4D series
            return (
                f"{_names(shared[0])} lie at the same position ({len(shared)} such group(s)): duplicated slice "
                "files; remove the copies"
            )
    return ""


def _sorted_series(headers: list[tuple[Path, pydicom.Dataset]]) -> SeriesInfo:
    """``SeriesInfo`` of the (path, header) pairs of one series."""
    problem = _odd_files(headers)
    first = headers[0][1]
    orientation = tuple(float(v) for v in first.get("ImageOrientationPatient") or ())
    if len(orientation) == 6 and all("ImagePositionPatient" in ds for _, ds in headers):
        normal = np.cross(orientation[:3], orientation[3:])
        headers = sorted(headers, key=lambda h: float(np.dot(np.asarray(h[1].ImagePositionPatient, float), normal)))
        positions = tuple(tuple(float(v) for v in ds.ImagePositionPatient) for _, ds in headers)
    else:
        headers = sorted(headers, key=lambda h: (int(h[1].get("InstanceNumber") or 0), h[0].name))
        positions = ()
    first = headers[0][1]
    return SeriesInfo(
        uid=str(first.get("SeriesInstanceUID", "")),
        description=str(first.get("SeriesDescription", "")),
        modality=str(first.get("Modality", "")),
        n_slices=sum(int(ds.get("NumberOfFrames") or 1) for _, ds in headers),
        files=tuple(path for path, _ in headers),
        positions=positions,
        orientation=orientation,
        problem=problem,
        headers=tuple(ds for _, ds in headers),
    )


# folder -> (its files' names, sizes and mtimes, its series); the last _KEPT_FOLDERS listed
_listed: OrderedDict[Path, tuple[tuple, list[SeriesInfo]]] = OrderedDict()
_KEPT_FOLDERS = 2


def _folder_signature(files: Sequence[Path]) -> tuple:
    stats = [f.stat() for f in files]
    return tuple((f.name, s.st_size, s.st_mtime_ns) for f, s in zip(files, stats))


def list_dicom_series(folder: PathLike) -> list[SeriesInfo]:
    """The image series in ``folder`` (not recursive), read from the DICOM headers with pydicom
    (or kept from the last listing of the folder when its files are unchanged).

    Files without the DICOM preamble and without a ``.dcm`` suffix are ignored, as are DICOM
    objects without pixel rows (DICOMDIR, reports). Raises ``CTInputError`` for a missing folder,
    unreadable DICOM files, or no DICOM image at all.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise CTInputError(f"{folder}: no such folder; pass a folder holding a DICOM series")
    key, files = folder.resolve(), _folder_files(folder)
    signature = _folder_signature(files)
    kept = _listed.get(key)
    if kept is not None and kept[0] == signature:
        _listed.move_to_end(key)
        return list(kept[1])
    series = _read_series(folder, files)
    _listed[key] = (signature, series)
    while len(_listed) > _KEPT_FOLDERS:
        _listed.popitem(last=False)
    return list(series)


def _read_series(folder: Path, files: Sequence[Path]) -> list[SeriesInfo]:
    """The series of ``files`` (the folder's), each file's header read once."""
    groups: dict[str, list[tuple[Path, pydicom.Dataset]]] = {}
    corrupt: list[str] = []
    for path in files:
        if not _looks_dicom(path):
            continue
        try:
            ds = _read_header(path)
        except Exception:
            corrupt.append(path.name)
            continue
        if ds is not None and "Rows" in ds and "SeriesInstanceUID" in ds:
            groups.setdefault(str(ds.SeriesInstanceUID), []).append((path, ds))
    if corrupt:
        raise CTInputError(
            f"{folder}: {len(corrupt)} file(s) are not readable DICOM ({', '.join(corrupt[:3])}"
            f"{', ...' if len(corrupt) > 3 else ''}); remove or replace the corrupt files"
        )
    if not groups:
        raise CTInputError(f"{folder}: no DICOM image files found; {_UNKNOWN_FIX}")
    return [_sorted_series(headers) for _, headers in sorted(groups.items())]


def pick_series(folder: PathLike, series_uid: str | None = None) -> SeriesInfo:
    """The series of ``folder`` to read: the one with ``series_uid``, else the only one; a
    ``CTInputError`` listing the series when it is missing or the choice is ambiguous."""
    series = list_dicom_series(folder)
    listing = "; ".join(str(s) for s in series)
    if series_uid is not None:
        series = [s for s in series if s.uid == series_uid]
        if not series:
            raise CTInputError(f"{folder}: no series with SeriesInstanceUID {series_uid}; found {listing}")
    elif len(series) > 1:
        raise CTInputError(
            f"{folder}: holds {len(series)} DICOM series; pick one with --series UID (series_uid in Python "
            f"and the bundle): {listing}"
        )
    return series[0]


def _check_slice_geometry(folder: Path, series: SeriesInfo) -> None:
    """Reject series whose slices do not form one regular 3D grid (no geometry, 4D, gaps, tilt)."""
    if len(series.files) < 2:
        return
    if not series.positions:
        raise CTInputError(
            f"{folder}: slices of series {series.uid} lack ImagePositionPatient/ImageOrientationPatient, so "
            "they cannot be placed in space; re-export the series with its geometry tags"
        )
    pos = np.asarray(series.positions)
    normal = np.cross(series.orientation[:3], series.orientation[3:])
    along = pos @ normal
    n_distinct = len(np.unique(np.round(along, 3)))
    if n_distinct < len(pos):
        raise CTInputError(
            f"{folder}: series {series.uid} has {len(pos)} slices at only {n_distinct} distinct positions "
            "(a 4D series with several phases, echoes or time points); export one 3D phase as its own series"
        )
    step = (pos[-1] - pos[0]) / (len(pos) - 1)
    deviation = np.linalg.norm(pos - (pos[0] + np.arange(len(pos))[:, None] * step), axis=1).max()
    if deviation > 0.1 * np.linalg.norm(step):
        raise CTInputError(
            f"{folder}: slice positions of series {series.uid} are not evenly spaced (off a regular "
            f"{np.linalg.norm(step):.3g} mm grid by up to {deviation:.3g} mm); re-export the complete series "
            "without missing or extra slices"
        )
    drift = np.linalg.norm(step - np.dot(step, normal) * normal) * (len(pos) - 1)
    if drift > 0.5:
        raise CTInputError(
            f"{folder}: slices of series {series.uid} are sheared ({drift:.3g} mm in-plane drift, gantry "
            "tilt); resample the series onto an orthogonal grid (e.g. to NIfTI) first"
        )


def _header_meta(header: pydicom.Dataset) -> dict[str, str]:
    """Public, non-sequence, non-binary tags of one DICOM header as ITK-style ``"gggg|eeee"`` keys."""
    meta = {}
    for elem in header:
        if elem.tag.is_private or elem.VR in ("SQ", "OB", "OW", "OF", "OD", "OL", "UN"):
            continue
        value = elem.value
        if isinstance(value, MultiValue):
            value = "\\".join(str(v) for v in value)
        meta[f"{elem.tag.group:04x}|{elem.tag.element:04x}"] = "" if value is None else str(value)
    return meta


def _read_dicom_pixels(source: Path, files: Sequence[Path]) -> sitk.Image:
    """Decode ``files`` (one series, sorted) as one float32 image in HU (rescale applied by GDCM)."""
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(f) for f in files])
    reader.SetOutputPixelType(sitk.sitkFloat32)  # per-slice rescale slope/intercept kept exactly
    try:
        return reader.Execute()
    except RuntimeError as exc:
        bad = next((f for f in files if not _decodes(f)), None)
        culprit = f"{bad.name} cannot be decoded" if bad is not None else one_line(exc)
        raise CTInputError(
            f"{source}: {culprit} (corrupt file or unsupported transfer syntax); replace the file or "
            "re-export the series uncompressed"
        ) from exc


def _decodes(path: Path) -> bool:
    try:
        sitk.ReadImage(str(path))
    except RuntimeError:
        return False
    return True
