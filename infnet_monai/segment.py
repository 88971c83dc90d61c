"""``infnet-monai segment``: segment CT volumes (NIfTI files, DICOM folders, globs) to masks.

Each volume goes through the shared chain (:mod:`infnet_monai.transforms.chain`) and
:func:`infnet_monai.inference.infer_volume`; a bad volume is reported in one line and skipped,
the others are still processed; outputs are written atomically and never over an input. The
next volume is read and preprocessed in a background thread while the current one is inferred
(``prefetch``).
"""

from __future__ import annotations

import errno
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm import tqdm

from infnet_monai.inference import (
    compile_choice,
    default_device,
    default_precision,
    infer_volume,
    load_network,
    load_pattern_network,
    mask_saver,
    require_weights,
    slice_inferer,
)
from infnet_monai.labels import class_names, labels_of, sidecar_path, write_label_sidecar
from infnet_monai.naming import case_name, check_output_names, output_file
from infnet_monai.report.burden import check_report_csv
from infnet_monai.shipped import network_size
from infnet_monai.transforms.chain import DEFAULT_WINDOW_HU, ct_postprocessing, ct_preprocessing
from infnet_monai.transforms.io import CTInputError, estimated_slices, expand_inputs
from infnet_monai.utils import prepare_output_dir
from infnet_monai.utils.prefetch import prefetch_map

__all__ = ["SegmentOptions", "segment_volumes"]


@dataclass
class SegmentOptions:
    """Settings of a segmentation run (CLI flags).

    ``weights``: None runs the shipped model. ``image_size``: in-plane size of the network
    input (None: the model's own, :func:`infnet_monai.shipped.network_size`).
    ``batch_size``: slices per network call (None: 32 on a GPU, 2 on the CPU). ``precision``:
    network precision ("fp32", or "fp16"/"bf16" autocast; None: bf16 on CPUs with native bf16,
    fp32 elsewhere and with ``compile=True``, :func:`~infnet_monai.inference.default_precision`). ``slice_crop``:
    infer only the slices near the lungs. ``prefetch``: preprocess the next volume during the
    current one's inference (None: on a GPU only; on a 2-core CPU both compete for the cores).
    ``compile`` (CPU, fp32): run the network from its compiled package, True building it when
    missing, False never; None: a package built before is used, and one is built when the run is
    long enough to pay back the build (:func:`~infnet_monai.inference.compile_choice`).
    ``classes``: ``"infection"`` (mask 0/1, ``<name>_seg.nii.gz``) or ``"patterns"`` (labelmap
    0 background, 1 ground-glass opacity, 2 consolidation, ``<name>_patterns.nii.gz`` with a
    ``<name>_patterns.json`` naming the labels; the Inf-Net's prior through the multi-class UNet
    of ``pattern_weights``, None: the shipped one; never compiled).
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
    threshold: float = 0.5
    save_prob: bool = False
    overwrite: bool = False
    series_uid: str | None = None
    progress: bool = True
    report: bool = False
    classes: str = "infection"
    pattern_weights: str | None = None
    results: list = field(default_factory=list)


def _write_report(path: Path, result, opts: SegmentOptions) -> None:
    """Burden JSON, CSV row and QC PNG of a segmented volume, next to its mask."""
    from monai.transforms import Orientation

    from infnet_monai.report.run import load_volume, report_volumes
    from infnet_monai.utils.geometry import RAS_LABELS

    ct = load_volume(path)
    to_ras = Orientation(axcodes="RAS", labels=RAS_LABELS)
    lung = result.item.get("lung")
    report_volumes(
        ct, to_ras(result.item["pred"]), None if lung is None else to_ras(lung), _report_case(path, opts),
        opts.output_dir, csv_path=_report_csv(opts), overwrite=True, classes=opts.classes,
    )


# postfixes of the mask's and the probabilities' names by what the mask holds
_POSTFIXES = {"infection": ("seg", "prob"), "patterns": ("patterns", "patterns_prob")}


def _report_case(path: Path, opts: SegmentOptions) -> str:
    """The case name of a volume's burden report and QC image (a patterns run's carry ``_patterns``)."""
    return case_name(path, opts.series_uid) + ("_patterns" if opts.classes == "patterns" else "")


def _report_csv(opts: SegmentOptions) -> Path:
    """The run's burden table: one per output folder and kind of mask."""
    return Path(opts.output_dir) / ("burden_patterns.csv" if opts.classes == "patterns" else "burden.csv")


