"""MONAI transforms of the pipeline: CT loading, lung mask, the shared pre/postprocessing chain
(the reader and input discovery are in :mod:`infnet_monai.data`)."""

from .io import LoadCT, LoadCTd
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
