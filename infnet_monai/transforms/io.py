"""Reading chest CT volumes (NIfTI files and DICOM series folders) into MONAI, with clear errors.

``CTReader`` is a MONAI ``ImageReader``: NIfTI goes through MONAI's ``NibabelReader``, a DICOM
series through SimpleITK's ``ImageSeriesReader`` (GDCM decodes uncompressed, RLE, JPEG lossless
and JPEG-2000 transfer syntaxes). The returned array is float32 in Hounsfield units (HU), indexed
(i, j, k) = SimpleITK's (x, y, z), and the meta dict follows MONAI's ``ITKReader`` conventions
(``affine`` in RAS mm, ``original_affine``, ``spatial_shape``, ``spacing``, ...).

``LoadCT``/``LoadCTd`` are ``LoadImage``/``LoadImaged`` bound to a ``CTReader`` without MONAI's
fallback readers, so that a rejected input raises ``CTInputError`` instead of being silently read
by another reader. ``expand_inputs`` turns command-line INPUT arguments into one path per volume.
"""

from __future__ import annotations

import glob
import os
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import nibabel as nib
import numpy as np
import pydicom
import SimpleITK as sitk
import torch
from monai.config import DtypeLike, KeysCollection, PathLike
from monai.data import ImageReader, NibabelReader
from monai.data.utils import orientation_ras_lps
from monai.transforms import LoadImage, LoadImaged
from monai.utils import ImageMetaKey, MetaKeys, SpaceKeys, ensure_tuple
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue

from infnet_monai.naming import CASE_NAME_KEY, case_name
from infnet_monai.utils.fast_gzip import register_fast_gzip
from infnet_monai.utils.geometry import axial_axis

__all__ = [
    "CTInputError",
    "SeriesInfo",
    "list_dicom_series",
    "CTReader",
    "LoadCT",
    "LoadCTd",
    "InputKind",
    "input_kind",
    "estimated_slices",
    "expand_inputs",
    "check_hounsfield",
]

NIFTI_SUFFIXES = (".nii", ".nii.gz")
InputKind = Literal["nifti", "dicom_folder", "dicom_file", "dicom_slice", "nifti_folder", "missing", "unknown"]
VOLUME_KINDS = ("nifti", "dicom_folder", "dicom_file")
_UNKNOWN_FIX = "pass a NIfTI file (.nii/.nii.gz) or a folder holding one DICOM CT series"


class CTInputError(ValueError):
    """An input that is not a readable 3D CT volume; the message names the path and the fix."""


def _one_line(exc: BaseException) -> str:
    """An exception's message on one line (third-party messages may span several)."""
    return " ".join(str(exc).split()) or type(exc).__name__


# --------------------------------------------------------------------------------------------
# Input discovery
# --------------------------------------------------------------------------------------------
def _is_nifti(path: Path) -> bool:
    return path.name.lower().endswith(NIFTI_SUFFIXES)


def _looks_dicom(path: Path) -> bool:
    """A ``.dcm`` file or a file with the DICOM part-10 preamble (``DICM`` at byte 128)."""
    return path.suffix.lower() == ".dcm" or pydicom.misc.is_dicom(path)


def _folder_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


def input_kind(path: PathLike) -> InputKind:
    """Classify ``path``: a NIfTI file, a DICOM series folder, a multi-frame DICOM file (a volume),
    one 2D DICOM slice, a folder of NIfTI files, ``"missing"`` or ``"unknown"``."""
    path = Path(path)
    if path.is_dir():
        files = _folder_files(path)
        if any(_looks_dicom(f) for f in files):
            return "dicom_folder"
        return "nifti_folder" if any(_is_nifti(f) for f in files) else "unknown"
    if not path.exists():
        return "missing"
    if _is_nifti(path):
        return "nifti"
    if _looks_dicom(path):
        try:
            header = _read_header(path)
        except Exception:  # corrupt: the reader reports it
            return "dicom_file"
        if header is None:
            return "unknown"
        return "dicom_file" if int(header.get("NumberOfFrames") or 1) > 1 else "dicom_slice"
    return "unknown"