def _root_cause(exc: BaseException, path: Path) -> str:
    """One line for a failed volume: the CT input error when MONAI wrapped one, else the
    innermost error prefixed with the input's path."""
    chain = [exc]
    while chain[-1].__cause__ is not None or chain[-1].__context__ is not None:
        chain.append(chain[-1].__cause__ or chain[-1].__context__)
    for err in chain:
        if isinstance(err, CTInputError):
            return str(err)
    inner = chain[-1]
    return f"{path}: {inner.__class__.__name__}: {str(inner).splitlines()[0] if str(inner) else ''}"


def _write_error(exc: BaseException, target: Path) -> str:
    """One line for an output that could not be written. MONAI's ``SaveImage`` folds the
    writer's error into a multi-line message; its last ``...Error: ...`` line is the cause."""
    text = str(exc) if not isinstance(exc, OSError) else f"{exc.__class__.__name__}: [Errno {exc.errno}] {exc.strerror}"
    causes = [line.strip() for line in text.splitlines() if re.match(r"\s*\w+(Error|Exception): ", line)]
    cause = causes[-1] if causes else f"{exc.__class__.__name__}: {' '.join(text.split())}"
    errno_match = re.search(r"\[Errno (\d+)\] ([^:']+)", cause)
    if errno_match:  # the reason without the temporary file's name
        number, reason = int(errno_match[1]), errno_match[2].strip()
        fix = {
            errno.ENOSPC: "free disk space or choose another -o",
            errno.EDQUOT: "free space in your quota or choose another -o",
            errno.EROFS: "choose a writable -o",
            errno.EACCES: "choose a writable -o",
            errno.EPERM: "choose a writable -o",
            errno.EISDIR: "remove that folder or choose another -o",
        }.get(number, "check the output folder")
        return f"{target}: cannot write the output ({reason}); {fix}"
    return f"{target}: cannot write the output ({cause}); check the output folder"


def _outputs(path: Path, opts: SegmentOptions) -> list[Path]:
    """Every file a volume's run writes, the mask first (:mod:`infnet_monai.naming`)."""
    case, out = case_name(path, opts.series_uid), Path(opts.output_dir)
    mask_postfix, prob_postfix = _POSTFIXES[opts.classes]
    files = [output_file(case, out, mask_postfix)]
    if opts.classes == "patterns":
        files.append(sidecar_path(files[0]))  # the label names
    if opts.save_prob:
        files.append(output_file(case, out, prob_postfix))
    if opts.report:
        files += [out / f"{_report_case(path, opts)}_burden.json", out / f"{_report_case(path, opts)}_qc.png"]
    return files


def _done_or_blocked(outputs: list[Path], overwrite: bool) -> str | None:
    """Why a volume is not run (a line for stderr), or None to run it: all its outputs exist
    (kept), some exist and others not (redo it with --overwrite), or one is not a file."""
    existing = [o for o in outputs if o.exists() or o.is_symlink()]
    blocked = [o for o in existing if not o.is_file()]
    if blocked:
        return f"error: {blocked[0]}: exists and is not a file; remove it or choose another -o"
    if not existing or overwrite:
        return None
    if len(existing) == len(outputs):
        return f"{outputs[0]}: exists, kept; pass --overwrite to replace it"
    missing = next(o for o in outputs if o not in existing)
    return f"error: {existing[0]}: exists but {missing.name} does not; pass --overwrite to redo the volume"


def _expected_output_bytes(paths: Sequence[Path], opts: SegmentOptions) -> int:
    """A generous estimate of the run's output size from the inputs' slice counts (512 × 512
    voxels a slice: about 0.1 byte a voxel for a compressed mask, 2 for probabilities)."""
    per_voxel = 0.1 + (2.0 if opts.save_prob else 0.0)
    return int(sum(estimated_slices(p) for p in paths) * 512 * 512 * per_voxel) + (1 << 20) * len(paths)


