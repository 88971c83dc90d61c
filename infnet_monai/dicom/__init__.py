"""DICOM outputs a hospital can store: DICOM SEG objects of the masks, overlay series for any
viewer, and reading a SEG back onto a volume grid (highdicom is imported only when used)."""

from .outputs import (
    OUTPUT_TYPES,
    DicomOutputsd,
    check_output_type,
    dicom_input_problem,
    dicom_output_files,
    is_folder_output,
    segment_dicom_outputs,
    write_dicom_outputs,
    writes_dicom,
    writes_nifti,
)
from .source import SourceSeries, find_series, read_source_series, series_grid, volume_slices

__all__ = [
    "OUTPUT_TYPES",
    "DicomOutputsd",
    "check_output_type",
    "dicom_input_problem",
    "dicom_output_files",
    "is_folder_output",
    "segment_dicom_outputs",
    "write_dicom_outputs",
    "writes_dicom",
    "writes_nifti",
    "SourceSeries",
    "find_series",
    "read_source_series",
    "series_grid",
    "volume_slices",
]
