"""``infnet-monai segment``: a segmentation run from CT volumes (NIfTI files, DICOM folders,
globs) to files: masks, probabilities, reports, DICOM outputs and the run's ledgers.

Each volume goes through one :class:`~infnet_monai.segmenter.Segmenter` (the shared chain, the
network loaded once, the slice inferer); a bad volume is reported in one line and skipped,
the others are still processed; outputs are written atomically and never over an input. The
next volume is read and preprocessed in a background thread while the current one is inferred
(``prefetch``).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm import tqdm

from infnet_monai.cohort import (
    RunLedger,
    merge_when_all_parts_done,
    part_from_environment,
    part_suffix,
    rank_device,
    select_part,
    summary_row,
)
from infnet_monai.inference import mask_saver
from infnet_monai.runtime import default_device, require_weights
from infnet_monai.labels import class_names, labels_of, sidecar_path, write_label_sidecar
from infnet_monai.dicom.outputs import (
    dicom_input_problem,
    dicom_output_files,
    is_folder_output,
    load_written_mask,
    segment_dicom_outputs,
    writes_nifti,
)
from infnet_monai.naming import MASK_POSTFIXES, case_name, check_output_names, output_file
from infnet_monai.report.burden import check_report_csv
from infnet_monai.segmenter import Segmenter
from infnet_monai.defaults import DEFAULT_THRESHOLD, DEFAULT_WINDOW_HU
from infnet_monai.data.inputs import CTInputError, estimated_slices, expand_inputs
from infnet_monai.utils import prepare_output_dir
from infnet_monai.utils.errors import failure_line, write_failure_line
from infnet_monai.utils.prefetch import prefetch_map
from infnet_monai.utils.timing import RunTimings

__all__ = ["SegmentOptions", "segment_volumes"]


@dataclass
class SegmentOptions:
    """Settings of a segmentation run (CLI flags).

    ``weights``: None runs the shipped model. ``image_size``: in-plane size of the network
    input (None: the model's own, :func:`infnet_monai.shipped.network_size`).
    ``batch_size``: slices per network call (None:
    :func:`~infnet_monai.runtime.default_batch_size`). ``precision``: network precision ("fp32",
    or "fp16"/"bf16" autocast; None: bf16 on CPUs with native bf16, fp32 elsewhere,
    :func:`~infnet_monai.runtime.default_precision`). ``slice_crop``: infer only the slices near
    the lungs. ``prefetch``: preprocess the next volume during the
    current one's inference (None: on a GPU only; on a 2-core CPU both compete for the cores).
    ``compile`` (CPU, fp32 or bf16): run the network from its compiled package, True building it when
    missing, False never; None: a package built before is used, and one is built when the run is
    long enough to pay back the build (:func:`~infnet_monai.runtime.compile_choice`).
    ``classes``: ``"infection"`` (mask 0/1, ``<name>_seg.nii.gz``) or ``"patterns"`` (labelmap
    0 background, 1 ground-glass opacity, 2 consolidation, ``<name>_patterns.nii.gz`` with a
    ``<name>_patterns.json`` naming the labels; the Inf-Net's prior through the multi-class UNet
    of ``pattern_weights``, None: the shipped one; never compiled). ``num_parts``/``part_id``:
    run part ``part_id`` (0-based) of the sorted inputs split into ``num_parts``
    (:func:`~infnet_monai.cohort.select_part`; None: ``torchrun``'s ``WORLD_SIZE``/``RANK``, else
    the whole run); each part keeps its own ledgers (:mod:`infnet_monai.cohort`). ``timings``:
    write where the run's time went there (JSON, :class:`~infnet_monai.utils.timing.RunTimings`).
    ``output_type``: ``"nifti"`` (the mask), ``"dicom-seg"`` (a DICOM SEG ``<name>_seg.dcm``
    instead, for a DICOM series input) or ``"all"`` (mask, SEG and the overlay series folder
    ``<name>_overlay/``; :mod:`infnet_monai.dicom`).
    """

    output_dir: Path
    weights: str | None = None
    image_size: int | None = None
    device: str | None = None
    batch_size: int | None = None
    precision: str | None = None
    window: Sequence[float] = DEFAULT_WINDOW_HU
    lung_crop: bool = True
    slice_crop: bool = True
    prefetch: bool | None = None
    compile: bool | None = None
    restrict_to_lung: bool = True
    threshold: float = DEFAULT_THRESHOLD
    save_prob: bool = False
    overwrite: bool = False
    series_uid: str | None = None
    progress: bool = True
    report: bool = False
    classes: str = "infection"
    pattern_weights: str | None = None
    output_type: str = "nifti"
    num_parts: int | None = None
    part_id: int | None = None
    timings: Path | None = None
    results: list = field(default_factory=list)

    def part(self) -> tuple[int, int]:
        """``(num_parts, part_id)`` of this run: the options', else torchrun's, else ``(1, 0)``."""
        if self.num_parts is not None or self.part_id is not None:
            return self.num_parts or 1, self.part_id or 0
        return part_from_environment() or (1, 0)


def _write_report(path: Path, result, opts: SegmentOptions) -> dict:
    """Burden JSON, CSV row and QC PNG of a segmented volume, next to its mask; returns the report."""
    from monai.transforms import Orientation

    from infnet_monai.report.run import report_volumes
    from infnet_monai.utils.geometry import RAS_LABELS

    to_ras = Orientation(axcodes="RAS", labels=RAS_LABELS)
    lung = result.item.get("lung")
    return report_volumes(
        to_ras(result.ct), to_ras(result.item["pred"]), None if lung is None else to_ras(lung), _report_case(path, opts),
        opts.output_dir, csv_path=_report_csv(opts), overwrite=True, classes=opts.classes,
    )


def _report_case(path: Path, opts: SegmentOptions) -> str:
    """The case name of a volume's burden report and QC image (a patterns run's carry ``_patterns``)."""
    return case_name(path, opts.series_uid) + ("_patterns" if opts.classes == "patterns" else "")


def _report_csv(opts: SegmentOptions) -> Path:
    """The run's burden table: one per output folder, kind of mask and part of a split run."""
    kind = "burden_patterns" if opts.classes == "patterns" else "burden"
    return Path(opts.output_dir) / f"{kind}{part_suffix(*opts.part())}.csv"