def segment_volumes(inputs: Sequence[str], opts: SegmentOptions) -> int:
    """Segment every volume in ``inputs``; returns the number of inputs that failed, were
    skipped (a glob's match that is not a volume) or gave no usable result (no lung found).

    Before any work: every input's outputs are named by one rule (:mod:`infnet_monai.naming`),
    two inputs sharing an output or an output replacing an input stop the run
    (:class:`~infnet_monai.naming.OutputClash`), and the output folder is created and checked
    (writable, free space; :class:`~infnet_monai.utils.OutputDirError`).
    """
    skipped: list[str] = []
    paths = expand_inputs(inputs, skipped)
    for reason in skipped:
        print(f"skipped: {reason}", file=sys.stderr)
    if not paths:
        raise CTInputError(f"{', '.join(map(str, inputs))}: no CT volume among the matches; see the lines above")
    outputs = check_output_names(paths, lambda p: _outputs(p, opts))
    targets = {path: files[0] for path, files in outputs.items()}
    weights = require_weights(opts.weights)
    failures = len(skipped)
    todo = []
    for path in paths:
        reason = _done_or_blocked(outputs[path], opts.overwrite)
        if reason is None:
            todo.append(path)
        else:
            print(reason, file=sys.stderr)
            failures += reason.startswith("error")
    if opts.report:  # a foreign file where the burden table goes would fail after the inference
        check_report_csv(_report_csv(opts), class_names(opts.classes))
    created = not Path(opts.output_dir).exists()
    prepare_output_dir(opts.output_dir, _expected_output_bytes(todo, opts))
    try:
        return failures + _segment_todo(todo, targets, weights, opts)
    finally:
        if created and Path(opts.output_dir).is_dir() and not any(Path(opts.output_dir).iterdir()):
            Path(opts.output_dir).rmdir()  # nothing written: leave no empty folder behind


def _segment_todo(todo: list[Path], targets: dict[Path, Path], weights: Path, opts: SegmentOptions) -> int:
    """Run the volumes of ``todo`` and write their outputs; returns how many failed."""
    failures = 0
    size = opts.image_size or network_size(weights)
    pre = ct_preprocessing(
        spatial_size=size, window=opts.window, lung_crop=opts.lung_crop, slice_crop=opts.slice_crop, series_uid=opts.series_uid,
        keep_lung_mask=opts.restrict_to_lung, network_input=False,
    )
    post = ct_postprocessing(
        pre, threshold=opts.threshold, prob_key="prob" if opts.save_prob else None,
        restrict_to_lung=opts.restrict_to_lung, classes=opts.classes,
    )
    # the compiled package asked for by --compile on runs fp32; otherwise the device's default
    precision = opts.precision or ("fp32" if opts.compile else default_precision(opts.device))
    inferer = slice_inferer(opts.batch_size, opts.device, progress=opts.progress, precision=precision, size=size)
    mask_postfix, prob_postfix = _POSTFIXES[opts.classes]
    save_mask = mask_saver(opts.output_dir, mask_postfix, np.uint8)
    save_prob = mask_saver(opts.output_dir, prob_postfix, np.float32)
    if opts.classes == "patterns":
        if opts.compile:
            raise ValueError("--compile on: the infection-pattern network is not compiled; use --compile auto or off")
        network = load_pattern_network(weights, opts.pattern_weights, opts.device, size)
    else:
        compile = compile_choice(todo, opts.device, precision, requested=opts.compile)
        network = load_network(weights, opts.device, compile=compile, batch_size=opts.batch_size, size=size)
    prefetch = default_device(opts.device).type == "cuda" if opts.prefetch is None else opts.prefetch
    volumes = prefetch_map(lambda p: pre({"image": str(p)}), todo, enabled=prefetch)
    for done, (path, item) in enumerate(
        tqdm(volumes, total=len(todo), desc="volumes", unit="vol", disable=not opts.progress or len(todo) < 2)
    ):
        target = targets[path]
        try:
            if isinstance(item, Exception):
                raise item
            result = infer_volume(item, network, inferer, post)
        except Exception as exc:  # noqa: BLE001 - one volume's failure must not stop the others
            print(f"error: {_root_cause(exc, path)}", file=sys.stderr)
            failures += 1
            continue
        lung = result.item.get("lung")
        if lung is not None and not bool((lung == 1).any() or (lung == 2).any()):
            print(
                f"warning: {path}: no lung found (no air-filled lung tissue below -320 HU), so nothing was written; "
                "check that the input is a chest CT in HU that covers the lungs",
                file=sys.stderr,
            )
            failures += 1
            continue
        try:
            save_mask(result.item["pred"])
            if opts.classes == "patterns":
                write_label_sidecar(target, opts.classes)
            if opts.save_prob:
                save_prob(result.item["prob"])
            if opts.report:
                _write_report(path, result, opts)
        except Exception as exc:  # noqa: BLE001 - a full or read-only disk fails every later volume too
            print(f"error: {_write_error(exc, target)}", file=sys.stderr)
            left = len(todo) - done - 1
            if left:
                print(f"error: {left} more volume(s) not segmented after the write error", file=sys.stderr)
            return failures + 1 + left
        opts.results.append((path, target, result))
        print(result.summary(case_name(path, opts.series_uid), labels_of(opts.classes)))
    return failures
