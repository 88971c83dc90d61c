"""``CTReader``: a MONAI ``ImageReader`` for 3D chest CT (a NIfTI file, a DICOM series folder or a
multi-frame DICOM file), as MONAI's ``image_reader.py`` readers are.

NIfTI goes through MONAI's ``NibabelReader``, a DICOM series through
:mod:`infnet_monai.data.dicom_series`. The returned array is float32 in Hounsfield units (HU),
indexed (i, j, k) = SimpleITK's (x, y, z), and the meta dict follows MONAI's ``ITKReader``
conventions (``affine`` in RAS mm, ``original_affine``, ``spatial_shape``, ``spacing``, ...);
``check_finite`` refuses NaN or infinite voxels, ``check_hounsfield`` volumes that are not CT in HU.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch
from monai.config import PathLike
from monai.data import ImageReader, NibabelReader
from monai.data.utils import orientation_ras_lps
from monai.utils import ImageMetaKey, MetaKeys, SpaceKeys, ensure_tuple

from infnet_monai.data.dicom_series import (
    _check_slice_geometry,
    _header_meta,
    _read_dicom_pixels,
    _sorted_series,
    pick_series,
)
from infnet_monai.data.inputs import (
    VOLUME_KINDS,
    CTInputError,
    _read_header,
    _unknown_message,
    input_kind,
)
from infnet_monai.naming import CASE_NAME_KEY, case_name
from infnet_monai.utils.fast_gzip import register_fast_gzip
from infnet_monai.utils.errors import one_line

__all__ = ["CTReader", "check_finite", "check_hounsfield", "MAX_LABEL_VALUES", "AIR_BELOW_HU"]


@dataclass
class _CTImage:
    """What ``CTReader.read`` returns: the source path and a SimpleITK or nibabel image."""

    path: Path
    image: Any
    nifti_reader: NibabelReader | None = None
    dicom_meta: dict | None = None


def _corrupt_nifti(path: Path, exc: Exception) -> CTInputError:
    return CTInputError(f"{path}: unreadable NIfTI ({one_line(exc)}); the file is corrupt, re-export it")


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
            info = pick_series(path, self.series_uid)
        else:
            try:
                header = _read_header(path)
            except Exception as exc:
                raise CTInputError(f"{path}: not readable DICOM ({one_line(exc)}); replace the corrupt file") from exc
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
        return _CTImage(path, image, dicom_meta=_header_meta(info.headers[0]))

    def get_data(self, img: _CTImage) -> tuple[np.ndarray, dict]:
        if img.nifti_reader is not None:
            data, meta = self._nifti_data(img)
        else:
            data, meta = self._dicom_data(img)
        check_finite(img.path, data, fix="and save again")
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


def check_finite(path: PathLike, data: np.ndarray, fix: str = "") -> None:
    """Refuse a volume with NaN or infinite voxels, naming the file, the count and the fix
    (``fix`` ends the message, e.g. "and save again" for a file)."""
    n_bad = 0 if np.asarray(data).dtype.kind in "biu" else data.size - int(np.count_nonzero(np.isfinite(data)))
    if n_bad:
        raise CTInputError(
            f"{path}: {n_bad} voxel(s) are NaN or infinite; replace them (e.g. with -1024 HU)" + (f" {fix}" if fix else "")
        )


def check_hounsfield(path: PathLike, data: np.ndarray) -> None:
    """Refuse a volume that is not a CT in Hounsfield units, naming the file and the fix:
    a label map or binary mask (at most :data:`MAX_LABEL_VALUES` distinct values, none negative,
    among about a million voxels sampled evenly), or no voxel below :data:`AIR_BELOW_HU` (values scaled to
    [0, 1], stored with an offset such as 0-4095, int8, or not a CT at all). About 0.1 s for a
    512 x 512 x 600 volume."""
    flat = np.asarray(data).reshape(-1, order="A")
    sample = flat[:: max(1, flat.size // 1_000_000)]
    sample = sample[np.isfinite(sample)] if sample.dtype.kind == "f" else sample
    if sample.size == 0:
        raise CTInputError(f"{path}: holds no finite value (empty, or NaN/inf only), not a CT; pass the CT volume itself")
    values = np.unique(sample)
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
