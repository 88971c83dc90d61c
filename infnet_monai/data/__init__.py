"""Data: CT inputs on disk (discovery, DICOM series, the CT reader) and datalists (COVID-SemiSeg
slice folders, NIfTI volume/label pairs)."""

from .ct_reader import CTReader, check_finite, check_hounsfield
from .dicom_series import SeriesInfo, list_dicom_series
from .inputs import CTInputError, InputKind, estimated_slices, expand_inputs, input_kind
from .nifti_pairs import nifti_pairs_datalist, volume_stem
from .semiseg import attach_maps, semiseg_datalist, split_datalist

__all__ = [
    "CTInputError",
    "CTReader",
    "InputKind",
    "SeriesInfo",
    "attach_maps",
    "check_finite",
    "check_hounsfield",
    "estimated_slices",
    "expand_inputs",
    "input_kind",
    "list_dicom_series",
    "nifti_pairs_datalist",
    "semiseg_datalist",
    "split_datalist",
    "volume_stem",
]
