"""CT inputs on disk: what a path is (NIfTI file, DICOM series folder or file, ...), how many
slices it holds (from headers), and command-line INPUT arguments (files, folders, globs) expanded
into one path per volume; ``CTInputError`` for inputs that are not a readable 3D CT."""

from __future__ import annotations

import functools
import glob
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

import nibabel as nib
import pydicom
from monai.config import PathLike
from pydicom.errors import InvalidDicomError

from infnet_monai.utils.geometry import axial_axis

__all__ = ["CTInputError", "InputKind", "input_kind", "estimated_slices", "expand_inputs", "volume_folders_below"]


NIFTI_SUFFIXES = (".nii", ".nii.gz")
InputKind = Literal["nifti", "dicom_folder", "dicom_file", "dicom_slice", "nifti_folder", "missing", "unknown"]
VOLUME_KINDS = ("nifti", "dicom_folder", "dicom_file")
_UNKNOWN_FIX = "pass a NIfTI file (.nii/.nii.gz) or a folder holding one DICOM CT series"


class CTInputError(ValueError):
    """An input that is not a readable 3D CT volume; the message names the path and the fix."""


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
    frame count; 0 when unknown or unreadable (the reader reports bad files). Remembered per
    path and modification time: a run asks once for its output space, once for its compile
    choice."""
    path = Path(path)
    try:
        modified = path.stat().st_mtime_ns
    except OSError:
        return 0
    return _estimated_slices(path, modified)


@functools.lru_cache(maxsize=4096)
def _estimated_slices(path: Path, modified: int) -> int:
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


def _read_header(path: Path) -> pydicom.Dataset | None:
    """Header of a DICOM file, ``None`` for a file that is not DICOM; raises if it is corrupt."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=path.suffix.lower() == ".dcm")
    except InvalidDicomError:
        return None
    if "SOPClassUID" not in ds and "MediaStorageSOPClassUID" not in getattr(ds, "file_meta", {}):
        raise InvalidDicomError(f"{path.name} has no SOP Class UID")
    return ds
