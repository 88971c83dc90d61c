"""Evaluation: volume metrics in mm (Dice, ASD, HD95, NSD), the paper's 2D slice protocol, folders.

Modules: ``volume`` (mm metrics), ``slices`` (2D toolbox protocol) with ``structure_measures``
(S-/E-measure), ``pairing`` (files by case name), ``evaluate`` (folder scoring), ``reports`` (output).
"""

from .evaluate import FolderEvaluation, evaluate_folders
from .pairing import pair_files
from .reports import format_report_table, write_report
from .slices import (
    THRESHOLDS,
    SliceScores,
    e_measure_curve,
    mean_absolute_error,
    normalise_map,
    read_ground_truth,
    read_prediction_map,
    slice_scores,
    summarise_slice_scores,
    threshold_scores,
)
from .structure_measures import e_measure, s_measure
from .volume import (
    DEFAULT_TOLERANCE_MM,
    EMPTY_MASK_POLICY,
    VolumeMetrics,
    binary_volume_metrics,
    label_volume_metrics,
    match_label_grid,
    spacing_mm,
    summarise_volume_metrics,
)

__all__ = [
    "DEFAULT_TOLERANCE_MM",
    "EMPTY_MASK_POLICY",
    "VolumeMetrics",
    "binary_volume_metrics",
    "label_volume_metrics",
    "summarise_volume_metrics",
    "spacing_mm",
    "match_label_grid",
    "THRESHOLDS",
    "SliceScores",
    "read_ground_truth",
    "read_prediction_map",
    "normalise_map",
    "threshold_scores",
    "s_measure",
    "e_measure",
    "e_measure_curve",
    "mean_absolute_error",
    "slice_scores",
    "summarise_slice_scores",
    "FolderEvaluation",
    "evaluate_folders",
    "pair_files",
    "write_report",
    "format_report_table",
]