def estimated_slices(path: PathLike) -> int:
    """Axial slices of the volume at ``path`` without reading its voxels: a NIfTI's size along
    its slice axis (from the header's affine), a DICOM folder's file count, a multi-frame file's
    frame count; 0 when unknown or unreadable (the reader reports bad files)."""
    path = Path(path)
    try:
        kind = input_kind(path)
        if kind == "nifti":
            image = nib.load(str(path))
            shape = image.shape
            return int(shape[axial_axis(image.affine)]) if len(shape) >= 3 else 0
        if kind == "dicom_folder":
            return sum(1 for f in _folder_files(path) if _looks_dicom(f))
        if kind == "dicom_file":
            header = _read_header(path)
            return int(header.get("NumberOfFrames") or 1) if header is not None else 0
    except Exception:  # noqa: BLE001 - an estimate only: the reader reports bad files properly
        return 0
    return 0


def volume_folders_below(folder: Path, max_folders: int = 2000) -> list[Path]:
    """Folders below ``folder`` (not itself) that hold a DICOM series or NIfTI files, in name
    order; at most ``max_folders`` folders are visited."""
    found, visited = [], 0
    for root, dirs, _ in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        visited += 1
        if visited > max_folders:
            break
        here = Path(root)
        if here != folder and input_kind(here) in ("dicom_folder", "nifti_folder"):
            found.append(here)
    return found


def _unknown_message(path: Path) -> str:
    if path.is_dir():
        below = volume_folders_below(path)
        if below:
            shown = ", ".join(str(p.relative_to(path)) for p in below[:4]) + (" ..." if len(below) > 4 else "")
            return (
                f"{path}: a study or patient folder with {len(below)} series folder(s) below it ({shown}); "
                f"pass one of them, or all with the glob '{path}/**/'"
            )
        return f"{path}: folder holds no DICOM or NIfTI files; {_UNKNOWN_FIX}"
    return f"{path}: not a NIfTI or DICOM file; {_UNKNOWN_FIX}"


def expand_inputs(patterns: Iterable[PathLike], skipped: list[str] | None = None) -> list[Path]:
    """Expand CLI INPUT arguments (files, folders, globs) into one path per CT volume.

    A NIfTI file or a multi-frame DICOM file is one volume; a folder holding DICOM files is one
    volume (its series); a folder holding only NIfTI files expands to those files (sorted); a 2D
    DICOM slice stands for its folder. Duplicates are dropped, order is kept. Raises
    ``CTInputError`` for a missing path, a glob matching nothing, or anything else named
    directly. What a glob matches that is not a volume is passed over: folders that only hold
    other folders (a study folder matched by ``**/``) silently, anything else with its one-line
    reason appended to ``skipped`` (without ``skipped``, it raises as a named path does).
    """
    volumes: dict[Path, Path] = {}
    for pattern in patterns:
        path = Path(pattern).expanduser()
        if path.exists():
            matches = [path]
        elif any(c in str(pattern) for c in "*?["):
            matches = [Path(m) for m in sorted(glob.glob(str(path), recursive=True))]
            if not matches:
                raise CTInputError(f"{pattern}: the pattern matches no file or folder; check it")
        else:
            raise CTInputError(f"{pattern}: no such file or folder; check the path")
        globbed = not path.exists()
        for match in matches:
            kind = input_kind(match)
            if kind in VOLUME_KINDS:
                found = [match]
            elif kind == "dicom_slice":
                found = [match.parent]
            elif kind == "nifti_folder":
                found = [f for f in _folder_files(match) if _is_nifti(f)]
            elif globbed and match.is_dir() and not _folder_files(match) and any(p.is_dir() for p in match.iterdir()):
                continue  # a folder of folders matched by a glob: its series are matched themselves
            elif globbed and skipped is not None:
                skipped.append(_unknown_message(match))
                continue
            else:
                raise CTInputError(_unknown_message(match))
            for volume in found:  # one volume however it was written (../, trailing /, a link)
                volumes.setdefault(volume.resolve(), volume)
    return list(volumes.values())


