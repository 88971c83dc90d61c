"""MONAI transforms of the pipeline."""

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

__all__ = [
    "LungMask",
    "LungMaskd",
    "LungMaskParams",
    "RestrictToLung",
    "RestrictToLungd",
    "dilate_mm",
    "label_sides",
    "lung_columns",
    "lung_labels",
    "lung_slices",
]
