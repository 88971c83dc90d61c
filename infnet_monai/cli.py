"""Command-line entry point ``infnet-monai``: argument parsing only.

Every subcommand hands its parsed arguments to a library function; errors that are the user's
to fix (bad input files, missing weights) are printed as one line and give exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence


class UserError(Exception):
    """An error the user can fix; printed as one line without a traceback."""


def _convert_weights(args: argparse.Namespace) -> int:
    from infnet_monai.networks.convert import convert_checkpoint

    report = convert_checkpoint(args.src, args.dst, network=args.network, overwrite=args.overwrite)
    print(report)
    return 0


def _add_convert_weights(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert-weights",
        help="convert an authors' Inf-Net / Semi-Inf-Net / Inf-Net+UNet or Res2Net ImageNet .pth "
        "into a plain state dict for models/model.pt",
    )
    p.add_argument("src", help="source checkpoint (.pth/.pt)")
    p.add_argument("dst", help="destination state dict (.pt)")
    p.add_argument(
        "--network",
        default="auto",
        choices=["auto", "inf_net", "inf_net_unet", "res2net50"],
        help="target network; 'auto' picks it from the checkpoint's keys",
    )
    p.add_argument("--overwrite", action="store_true", help="replace DST if it exists")
    p.set_defaults(func=_convert_weights)


def _add_model_arguments(p: argparse.ArgumentParser, device: bool = True) -> None:
    """--weights, --image-size and (``device``) --device: which model runs, at what size, where."""
    p.add_argument("--weights", help="trained Inf-Net state dict or an authors' checkpoint (default: the shipped model)")
    p.add_argument("--image-size", type=int, default=None, metavar="S",
                   help="in-plane network input size in px, multiple of 32 (default: the size the model was trained "
                        "at, from its bundle's metadata.json, else the shipped model's; 352 for the authors' weights)")
    if device:
        p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: GPU when present)")


def _add_class_arguments(p: argparse.ArgumentParser, patterns_output: str) -> None:
    """--classes and --pattern-weights: infection (0/1) or infection patterns (GGO/consolidation)."""
    p.add_argument("--classes", choices=["infection", "patterns"], default="infection",
                   help=f"infection (default): the Inf-Net's infection map; patterns: {patterns_output}")
    p.add_argument("--pattern-weights", metavar="MODEL.pt",
                   help="multi-class UNet for --classes patterns (default: the shipped models/multiclass_model.pt)")


def _segment(args: argparse.Namespace) -> int:
    from infnet_monai.segment_run import SegmentOptions, segment_volumes

    opts = SegmentOptions(
        output_dir=args.output_dir,
        weights=args.weights,
        image_size=args.image_size,
        device=args.device,
        batch_size=args.batch_size,
        precision=args.precision,
        compile={"auto": None, "on": True, "off": False}[args.compile],
        window=tuple(args.window),
        lung_crop=not args.no_lung_crop,
        slice_crop=not args.no_slice_crop,
        restrict_to_lung=not args.no_lung_restrict,
        threshold=args.threshold,
        save_prob=args.save_prob,
        overwrite=args.overwrite,
        series_uid=args.series,
        progress=not args.quiet,
        report=args.report,
        classes=args.classes,
        pattern_weights=args.pattern_weights,
        output_type=args.output_type,
        num_parts=args.num_parts,
        part_id=args.part_id,
        timings=args.timings,
    )
    failures = segment_volumes(args.inputs, opts)
    return min(failures, 100)  # the number of volumes that failed (failures.csv), at most 100


def _add_segment(sub: argparse._SubParsersAction) -> None:
    from pathlib import Path

    p = sub.add_parser("segment", help="segment CT volumes (NIfTI or DICOM series) into infection masks")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="a .nii/.nii.gz file, a DICOM series folder or a glob")
    p.add_argument("-o", "--output-dir", type=Path, required=True, help="folder for <name>_seg.nii.gz masks")
    _add_model_arguments(p)
    p.add_argument("--batch-size", type=int, default=None,
                   help="axial slices per network call (default 32 on a GPU, 2 on the CPU)")
    p.add_argument("--precision", choices=["fp32", "fp16", "bf16"], default=None,
                   help="network precision (default: bf16 autocast on CPUs with native bf16, 2-3x faster, masks "
                        "within Dice 0.997 of fp32 with the shipped model; fp32 elsewhere and with --compile on); "
                        "fp32 keeps the exact path")
    p.add_argument("--compile", choices=["auto", "on", "off"], default="auto",
                   help="CPU: run the network from its compiled package in the run's precision, fp32 or bf16 (1.3-1.7x "
                        "faster per slice; built once per machine in 30-60 s by 'infnet-monai prepare' or here, cached in "
                        "~/.cache/infnet_monai or $INFNET_MONAI_CACHE). auto (default): use a package built before, build "
                        "one when the inputs hold at least 2000 slices; on: build it if missing; off: never")
    p.add_argument("--window", type=float, nargs=2, default=[-1250.0, 250.0], metavar=("LOW", "HIGH"),
                   help="HU window mapped to [0, 1] (default -1250 250)")
    p.add_argument("--threshold", type=float, default=0.5, help="probability threshold (default 0.5)")
    p.add_argument("--no-lung-crop", action="store_true", help="do not crop in-plane to the lungs")
    p.add_argument("--no-slice-crop", action="store_true",
                   help="infer every slice (default: only slices within 5 mm of the lungs; the others are background)")
    p.add_argument("--no-lung-restrict", action="store_true", help="do not restrict the mask to the dilated lungs")
    p.add_argument("--save-prob", action="store_true", help="also write <name>_prob.nii.gz (float32)")
    p.add_argument("--series", metavar="UID", help="DICOM SeriesInstanceUID when a folder holds several series")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.add_argument("--report", action="store_true",
                   help="also write <name>_burden.json, <name>_qc.png and a row of burden.csv")
    _add_class_arguments(p, "a labelmap 0 background, 1 ground-glass opacity, 2 consolidation "
                            "(<name>_patterns.nii.gz + <name>_patterns.json naming the labels)")
    p.add_argument("--num-parts", type=int, default=None, metavar="N",
                   help="split the sorted inputs into N parts and run one (job arrays; default: torchrun's WORLD_SIZE, "
                        "else 1); each part writes summary/failures/burden.part-I-of-N.csv, merged by 'summarize'")
    p.add_argument("--part-id", type=int, default=None, metavar="I",
                   help="the part to run, 0..N-1 (default: torchrun's RANK, else 0)")
    p.add_argument("--output-type", choices=["nifti", "dicom-seg", "all"], default="nifti",
                   help="nifti (default): <name>_seg.nii.gz; dicom-seg: a DICOM SEG <name>_seg.dcm instead (DICOM series "
                        "input); all: the mask, the SEG and an overlay series <name>_overlay/ for any DICOM viewer")
    p.add_argument("--timings", type=Path, metavar="FILE.json",
                   help="write where the run's time went (process start to first slice, per volume: reading, network, "
                        "postprocessing, writing)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_segment)


def _prepare(args: argparse.Namespace) -> int:
    import time

    from infnet_monai.inference import prepare_package, require_weights
    from infnet_monai.runtime import default_batch_size, default_precision
    from infnet_monai.shipped import network_size

    weights = require_weights(args.weights)
    size, batch = args.image_size or network_size(weights), args.batch_size or default_batch_size("cpu")
    precision = args.precision or default_precision("cpu")
    start = time.perf_counter()
    try:
        path = prepare_package(weights, batch, size, precision)
    except RuntimeError as exc:
        print(f"infnet-monai prepare: error: {exc}", file=sys.stderr)
        return 1
    print(f"{path}: compiled network ready ({precision}, {batch} slices of {size}x{size} per call; "
          f"{time.perf_counter() - start:.0f} s); segment runs use it from now on")
    return 0


def _add_prepare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "prepare",
        help="build the compiled CPU network once after installing (30-60 s), so that every later segment run "
        "on this machine uses it without flags",
    )
    _add_model_arguments(p, device=False)  # packages are CPU code
    p.add_argument("--batch-size", type=int, default=None, help="slices per call the package is built for (default 2)")
    p.add_argument("--precision", choices=["fp32", "bf16"], default=None,
                   help="default: bf16 on CPUs with native bf16, else fp32 (segment's default)")
    p.set_defaults(func=_prepare)


def _summarize(args: argparse.Namespace) -> int:
    from infnet_monai.cohort import summarize, summary_line

    counts = summarize(args.output_dir)
    print(summary_line(args.output_dir, counts))
    return 1 if counts["missing"] else 0


def _add_summarize(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "summarize",
        help="merge the summary/failures/burden tables of a run split into parts (--num-parts, torchrun) "
        "into summary.csv, failures.csv and burden.csv",
    )
    p.add_argument("output_dir", metavar="OUT_DIR", help="the -o folder of the segment runs")
    p.set_defaults(func=_summarize)


def _predict_slices(args: argparse.Namespace) -> int:
    from infnet_monai.predict_slices import predict_slices

    written = predict_slices(
        args.inputs, args.output_dir, weights=args.weights, image_size=args.image_size, device=args.device,
        normalize=args.normalize, overwrite=args.overwrite, classes=args.classes, pattern_weights=args.pattern_weights,
    )
    print(f"{len(written)} maps written to {args.output_dir}")
    return 0


def _add_predict_slices(sub: argparse._SubParsersAction) -> None:
    from pathlib import Path

    p = sub.add_parser(
        "predict-slices",
        help="run the network on 2D slice images (JPG/PNG) and write 8-bit probability maps <stem>.png "
        "at each image's size, as the authors' test script (score them with evaluate --mode slices)",
    )
    p.add_argument("inputs", metavar="IMAGES", help="a folder of slice images (e.g. COVID-SemiSeg Imgs/) or one image")
    p.add_argument("-o", "--output-dir", type=Path, required=True, help="folder for the <stem>.png maps")
    _add_model_arguments(p)
    p.add_argument("--normalize", action="store_true",
                   help="min-max normalise each map as the authors' script does (default: probability x 255)")
    p.add_argument("--overwrite", action="store_true", help="replace existing maps")
    _add_class_arguments(p, "GGO/<stem>.png and Consolidation/<stem>.png (class probability x 255) and "
                            "labels/<stem>.png (class indices 0/1/2)")
    p.set_defaults(func=_predict_slices)


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


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
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
    p.add_argument("--tolerance", type=float, default=3.0, metavar="MM", help="NSD tolerance in mm (default 3)")
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


def _add_report(sub: argparse._SubParsersAction) -> None:
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


def _semi_propagate(args: argparse.Namespace) -> int:
    from infnet_monai.semi import SemiInfNetPropagation

    names = ["group_size", "epochs_per_group", "initial_epochs", "image_size", "batch_size", "learning_rate",
             "multiscale_rates", "iterations_per_epoch"]  # fmt: skip
    settings = {name: getattr(args, name) for name in names if getattr(args, name) is not None}
    state = SemiInfNetPropagation(
        args.labeled,
        args.unlabeled,
        args.work_dir,
        settings=settings,
        seed=args.seed,
        initial_weights=args.initial_weights,
        device=args.device,
        num_workers=args.num_workers,
        resume=args.resume,
    ).run(max_groups=args.max_groups, progress=not args.quiet)
    print(
        f"{args.work_dir}: {state.groups_done}/{len(state.groups)} groups, {state.pseudo_count} slices "
        f"pseudo-labelled in {args.work_dir / state.pseudo_dir}, model {args.work_dir / state.checkpoint}"
    )
    return 0


def _add_semi_propagate(sub: argparse._SubParsersAction) -> None:
    from pathlib import Path

    p = sub.add_parser(
        "semi-propagate",
        help="Semi-Inf-Net: pseudo-label unlabelled slices group by group, fine-tuning Inf-Net after each group",
    )
    p.add_argument("--labeled", type=Path, required=True, help="labelled slices: a folder with Imgs/, GT/ (and Edge/)")
    p.add_argument("--unlabeled", type=Path, required=True, help="unlabelled slices: a folder with Imgs/")
    p.add_argument("--work-dir", type=Path, required=True, help="state, checkpoints and pseudo/{Imgs,GT,Edge}")
    p.add_argument("--group-size", type=int, help="slices added per round, K (default 5)")
    p.add_argument("--epochs-per-group", type=int, help="fine-tuning epochs after each group (default 10)")
    p.add_argument("--initial-epochs", type=int, help="epochs on the labelled set first (default 100)")
    p.add_argument("--initial-weights", help="start from these weights (e.g. models/model.pt) instead")
    p.add_argument("--size", dest="image_size", type=int,
                   help="training/prediction size in px, multiple of 32 (default 352)")
    p.add_argument("--batch-size", type=int, help="slices per batch (default 16)")
    p.add_argument("--lr", dest="learning_rate", type=float, help="fine-tuning learning rate (default 3e-4)")
    p.add_argument("--scales", dest="multiscale_rates", type=float, nargs="+", metavar="RATE",
                   help="multi-scale training rates (default 0.75 1 1.25)")
    p.add_argument("--iterations-per-epoch", type=int, help="cap on iterations per epoch (smoke runs)")
    p.add_argument("--seed", type=int, help="group order and training seed (default 0)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: GPU when present)")
    p.add_argument("--num-workers", type=int, default=4, help="data loader workers (default 4)")
    p.add_argument("--max-groups", type=int, default=None, help="stop after this many more groups")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --work-dir (settings not given are taken from it)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_semi_propagate)


# Each entry adds one subcommand; later features append their own adder here.
SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_convert_weights,
    _add_segment,
    _add_summarize,
    _add_prepare,
    _add_predict_slices,
    _add_evaluate,
    _add_report,
    _add_semi_propagate,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="infnet-monai", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="show third-party notices (e.g. optional GPU decoders not installed)")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in SUBCOMMANDS:
        add(sub)
    return parser


def _quiet_optional_decoders() -> None:
    """MONAI announces on every import that the optional GPU DICOM decoder (nvImageCodec) is
    absent, in a log line and a warning; the CPU decoders are used and nothing is wrong."""
    import logging
    import warnings

    logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message="NvImgCodecPydicomReader")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.verbose:
        _quiet_optional_decoders()
    try:
        return int(args.func(args) or 0)
    except (UserError, FileNotFoundError, FileExistsError, ValueError) as exc:
        print(f"infnet-monai {args.command}: error: {exc}", file=sys.stderr)
        return 2


def entry() -> None:
    """The ``infnet-monai`` command: :func:`main`, then exit without the interpreter's teardown of
    torch and MONAI (about 1 s of a short run), once every output is written and the streams and
    logs are flushed."""
    import logging
    import os

    code = main()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    entry()