def _outputs(path: Path, opts: SegmentOptions) -> list[Path]:
    """Every file a volume's run writes, the mask first (:mod:`infnet_monai.naming`)."""
    case, out = case_name(path, opts.series_uid), Path(opts.output_dir)
    mask_postfix, prob_postfix = MASK_POSTFIXES[opts.classes]
    files = [output_file(case, out, mask_postfix)] if writes_nifti(opts.output_type) else []
    if opts.classes == "patterns" and files:
        files.append(sidecar_path(files[0]))  # the label names
    files += dicom_output_files(case, out, mask_postfix, opts.output_type)  # a SEG, an overlay folder
    if opts.save_prob:
        files.append(output_file(case, out, prob_postfix))
    if opts.report:
        files += [out / f"{_report_case(path, opts)}_burden.json", out / f"{_report_case(path, opts)}_qc.png"]
    return files


def _done_or_blocked(outputs: list[Path], overwrite: bool) -> str | None:
    """Why a volume is not run (a line for stderr), or None to run it: all its outputs exist
    (kept), the mask exists but others asked for now do not (redo it with --overwrite), or one is
    not a file. The mask is written last, so outputs without their mask are the leftovers of an
    interrupted run: the volume is run again and they are replaced."""
    existing = [o for o in outputs if o.exists() or o.is_symlink()]
    blocked = [o for o in existing if not (o.is_dir() if is_folder_output(o) else o.is_file())]
    if blocked:
        kind = "folder" if is_folder_output(blocked[0]) else "file"
        return f"error: {blocked[0]}: exists and is not a {kind}; remove it or choose another -o"
    if not existing or overwrite or outputs[0] not in existing:
        return None
    if len(existing) == len(outputs):
        return f"{outputs[0]}: exists, kept; pass --overwrite to replace it"
    missing = next(o for o in outputs if o not in existing)
    return f"error: {existing[0]}: exists but {missing.name} does not; pass --overwrite to redo the volume"


