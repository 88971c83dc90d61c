"""The DICOM series behind a volume: its slices' headers, their geometry, and the mapping between
a volume's voxels and each slice's pixels.

Volumes here are MONAI's: an (X, Y, Z) array with a 4x4 affine from voxel index to world RAS mm
(``CTReader`` converts DICOM's LPS). A slice's pixel (row r, column c) lies at the world LPS point
``ImagePositionPatient + c * column spacing * row cosine + r * row spacing * column cosine``; each
slice is mapped to the volume through that point, so by its position along the slice normal and
never by file order or InstanceNumber.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from pydicom.dataset import Dataset

from infnet_monai.data.dicom_series import list_dicom_series, pick_series
from infnet_monai.data.inputs import CTInputError, input_kind, volume_folders_below

__all__ = [
    "SEG_REQUIRED",
    "SegSourceError",
    "SourceSeries",
    "read_source_series",
    "dicom_source_problem",
    "find_series",
    "series_grid",
    "plane_indices",
    "volume_slices",
]

# Type 1 in a DICOM SEG (or needed to place its frames): a source slice without one cannot be referenced
SEG_REQUIRED = (
    "SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID",
    "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "Rows", "Columns",
)
# Type 2 patient and study attributes copied into the outputs: written empty when the source lacks them
_TYPE2 = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime", "AccessionNumber",
    "StudyID", "ReferringPhysicianName",
)
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


class SegSourceError(CTInputError):
    """A DICOM series that a SEG cannot reference (attributes missing or inconsistent)."""


@dataclass(frozen=True)
class SourceSeries:
    """One series of single-slice DICOM files: ``files`` and their ``headers`` (pydicom, no pixel
    data) sorted along the slice normal, ascending."""

    folder: Path
    files: tuple[Path, ...]
    headers: tuple[Dataset, ...]

    @property
    def uid(self) -> str:
        return str(self.headers[0].SeriesInstanceUID)

    @property
    def positions(self) -> np.ndarray:
        """(n, 3) ImagePositionPatient of the slices, LPS mm."""
        return np.asarray([[float(v) for v in h.ImagePositionPatient] for h in self.headers])


def _missing(header: Dataset) -> list[str]:
    return [k for k in SEG_REQUIRED if k not in header or header[k].value in (None, "", b"")]


def _kind_problem(path: Path) -> str | None:
    kind = input_kind(path)
    if kind == "nifti":
        return (f"{path}: a NIfTI input has no DICOM series for a DICOM SEG or overlay to reference; pass the "
                "DICOM series folder it came from, or use --output-type nifti")
    if kind == "dicom_file":
        return (f"{path}: a multi-frame DICOM file; DICOM SEG and overlay outputs are written for a folder of "
                "single-slice DICOM files only, use --output-type nifti")
    return None


def _check_headers(files: Sequence[Path], headers: Sequence[Dataset]) -> None:
    """``CTInputError`` naming the first file without an attribute a SEG needs, or whose study
    or frame of reference differs from the first slice's."""
    for path, header in zip(files, headers):
        missing = _missing(header)
        if missing:
            raise SegSourceError(
                f"{path}: lacks {', '.join(missing)}, which a DICOM SEG needs to reference its source slice; "
                "re-export the series with them, or use --output-type nifti"
            )
    for key in ("StudyInstanceUID", "FrameOfReferenceUID"):
        values = {str(h.get(key)) for h in headers}
        if len(values) > 1:
            odd = next(p for p, h in zip(files, headers) if str(h.get(key)) != str(headers[0].get(key)))
            raise SegSourceError(f"{odd}: {key} differs from the other slices of the series; re-export the series")


def read_source_series(path: str | Path, series_uid: str | None = None) -> SourceSeries:
    """The series ``CTReader`` reads from folder ``path`` (``series_uid`` as ``--series``), with
    the headers a DICOM SEG and overlay need; missing Type 2 patient/study attributes are set
    empty on the copies returned. Raises ``CTInputError`` (one line naming the input or file)."""
    path = Path(path)
    problem = _kind_problem(path)
    if problem:
        raise CTInputError(problem)
    info = pick_series(path, series_uid)
    headers = [copy.deepcopy(h) for h in info.headers]  # the series' own stay as read
    _check_headers(info.files, headers)
    for header in headers:
        for key in _TYPE2:
            if key not in header:
                setattr(header, key, "")
    return SourceSeries(path, tuple(info.files), tuple(headers))


def dicom_source_problem(path: str | Path, series_uid: str | None = None) -> str | None:
    """Why DICOM SEG/overlay outputs cannot be written for the input ``path`` (one line naming
    the input or file), or None. Reads headers only; problems the reader reports anyway (a
    corrupt file, several series) give None here."""
    path = Path(path)
    problem = _kind_problem(path)
    if problem or input_kind(path) != "dicom_folder":
        return problem
    try:
        info = pick_series(path, series_uid)
        _check_headers(info.files, info.headers)
    except SegSourceError as exc:
        return str(exc)
    except Exception:  # noqa: BLE001 - unreadable files, several series: the reader reports them
        return None
    return None


