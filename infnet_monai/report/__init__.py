"""Per-volume infection burden reports and QC montages."""

from .burden import SEVERITY_BANDS, infection_burden, report_row, severity_score, update_report_csv, write_report_json
from .qc import qc_montage, radiological_slice, write_qc_png

__all__ = [
    "SEVERITY_BANDS",
    "infection_burden",
    "report_row",
    "severity_score",
    "update_report_csv",
    "write_report_json",
    "qc_montage",
    "radiological_slice",
    "write_qc_png",
]