def _expected_output_bytes(paths: Sequence[Path], opts: SegmentOptions) -> int:
    """A generous estimate of the run's output size from the inputs' slice counts (512 × 512
    voxels a slice: about 0.1 byte a voxel for a compressed mask, 2 for probabilities, 3 for an
    overlay series' RGB image of each slice)."""
    per_voxel = 0.1 + (2.0 if opts.save_prob else 0.0) + (3.0 if opts.output_type == "all" else 0.0)
    return int(sum(estimated_slices(p) for p in paths) * 512 * 512 * per_voxel) + (1 << 20) * len(paths)


def segment_volumes(inputs: Sequence[str], opts: SegmentOptions) -> int:
    """Segment every volume in ``inputs``; returns the number of inputs that failed, were
    skipped (a glob's match that is not a volume) or gave no usable result (no lung found).

    Before any work: every input's outputs are named by one rule (:mod:`infnet_monai.naming`),
    two inputs sharing an output or an output replacing an input stop the run
    (:class:`~infnet_monai.naming.OutputClash`), and the output folder is created and checked
    (writable, free space; :class:`~infnet_monai.utils.OutputDirError`).
    """
    num_parts, part_id = opts.part()
    if opts.device is None:
        opts = replace(opts, device=rank_device())  # torchrun on a GPU machine: one GPU per rank
    skipped: list[str] = []
    paths = expand_inputs(inputs, skipped)
    if part_id > 0:
        skipped = []  # a glob's non-volumes are reported (and counted) by part 0 alone
    for reason in skipped:
        print(f"skipped: {reason}", file=sys.stderr)
    if not paths:
        raise CTInputError(f"{', '.join(map(str, inputs))}: no CT volume among the matches; see the lines above")
    outputs = check_output_names(paths, lambda p: _outputs(p, opts))  # the whole cohort's, in every part
    targets = {path: files[0] for path, files in outputs.items()}
    if num_parts > 1:
        paths = select_part(sorted(paths), num_parts, part_id)
    weights = require_weights(opts.weights)
    ledger = RunLedger(opts.output_dir, part_suffix(num_parts, part_id))
    if opts.report:  # a foreign file where the burden table goes would fail after the inference
        check_report_csv(_report_csv(opts), class_names(opts.classes))
    created = not Path(opts.output_dir).exists()
    todo, kept, refused = [], [], []
    for path in paths:
        reason = _done_or_blocked(outputs[path], opts.overwrite) or dicom_input_problem(
            path, opts.series_uid, opts.output_type)  # a SEG's source attributes, before the inference
        if reason is None:
            todo.append(path)
        else:
            print(reason, file=sys.stderr)
            (refused if reason.startswith("error") else kept).append((path, reason))
    prepare_output_dir(opts.output_dir, _expected_output_bytes(todo, opts))
    for line in skipped:
        ledger.failed(line.split(": ", 1)[0], f"skipped: {line}")
    for path, reason in refused:
        ledger.failed(path, reason.removeprefix("error: "))
    for path, _ in kept:
        if not ledger.has(path):
            ledger.done(_kept_row(path, outputs[path], opts))
    try:
        failures = len(skipped) + len(refused) + _segment_todo(todo, targets, weights, opts, ledger)
        if opts.num_parts is None and opts.part_id is None:  # torchrun: rank 0 merges the ranks' tables
            merge_when_all_parts_done(opts.output_dir, print_summary=True)
        return failures
    finally:
        if created and Path(opts.output_dir).is_dir() and not any(Path(opts.output_dir).iterdir()):
            Path(opts.output_dir).rmdir()  # nothing written: leave no empty folder behind


def _kept_row(path: Path, outputs: list[Path], opts: SegmentOptions) -> dict:
    """The summary row of a volume whose outputs an earlier run wrote: from its mask and, when
    there is one, its burden report."""
    import json

    report_file = next((o for o in outputs if o.name.endswith("_burden.json")), None)
    report = json.loads(report_file.read_text()) if report_file is not None and report_file.is_file() else None
    return summary_row(path, outputs[0], load_written_mask(outputs[0], path), report=report, status="kept")


