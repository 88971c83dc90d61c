"""MONAI transforms and readers for Inf-Net CT inference."""

from .io import (
    CTInputError,
    CTReader,
    InputKind,
    LoadCT,
    LoadCTd,
    SeriesInfo,
    expand_inputs,
    input_kind,
    list_dicom_series,
)