# --------------------------------------------------------------------------------------------
# DICOM series
# --------------------------------------------------------------------------------------------
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

    def __str__(self) -> str:
        return f"{self.uid} '{self.description}' ({self.modality}, {self.n_slices} slices)"


def _read_header(path: Path) -> pydicom.Dataset | None:
    """Header of a DICOM file, ``None`` for a file that is not DICOM; raises if it is corrupt."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=path.suffix.lower() == ".dcm")
    except InvalidDicomError:
        return None
    if "SOPClassUID" not in ds and "MediaStorageSOPClassUID" not in getattr(ds, "file_meta", {}):
        raise InvalidDicomError(f"{path.name} has no SOP Class UID")
    return ds


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
    )


def list_dicom_series(folder: PathLike) -> list[SeriesInfo]:
    """The image series in ``folder`` (not recursive), read from the DICOM headers with pydicom.

    Files without the DICOM preamble and without a ``.dcm`` suffix are ignored, as are DICOM
    objects without pixel rows (DICOMDIR, reports). Raises ``CTInputError`` for a missing folder,
    unreadable DICOM files, or no DICOM image at all.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise CTInputError(f"{folder}: no such folder; pass a folder holding a DICOM series")
    groups: dict[str, list[tuple[Path, pydicom.Dataset]]] = {}
    corrupt: list[str] = []
    for path in _folder_files(folder):
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


def _header_meta(path: Path) -> dict[str, str]:
    """Public, non-sequence, non-binary tags of one DICOM header as ITK-style ``"gggg|eeee"`` keys."""
    meta = {}
    for elem in pydicom.dcmread(path, stop_before_pixels=True):
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
        culprit = f"{bad.name} cannot be decoded" if bad is not None else _one_line(exc)
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


# --------------------------------------------------------------------------------------------
# Reader
# --------------------------------------------------------------------------------------------
@dataclass
class _CTImage:
    """What ``CTReader.read`` returns: the source path and a SimpleITK or nibabel image."""

    path: Path
    image: Any
    nifti_reader: NibabelReader | None = None
    dicom_meta: dict | None = None


def _corrupt_nifti(path: Path, exc: Exception) -> CTInputError:
    return CTInputError(f"{path}: unreadable NIfTI ({_one_line(exc)}); the file is corrupt, re-export it")


