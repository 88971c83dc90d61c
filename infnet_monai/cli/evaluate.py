"""``infnet-monai evaluate`` and ``report``: scores against labels, and the infection burden of a
CT and its mask."""

from __future__ import annotations

import argparse

from infnet_monai.defaults import DEFAULT_TOLERANCE_MM


def _evaluate(args: argparse.Namespace) -> int:
    from infnet_monai.metrics.evaluate import FolderEvaluation

    FolderEvaluation(
        args.pred,
        args.label,
        mode=args.mode,
        tolerance_mm=args.tolerance,
        labels=args.labels,
        resample_label=args.resample_label,
        dicom_source=args.dicom_source,
        output_file=args.output,
        overwrite=args.overwrite,
    ).run()
    return 0


def add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="score predictions against labels: NIfTI volumes in mm (Dice, ASD, HD95, NSD) or slice "
        "images by the Inf-Net paper's protocol",
    )
    p.add_argument("--pred", required=True, help="prediction folder (or one file; NIfTI or DICOM SEG)")
    p.add_argument("--label", required=True, help="label folder (or one file; NIfTI or DICOM SEG)")
    p.add_argument(
        "--mode",
        default="volume",
        choices=["volume", "slices"],
        help="volume: .nii/.nii.gz masks, metrics in mm; slices: .png/.jpg maps, paper protocol",
    )
    p.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE_MM, metavar="MM",
                   help="NSD tolerance in mm (default %(default)s)")
    p.add_argument(
        "--labels", type=int, nargs="+", default=None, metavar="C",
        help="class values to score per class (volume: label maps; slices: class-index GT images and one map "
             "folder per class under --pred, GGO/ and Consolidation/ for 1 and 2, as predict-slices --classes "
             "patterns writes)",
    )
    p.add_argument(
        "--resample-label",
        action="store_true",
        help="resample labels onto the prediction grid (nearest) when shape or affine differ",
    )
    p.add_argument(
        "--dicom-source", metavar="FOLDER", default=None,
        help="for DICOM SEG files (.dcm) among --pred/--label: a folder holding the DICOM series they reference "
             "(searched below too); the SEG is placed on that series' grid (default: on the grid of the NIfTI it "
             "is compared with)",
    )
    p.add_argument("-o", "--output", default=None, help="write the report to this .json or .csv file")
    p.add_argument("--overwrite", action="store_true", help="replace the report file if it exists")
    p.set_defaults(func=_evaluate)


def _report(args: argparse.Namespace) -> int:
    from infnet_monai.report.run import make_report

    report = make_report(
        args.image, args.mask, lung_mask=args.lung_mask, out_dir=args.out_dir, csv_path=args.csv,
        case=args.case, overwrite=args.overwrite,
    )
    pct, sev = report["percent_involved"], report["severity_score"]
    print(
        f"{report['case']}: lung {report['lung_ml']['total']:.0f} mL, infection "
        f"{report['infection_ml']['total']:.1f} mL ({pct['total']:.1f} %), severity {sev['total']}/8 -> "
        + ", ".join(report["outputs"].values())
    )
    return 0


def add_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="infection burden (lung/infection mL, percent involved, CT severity score) as JSON, CSV row "
        "and QC PNG montage for a CT and an infection mask on the same grid",
    )
    p.add_argument("--image", required=True, help="CT volume in HU (NIfTI or other image file)")
    p.add_argument("--mask", required=True, help="infection mask (> 0 = infection), same grid as --image")
    p.add_argument("--lung-mask", help="lung labels (1 right, 2 left, or binary); default: computed from HU")
    p.add_argument("-o", "--out-dir", default=".", help="folder for <case>_burden.json and <case>_qc.png")
    p.add_argument("--csv", help="CSV collecting one row per case (default: OUT_DIR/burden.csv)")
    p.add_argument("--case", help="case name (default: image file name without suffix)")
    p.add_argument("--overwrite", action="store_true", help="replace existing JSON/PNG of the case")
    p.set_defaults(func=_report)
