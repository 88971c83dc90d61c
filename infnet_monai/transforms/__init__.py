"""MONAI transforms of the pipeline: CT reading, lung mask, the shared pre/postprocessing chain."""

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
from .lung import (
    LungMask,
    LungMaskd,
    LungMaskParams,
    RestrictToLung,
    RestrictToLungd,
    dilate_mm,
    label_sides,
    lung_columns,
    lung_labels,
    lung_slices,
)