def _check_shape(path: Path, shape: Sequence[int], what: str) -> None:
    shape = list(shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape.pop()
    if len(shape) > 3:
        raise CTInputError(
            f"{path}: {what} has shape {tuple(shape)} (4D: several volumes, phases or channels); "
            "pass a single 3D CT volume"
        )
    if len(shape) < 3 or min(shape) < 2:
        raise CTInputError(
            f"{path}: {what} has shape {tuple(shape)}, a 2D image; pass the whole 3D CT volume "
            "(all slices of the series)"
        )


class CTReader(ImageReader):
    """MONAI ``ImageReader`` for 3D CT: a NIfTI file, a DICOM series folder, or a multi-frame DICOM.

    Args:
        series_uid: SeriesInstanceUID to read from a folder that holds several series; ``None``
            reads the only series and fails with a listing if there are several.
        affine_lps_to_ras: ``affine`` in RAS (as ``NibabelReader``/``ITKReader`` by default);
            ``False`` gives LPS for both NIfTI and DICOM.
        check_hu: refuse volumes that are not a CT in Hounsfield units (:func:`check_hounsfield`);
            ``False`` for label volumes read through the same chain.

    ``get_data`` returns a float32 array (X, Y, Z) in HU and MONAI meta: ``affine``,
    ``original_affine`` (4x4, mm), ``spatial_shape``, ``spacing`` (mm), ``space``,
    ``original_channel_dim`` (nan: no channel), ``filename_or_obj``, plus the NIfTI header fields
    or, for DICOM, the first slice's public tags as ITK-style ``"gggg|eeee"`` strings.
    Bad input raises ``CTInputError`` naming the path and the fix.
    """

    def __init__(self, series_uid: str | None = None, affine_lps_to_ras: bool = True, check_hu: bool = True) -> None:
        super().__init__()
        register_fast_gzip()  # .nii.gz through ISA-L when installed
        self.series_uid = series_uid
        self.affine_lps_to_ras = affine_lps_to_ras
        self.check_hu = check_hu

    def verify_suffix(self, filename: Sequence[PathLike] | PathLike) -> bool:
        """True for one NIfTI file, one DICOM series folder or one multi-frame DICOM file."""
        names = ensure_tuple(filename)
        return len(names) == 1 and input_kind(names[0]) in VOLUME_KINDS

    def read(self, data: Sequence[PathLike] | PathLike, **kwargs) -> _CTImage:
        names = ensure_tuple(data)
        if len(names) != 1:
            raise CTInputError(
                f"{names[0] if names else data}: CTReader reads one volume per call, got {len(names)} paths; "
                "pass one NIfTI file or one DICOM series folder"
            )
        path = Path(names[0])
        kind = input_kind(path)
        if kind == "missing":
            raise CTInputError(f"{path}: no such file or folder; check the path")
        if kind == "nifti":
            return self._read_nifti(path)
        if kind in ("dicom_folder", "dicom_file"):
            return self._read_dicom(path)
        if kind == "dicom_slice":
            raise CTInputError(f"{path}: a single 2D DICOM slice; pass the folder holding the whole series")
        if kind == "nifti_folder":
            raise CTInputError(f"{path}: folder of NIfTI files, not a DICOM series; pass each .nii/.nii.gz file")
        raise CTInputError(_unknown_message(path))

    def _read_nifti(self, path: Path) -> _CTImage:
        nifti_reader = NibabelReader(squeeze_non_spatial_dims=True)
        try:
            image = nifti_reader.read(str(path))
        except Exception as exc:
            raise _corrupt_nifti(path, exc) from exc
        _check_shape(path, image.shape, "NIfTI image")
        return _CTImage(path, image, nifti_reader=nifti_reader)

    def _read_dicom(self, path: Path) -> _CTImage:
        if path.is_dir():
            series = list_dicom_series(path)
            listing = "; ".join(str(s) for s in series)
            if self.series_uid is not None:
                series = [s for s in series if s.uid == self.series_uid]
                if not series:
                    raise CTInputError(f"{path}: no series with SeriesInstanceUID {self.series_uid}; found {listing}")
            elif len(series) > 1:
                raise CTInputError(
                    f"{path}: holds {len(series)} DICOM series; pick one with --series UID (series_uid in Python "
                    f"and the bundle): {listing}"
                )
            info = series[0]
        else:
            try:
                header = _read_header(path)
            except Exception as exc:
                raise CTInputError(f"{path}: not readable DICOM ({_one_line(exc)}); replace the corrupt file") from exc
            info = _sorted_series([(path, header)])
        if info.problem:
            raise CTInputError(f"{path}: in series {info.uid}, {info.problem}")
        if info.modality != "CT":
            raise CTInputError(
                f"{path}: series {info.uid} has modality '{info.modality or 'missing'}', not CT; "
                "Inf-Net needs a CT series in Hounsfield units"
            )
        if info.n_slices < 2:
            raise CTInputError(f"{path}: series {info.uid} has 1 slice, a 2D image; pass the whole 3D CT series")
        _check_slice_geometry(path, info)
        image = _read_dicom_pixels(path, info.files)
        _check_shape(path, image.GetSize(), "DICOM series")
        return _CTImage(path, image, dicom_meta=_header_meta(info.files[0]))

    def get_data(self, img: _CTImage) -> tuple[np.ndarray, dict]:
        if img.nifti_reader is not None:
            data, meta = self._nifti_data(img)
        else:
            data, meta = self._dicom_data(img)
        n_bad = 0 if np.issubdtype(data.dtype, np.integer) else data.size - int(np.count_nonzero(np.isfinite(data)))
        if n_bad:
            raise CTInputError(
                f"{img.path}: {n_bad} voxel(s) are NaN or infinite; replace them (e.g. with -1024 HU) and save again"
            )
        if self.check_hu:
            check_hounsfield(img.path, data)
        meta[ImageMetaKey.FILENAME_OR_OBJ] = str(img.path)
        meta[CASE_NAME_KEY] = case_name(img.path, self.series_uid)
        return _float32_c_order(data), meta

    def _nifti_data(self, img: _CTImage) -> tuple[np.ndarray, dict]:
        try:
            data, meta = img.nifti_reader.get_data(img.image)
        except Exception as exc:
            raise _corrupt_nifti(img.path, exc) from exc
        if not self.affine_lps_to_ras:
            for key in (MetaKeys.AFFINE, MetaKeys.ORIGINAL_AFFINE):
                meta[key] = orientation_ras_lps(meta[key])
            meta[MetaKeys.SPACE] = SpaceKeys.LPS
        return data, meta

    def _dicom_data(self, img: _CTImage) -> tuple[np.ndarray, dict]:
        image: sitk.Image = img.image
        affine = np.eye(4)
        affine[:3, :3] = np.asarray(image.GetDirection()).reshape(3, 3) @ np.diag(image.GetSpacing())
        affine[:3, 3] = image.GetOrigin()
        if self.affine_lps_to_ras:
            affine = orientation_ras_lps(affine)
        meta = dict(img.dicom_meta or {})
        meta["spacing"] = np.asarray(image.GetSpacing())
        meta[MetaKeys.ORIGINAL_AFFINE] = affine
        meta[MetaKeys.AFFINE] = affine.copy()
        meta[MetaKeys.SPACE] = SpaceKeys.RAS if self.affine_lps_to_ras else SpaceKeys.LPS
        meta[MetaKeys.SPATIAL_SHAPE] = np.asarray(image.GetSize())
        meta[MetaKeys.ORIGINAL_CHANNEL_DIM] = float("nan")
        return sitk.GetArrayFromImage(image).T, meta  # (z, y, x) -> (i, j, k) = (x, y, z)


MAX_LABEL_VALUES = 16  # a volume with this few distinct values is a label map or mask, not a CT
AIR_BELOW_HU = -500.0  # every chest CT in HU has air (outside the body, airways, lung) below this


def check_hounsfield(path: PathLike, data: np.ndarray) -> None:
    """Refuse a volume that is not a CT in Hounsfield units, naming the file and the fix:
    a label map or binary mask (at most :data:`MAX_LABEL_VALUES` distinct values, none negative,
    among about a million voxels sampled evenly), or no voxel below :data:`AIR_BELOW_HU` (values scaled to
    [0, 1], stored with an offset such as 0-4095, int8, or not a CT at all). About 0.1 s for a
    512 x 512 x 600 volume."""
    flat = np.asarray(data).reshape(-1, order="A")
    sample = flat[:: max(1, flat.size // 1_000_000)]
    values = np.unique(sample[np.isfinite(sample)] if sample.dtype.kind == "f" else sample)
    if len(values) <= MAX_LABEL_VALUES and values[0] >= 0:
        shown = ", ".join(f"{v:g}" for v in values[:6]) + (", ..." if len(values) > 6 else "")
        raise CTInputError(
            f"{path}: holds only {len(values)} distinct value(s) ({shown}), a label map or mask, not a CT in "
            "Hounsfield units; pass the CT volume itself"
        )
    low = float(np.nanmin(flat)) if flat.dtype.kind == "f" else float(flat.min())
    if low > AIR_BELOW_HU:
        raise CTInputError(
            f"{path}: lowest value {low:.4g}, so no air (near -1000 in a CT in Hounsfield units): the volume is "
            "scaled, stored with an offset or without its rescale, or not a CT; convert it to HU "
            "(e.g. subtract 1024 when it is stored as 0-4095)"
        )


def _float32_c_order(data: np.ndarray) -> np.ndarray:
    """``data`` as a C-ordered float32 array in one pass (cast and transposing copy together).

    ``LoadImage`` makes the array C-contiguous anyway; files store x fastest (Fortran order),
    so casting and reordering separately would pass over the volume twice. torch's strided copy
    runs on every intra-op thread.
    """
    data = np.asarray(data)
    if data.dtype == np.float32 and data.flags.c_contiguous:
        return data
    if data.dtype.isnative and data.dtype.type in _TORCH_COPYABLE:
        out = torch.empty(data.shape, dtype=torch.float32)
        out.copy_(torch.from_numpy(data))
        return out.numpy()
    return data.astype(np.float32, order="C")  # byte-swapped or unsigned 16/32-bit files


_TORCH_COPYABLE = (np.int8, np.uint8, np.int16, np.int32, np.int64, np.float16, np.float32, np.float64)


# --------------------------------------------------------------------------------------------
# Load transforms
# --------------------------------------------------------------------------------------------
class LoadCT(LoadImage):
    """``LoadImage`` that reads with a ``CTReader`` only.

    ``LoadImage(reader=CTReader())`` falls back to MONAI's other readers when ``CTReader`` raises,
    so an MR series or a 2D NIfTI would be read silently by ``PydicomReader``/``NibabelReader``;
    this transform always passes its ``CTReader`` as the runtime reader, so ``CTInputError``
    reaches the caller. Returns a float32 MetaTensor (X, Y, Z) in HU, (1, X, Y, Z) with
    ``ensure_channel_first``. ``check_hu``: refuse volumes not in HU (False for label volumes).
    Other arguments as ``LoadImage``.
    """

    def __init__(
        self,
        series_uid: str | None = None,
        image_only: bool = True,
        dtype: DtypeLike | None = np.float32,
        ensure_channel_first: bool = False,
        simple_keys: bool = False,
        prune_meta_pattern: str | None = None,
        prune_meta_sep: str = ".",
        expanduser: bool = True,
        affine_lps_to_ras: bool = True,
        check_hu: bool = True,
    ) -> None:
        self.ct_reader = CTReader(series_uid=series_uid, affine_lps_to_ras=affine_lps_to_ras, check_hu=check_hu)
        with warnings.catch_warnings():  # LoadImage also builds MONAI's default readers, never used here
            warnings.simplefilter("ignore", UserWarning)
            super().__init__(
                self.ct_reader, image_only, dtype, ensure_channel_first, simple_keys, prune_meta_pattern,
                prune_meta_sep, expanduser,
            )

    def __call__(self, filename: Sequence[PathLike] | PathLike, reader: ImageReader | None = None):
        return super().__call__(filename, reader=reader or self.ct_reader)


class LoadCTd(LoadImaged):
    """Dictionary twin of :class:`LoadCT`; arguments as ``LoadImaged`` plus ``series_uid`` and
    ``check_hu`` (False for label volumes)."""

    def __init__(
        self,
        keys: KeysCollection,
        series_uid: str | None = None,
        dtype: DtypeLike | None = np.float32,
        meta_keys: KeysCollection | None = None,
        meta_key_postfix: str = "meta_dict",
        overwriting: bool = False,
        image_only: bool = True,
        ensure_channel_first: bool = False,
        simple_keys: bool = False,
        prune_meta_pattern: str | None = None,
        prune_meta_sep: str = ".",
        allow_missing_keys: bool = False,
        expanduser: bool = True,
        affine_lps_to_ras: bool = True,
        check_hu: bool = True,
    ) -> None:
        super().__init__(
            keys, None, dtype, meta_keys, meta_key_postfix, overwriting, image_only, ensure_channel_first,
            simple_keys, prune_meta_pattern, prune_meta_sep, allow_missing_keys, expanduser,
        )
        self._loader = LoadCT(
            series_uid, image_only, dtype, ensure_channel_first, simple_keys, prune_meta_pattern, prune_meta_sep,
            expanduser, affine_lps_to_ras, check_hu,
        )
