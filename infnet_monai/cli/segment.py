"""``infnet-monai segment``, ``prepare`` and ``summarize``: CT volumes to masks, the compiled network
built once per machine, and the tables of a run split into parts."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from infnet_monai.cli.arguments import add_class_arguments, add_model_arguments
from infnet_monai.defaults import (
    COMPILE_MIN_SLICES,
    CPU_BATCH_SIZE,
    DEFAULT_THRESHOLD,
    DEFAULT_WINDOW_HU,
    GPU_BATCH_SIZE,
)


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


def add_segment(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("segment", help="segment CT volumes (NIfTI or DICOM series) into infection masks")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="a .nii/.nii.gz file, a DICOM series folder or a glob")
    p.add_argument("-o", "--output-dir", type=Path, required=True, help="folder for <name>_seg.nii.gz masks")
    add_model_arguments(p)
    p.add_argument("--batch-size", type=int, default=None,
                   help=f"axial slices per network call (default {GPU_BATCH_SIZE} on a GPU, {CPU_BATCH_SIZE} on the "
                        "CPU)")
    p.add_argument("--precision", choices=["fp32", "fp16", "bf16"], default=None,
                   help="network precision (default: bf16 autocast on CPUs with native bf16, 2-3x faster, masks "
                        "within Dice 0.997 of fp32 with the shipped model; fp32 elsewhere and with --compile on); "
                        "fp32 keeps the exact path")
    p.add_argument("--compile", choices=["auto", "on", "off"], default="auto",
                   help="CPU: run the network from its compiled package in the run's precision, fp32 or bf16 (1.3-1.7x "
                        "faster per slice; built once per machine in 30-60 s by 'infnet-monai prepare' or here, cached in "
                        "~/.cache/infnet_monai or $INFNET_MONAI_CACHE). auto (default): use a package built before, build "
                        f"one when the inputs hold at least {COMPILE_MIN_SLICES} slices; on: build it if missing; off: never")
    p.add_argument("--window", type=float, nargs=2, default=list(DEFAULT_WINDOW_HU), metavar=("LOW", "HIGH"),
                   help="HU window mapped to [0, 1] (default %(default)s)")
    p.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD,
                   help="probability threshold (default %(default)s)")
    p.add_argument("--no-lung-crop", action="store_true", help="do not crop in-plane to the lungs")
    p.add_argument("--no-slice-crop", action="store_true",
                   help="infer every slice (default: only slices within 5 mm of the lungs; the others are background)")
    p.add_argument("--no-lung-restrict", action="store_true", help="do not restrict the mask to the dilated lungs")
    p.add_argument("--save-prob", action="store_true", help="also write <name>_prob.nii.gz (float32)")
    p.add_argument("--series", metavar="UID", help="DICOM SeriesInstanceUID when a folder holds several series")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.add_argument("--report", action="store_true",
                   help="also write <name>_burden.json, <name>_qc.png and a row of burden.csv")
    add_class_arguments(p, "a labelmap 0 background, 1 ground-glass opacity, 2 consolidation "
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

    from infnet_monai.runtime import prepare_package

    start = time.perf_counter()
    try:
        built = prepare_package(args.weights, args.batch_size, args.image_size, args.precision)
    except RuntimeError as exc:
        print(f"infnet-monai prepare: error: {exc}", file=sys.stderr)
        return 1
    print(f"{built.path}: compiled network ready ({built.precision}, {built.batch_size} slices of "
          f"{built.size}x{built.size} per call; {time.perf_counter() - start:.0f} s); segment runs use it from now on")
    return 0


def add_prepare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "prepare",
        help="build the compiled CPU network once after installing (30-60 s), so that every later segment run "
        "on this machine uses it without flags",
    )
    add_model_arguments(p, device=False)  # packages are CPU code
    p.add_argument("--batch-size", type=int, default=None,
                   help=f"slices per call the package is built for (default {CPU_BATCH_SIZE})")
    p.add_argument("--precision", choices=["fp32", "bf16"], default=None,
                   help="default: bf16 on CPUs with native bf16, else fp32 (segment's default)")
    p.set_defaults(func=_prepare)


def _summarize(args: argparse.Namespace) -> int:
    from infnet_monai.cohort import summarize, summary_line

    counts = summarize(args.output_dir)
    print(summary_line(args.output_dir, counts))
    return 1 if counts["missing"] else 0


def add_summarize(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "summarize",
        help="merge the summary/failures/burden tables of a run split into parts (--num-parts, torchrun) "
        "into summary.csv, failures.csv and burden.csv",
    )
    p.add_argument("output_dir", metavar="OUT_DIR", help="the -o folder of the segment runs")
    p.set_defaults(func=_summarize)