def _segment_todo(
    todo: list[Path], targets: dict[Path, Path], weights: Path, opts: SegmentOptions, ledger: RunLedger
) -> int:
    """Run the volumes of ``todo``, write their outputs (the mask last: a volume is done when its
    mask exists) and record each in ``ledger``; returns how many failed."""
    failures = 0
    segmenter = Segmenter(
        weights, device=opts.device, image_size=opts.image_size, batch_size=opts.batch_size, precision=opts.precision,
        compile=opts.compile, window=opts.window, lung_crop=opts.lung_crop, slice_crop=opts.slice_crop,
        restrict_to_lung=opts.restrict_to_lung, threshold=opts.threshold, classes=opts.classes,
        pattern_weights=opts.pattern_weights, keep_prob=opts.save_prob, series_uid=opts.series_uid,
        progress=opts.progress, compile_for=todo, keep_ct=opts.report,
    )
    mask_postfix, prob_postfix = MASK_POSTFIXES[opts.classes]
    save_mask = mask_saver(opts.output_dir, mask_postfix, np.uint8)
    save_prob = mask_saver(opts.output_dir, prob_postfix, np.float32)
    prefetch = default_device(opts.device).type == "cuda" if opts.prefetch is None else opts.prefetch
    timings = RunTimings() if opts.timings else None

    def read(path: Path) -> tuple[dict, float]:
        start = time.perf_counter()
        return segmenter.preprocess(path), time.perf_counter() - start

    volumes = prefetch_map(read, todo, enabled=prefetch)
    for done, (path, item) in enumerate(
        tqdm(volumes, total=len(todo), desc="volumes", unit="vol", disable=not opts.progress or len(todo) < 2)
    ):
        target = targets[path]
        try:
            if isinstance(item, Exception):
                raise item
            item, read_seconds = item
            if timings is not None and done == 0:
                timings.watch(segmenter.network)
            result = segmenter.infer(item)
        except Exception as exc:  # noqa: BLE001 - one volume's failure must not stop the others
            line = failure_line(exc, path, own=CTInputError)
            print(f"error: {line}", file=sys.stderr)
            failures += 1
            ledger.failed(path, line)
            continue
        lung = result.item.get("lung")
        if lung is not None and not bool((lung == 1).any() or (lung == 2).any()):
            line = (f"{path}: no lung found (no air-filled lung tissue below -320 HU), so nothing was written; "
                    "check that the input is a chest CT in HU that covers the lungs")
            print(f"warning: {line}", file=sys.stderr)
            failures += 1
            ledger.failed(path, line)
            continue
        written = time.perf_counter()
        try:
            if opts.classes == "patterns" and writes_nifti(opts.output_type):
                write_label_sidecar(target, opts.classes)
            if opts.save_prob:
                save_prob(result.item["prob"])
            report = _write_report(path, result, opts) if opts.report else None
            segment_dicom_outputs(path, result, opts, weights)  # before the mask: --output-type dicom-seg's SEG is it
            if writes_nifti(opts.output_type):
                save_mask(result.item["pred"])
            ledger.done(summary_row(
                path, target, result.item["pred"], lung, result.seconds, result.slices,
                report=report,
            ))
        except Exception as exc:  # noqa: BLE001 - a full or read-only disk fails every later volume too
            line = write_failure_line(exc, target)
            print(f"error: {line}", file=sys.stderr)
            left = len(todo) - done - 1
            if left:
                print(f"error: {left} more volume(s) not segmented after the write error", file=sys.stderr)
            try:
                ledger.failed(path, line)
                for later in todo[done + 1:]:
                    ledger.failed(later, f"{later}: not segmented after the write error on {target}")
            except OSError:
                pass  # the disk that refused the output refuses the ledger too
            return failures + 1 + left
        opts.results.append((path, target, result))
        print(result.summary(case_name(path, opts.series_uid), labels_of(opts.classes)))
        if timings is not None:
            timings.volume(path, read_seconds, result, time.perf_counter() - written)
    if timings is not None:
        timings.write(opts.timings)
    return failures