def find_series(folder: str | Path, series_uid: str) -> SourceSeries:
    """The series ``series_uid`` in ``folder`` or a folder below it; ``CTInputError`` if absent."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CTInputError(f"{folder}: no such folder; pass the folder holding the DICOM series the SEG references")
    for candidate in [folder, *volume_folders_below(folder)]:
        if input_kind(candidate) != "dicom_folder":
            continue
        try:
            found = [s for s in list_dicom_series(candidate) if s.uid == series_uid]
        except CTInputError:
            continue
        if found:
            _check_headers(found[0].files, found[0].headers)
            return SourceSeries(candidate, tuple(found[0].files), found[0].headers)
    raise CTInputError(
        f"{folder}: holds no DICOM series {series_uid} (in it or its subfolders); pass the folder of the series "
        "the SEG was made from"
    )


def _geometry(header: Dataset) -> tuple[np.ndarray, np.ndarray, np.ndarray, float, float]:
    """(position LPS (3,), row cosine (3,), column cosine (3,), row spacing, column spacing)."""
    iop = np.asarray([float(v) for v in header.ImageOrientationPatient])
    row_mm, col_mm = (float(v) for v in header.PixelSpacing)
    return np.asarray([float(v) for v in header.ImagePositionPatient]), iop[:3], iop[3:], row_mm, col_mm


def series_grid(series: SourceSeries) -> tuple[tuple[int, int, int], np.ndarray]:
    """The volume grid ``CTReader`` gives the series: shape (columns, rows, slices) and the 4x4
    RAS affine (first slice at index 0, the slice step from first to last position)."""
    position, row_dir, col_dir, row_mm, col_mm = _geometry(series.headers[0])
    positions = series.positions
    n = len(positions)
    if n > 1:
        step = (positions[-1] - positions[0]) / (n - 1)
    else:
        step = np.cross(row_dir, col_dir) * float(series.headers[0].get("SliceThickness") or 1.0)
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1], lps[:3, 2], lps[:3, 3] = row_dir * col_mm, col_dir * row_mm, step, position
    affine = np.eye(4)
    affine[:3] = _LPS_TO_RAS @ lps[:3]
    return (int(series.headers[0].Columns), int(series.headers[0].Rows), n), affine


def plane_indices(
    affine: np.ndarray,
    shape: Sequence[int],
    position: Sequence[float],
    orientation: Sequence[float],
    spacing: Sequence[float],
    rows: int,
    columns: int,
    what: str,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Voxel indices (three int arrays, each (rows, columns)) of the volume (``shape`` (X, Y, Z),
    RAS ``affine``) at each pixel of a DICOM plane (``position`` LPS mm, ``orientation`` the six
    cosines, ``spacing`` (row, column) mm). Raises ``ValueError`` naming ``what`` when the plane
    does not lie on the volume's voxel grid (other orientation or spacing, off the slice
    positions by half a voxel, or outside the volume)."""
    inverse = np.linalg.inv(np.asarray(affine, dtype=np.float64))
    to_index = inverse[:3, :3] @ _LPS_TO_RAS
    iop = np.asarray(orientation, dtype=np.float64)
    origin = to_index @ np.asarray(position, dtype=np.float64) + inverse[:3, 3]
    along_row = to_index @ (iop[:3] * float(spacing[1]))  # one column to the right
    along_col = to_index @ (iop[3:] * float(spacing[0]))  # one row down
    steps = np.round([along_row, along_col])
    start = np.round(origin)
    on_axes = all(np.count_nonzero(s) == 1 and abs(s).sum() == 1 for s in steps) and steps[0].tolist() != steps[1].tolist()
    if not on_axes or np.abs(steps - [along_row, along_col]).max() > 1e-3 or np.abs(start - origin).max() > 0.49:
        raise ValueError(
            f"{what}: does not lie on the volume's voxel grid (orientation, spacing or position differ by "
            f"{np.abs(start - origin).max():.2f} voxel or more); use the series the volume was read from"
        )
    r, c = np.arange(rows)[:, None], np.arange(columns)[None, :]
    index = [(start[a] + steps[1][a] * r + steps[0][a] * c).astype(np.int64) for a in range(3)]
    corners = [(int(i.min()), int(i.max())) for i in index]
    if any(low < 0 or high >= size for (low, high), size in zip(corners, shape)):
        raise ValueError(
            f"{what}: lies (partly) outside the volume of shape {tuple(shape)}; use the series it was read from"
        )
    return index[0], index[1], index[2]


def _plane_args(header: Dataset) -> tuple:
    return (header.ImagePositionPatient, header.ImageOrientationPatient, header.PixelSpacing,
            int(header.Rows), int(header.Columns))


def volume_slices(volume: np.ndarray, affine: np.ndarray, series: SourceSeries) -> np.ndarray:
    """The (X, Y, Z) ``volume`` (RAS ``affine``) on the pixels of each source slice: an array
    (slices, rows, columns) in the series' order, of ``volume``'s dtype."""
    volume = np.asarray(volume)
    out = np.zeros((len(series.headers), int(series.headers[0].Rows), int(series.headers[0].Columns)), volume.dtype)
    for n, (path, header) in enumerate(zip(series.files, series.headers)):
        out[n] = volume[plane_indices(affine, volume.shape, *_plane_args(header), what=str(path))]
    return out
