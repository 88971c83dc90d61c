"""Volume inference speed and memory: the pipeline against a naive slice-by-slice reference.

    python benchmarks/volume_inference.py [--slices 64] [--repeats 3] [--threads N]
                                          [--memory-slices 600] [--batch-size 8]

Rows, all on the same volume with the same random weights:

- naive reference (the original repository's way): every axial slice alone, HU-windowed to
  8 bits, resized to 352x352 with PIL bilinear, ImageNet-normalised, batch 1 through the plain
  eval network, the probabilities resized back with PIL bilinear and thresholded at 0.5;
- pipeline, unoptimised fp32: the shared chain with the plain eval network, every slice;
- pipeline, fast defaults: what the CLI and the bundle do without flags while no compiled
  package is built on the machine (the eager folded channels-last network);
- pipeline, fast + compiled package: what they do without flags once the package is built (by
  a first run of at least 2000 slices, or ``--compile on``); its one-off build, into a fresh
  cache folder, and its load are timed separately and left out of the per-volume time.

Printed: seconds and slices/s (input slices over wall time, reading the file to writing the
mask), the speed-up over the naive reference, model-only seconds over the inferred slices and the
share of time outside the model, the fast masks' agreement with the unoptimised ones, and the
peak resident memory of each pipeline configuration on a 512x512x``--memory-slices`` volume
(measured in a fresh process each). Timings are medians of ``--repeats`` rounds in which every
row runs once in turn (drifts of a shared machine hit all rows alike); the load average of the
machine is printed with them (other processes slow every figure down).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from PIL import Image

from common import (
    DEFAULT_WORK_DIR,
    package_seconds,
    bench_volume,
    dice,
    interleaved,
    machine_line,
    model_runner,
    peak_memory_gb,
    pipeline_parts,
    random_weights,
    run_pipeline,
    set_threads,
    use_fresh_package_cache,
)

from infnet_monai.networks import InfNet, load_authors_checkpoint  # noqa: E402
from infnet_monai.transforms import LoadCT  # noqa: E402
from infnet_monai.transforms.chain import (  # noqa: E402
    DEFAULT_WINDOW_HU,
    IMAGENET_MEAN,
    IMAGENET_STD,
    NETWORK_SIZE,
    SLICE_AXCODES,
)


def naive_reference(path: Path, network: torch.nn.Module, out_dir: Path) -> np.ndarray:
    """Mask of ``path`` the original repository's way (see the module docstring); written as
    NIfTI like the pipeline's. Returns the uint8 mask (X, Y, Z) in the oriented grid."""
    from monai.transforms import Orientation

    image = Orientation(axcodes=SLICE_AXCODES, labels=None)(LoadCT(ensure_channel_first=True)(str(path)))
    hu = image[0].numpy()
    low, high = DEFAULT_WINDOW_HU
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    mask = np.zeros(hu.shape, dtype=np.uint8)
    for z in range(hu.shape[2]):
        pixels = (np.clip((hu[:, :, z] - low) / (high - low), 0, 1) * 255).astype(np.uint8)
        resized = Image.fromarray(pixels).resize((NETWORK_SIZE, NETWORK_SIZE), Image.BILINEAR)
        x = torch.from_numpy(np.asarray(resized, dtype=np.float32) / 255.0)[None, None].expand(1, 3, -1, -1)
        with torch.no_grad():
            prob = torch.sigmoid(network((x - mean) / std))[0, 0].numpy()
        back = Image.fromarray(prob, mode="F").resize(pixels.shape[::-1], Image.BILINEAR)
        mask[:, :, z] = np.asarray(back) > 0.5
    nib.save(nib.Nifti1Image(mask, np.asarray(image.affine)), str(out_dir / "naive_seg.nii.gz"))
    return mask


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=64, help="slices of the timed 512x512 volume (default 64)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per row, median reported (default 3)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: one per core)")
    parser.add_argument("--batch-size", type=int, default=None, help="slices per network call (default: library's)")
    parser.add_argument("--memory-slices", type=int, default=600,
                        help="slices of the peak-memory volume (default 600; 0 skips the memory rows)")
    parser.add_argument("--skip-naive", action="store_true", help="leave out the naive reference")
    parser.add_argument("--no-compile", action="store_true", help="leave out the compiled-package row")
    parser.add_argument("--work-dir", type=Path, default=DEFAULT_WORK_DIR, help="cache of volumes and weights")
    args = parser.parse_args(argv)

    threads = set_threads(args.threads)
    use_fresh_package_cache(args.work_dir)
    volume = bench_volume(args.slices, args.work_dir)
    weights = random_weights(args.work_dir)
    print(f"machine: {machine_line()}")
    print(f"date: {time.strftime('%Y-%m-%d %H:%M')}; volume: {volume.name} (512x512x{args.slices}); "
          f"{args.repeats} repeats; {threads} threads")
    out = Path(tempfile.mkdtemp(prefix="bench_out_"))

    # every row (and the network alone on the fast pipeline's slices) runs in turn, round after
    # round, so that drifts of a shared machine hit all rows alike
    fns, labels, runs, last = {}, {}, {}, {}
    if not args.skip_naive:
        plain_net = load_authors_checkpoint(InfNet(), weights).eval()
        fns["naive"] = lambda: naive_reference(volume, plain_net, out)
        labels["naive"] = "naive reference (batch 1, PIL)"
    for fast in (False, True):
        start = time.perf_counter()
        parts = pipeline_parts(weights, fast=fast, batch_size=args.batch_size)
        runs[fast] = (parts, time.perf_counter() - start)

        def pipeline(fast=fast, parts=parts) -> None:
            last[fast] = run_pipeline(volume, parts, out)

        fns[fast] = pipeline
        labels[fast] = "pipeline, fast defaults" if fast else "pipeline, unoptimised fp32"
        pipeline()  # the preprocessed slices for the model-only rows
        network, *_, inferer = parts
        fns[("model", fast)] = model_runner(network, last[fast].item["image"], inferer.sw_batch_size)
    if not args.no_compile:
        build_s, load_s = package_seconds(weights, runs[True][0][3].sw_batch_size)
        compiled_parts = pipeline_parts(weights, fast=True, batch_size=args.batch_size, compile=True)

        def compiled_pipeline() -> None:
            last["compiled"] = run_pipeline(volume, compiled_parts, out)

        fns["compiled"] = compiled_pipeline
        labels["compiled"] = "pipeline, fast + compiled package"
        compiled_pipeline()
        fns[("model", "compiled")] = model_runner(compiled_parts[0], last["compiled"].item["image"], compiled_parts[3].sw_batch_size)
    t = interleaved(fns, args.repeats)

    print(f"\n{'':34s} {'wall s':>8s} {'slices/s':>9s} {'cpu s':>8s}  inferred  stages of the last run (pre / infer+post / save, s)")
    for key, label in labels.items():
        run = last.get(key)
        stages = f"{run.preprocess:.1f} / {run.infer_post:.1f} / {run.save:.1f}" if run else "-"
        inferred = run.inferred if run else args.slices
        print(f"{label:34s} {t[key].wall:8.2f} {args.slices / t[key].wall:9.2f} {t[key].cpu:8.2f}  {inferred:8d}  {stages}")
    print("  runs (wall s): " + "; ".join(f"{labels[k]}: {', '.join(f'{w:.1f}' for w in t[k].walls)}" for k in labels))
    for key in [k for k in labels if k not in (True, "compiled")]:
        print(f"speed-up of the fast pipeline over the {labels[key]}: {t[key].wall / t[True].wall:.2f}x")
    if "naive" in t:
        for key in [k for k in (True, "compiled") if k in labels]:
            ratios = sorted(a / b for a, b in zip(t["naive"].walls, t[key].walls))
            print(f"naive / {labels[key]} round by round: {', '.join(f'{r:.2f}' for r in ratios)} "
                  f"(median {ratios[len(ratios) // 2]:.2f})")
    if "compiled" in labels:
        gain = t[True].wall - t["compiled"].wall
        over_naive = f"{t['naive'].wall / t['compiled'].wall:.2f}x the naive reference, " if "naive" in t else ""
        print(f"fast + compiled package: {over_naive}{t[True].wall / t['compiled'].wall:.2f}x the fast defaults; the "
              f"package was built once in {build_s:.0f} s and loads in {load_s:.2f} s per process"
              + (f" (the build pays off after {build_s / gain:.0f} volumes like this one)" if gain > 0 else ""))
        compiled_mask = last["compiled"].mask
        print(f"packaged vs fast masks: {int((compiled_mask != last[True].mask).sum())} voxels differ, "
              f"Dice {dice(compiled_mask, last[True].mask):.6f}")
    model_rows = [(fast, parts, setup) for fast, (parts, setup) in runs.items()]
    if "compiled" in labels:
        model_rows.append(("compiled", compiled_parts, load_s))
    for fast, parts, setup in model_rows:
        model, run, inferer = t[("model", fast)], last[fast], parts[-1]
        label = {False: "unoptimised fp32", True: "fast defaults", "compiled": "fast + compiled package"}[fast]
        print(f"{label}: network setup {setup:.1f} s (once per run); model-only {model.wall:.2f} s for {run.inferred} "
              f"slices, batch {inferer.sw_batch_size} ({run.inferred / model.wall:.2f} slices/s, cpu {model.cpu:.2f} s); "
              f"end-to-end / model-only {t[fast].wall / model.wall:.2f}; outside the model {1 - model.wall / t[fast].wall:.0%}")
    fast_mask, plain_mask = last[True].mask, last[False].mask
    differ = int((fast_mask != plain_mask).sum())
    print(f"fast vs unoptimised masks: {differ} of {fast_mask.size} voxels differ, Dice {dice(fast_mask, plain_mask):.6f} "
          f"({int(plain_mask.sum())} foreground voxels)")
    print(f"load average after the timings: {os.getloadavg()[0]:.2f}")

    if args.memory_slices:
        big = bench_volume(args.memory_slices, args.work_dir)
        configs = [("unoptimised fp32", False, False), ("fast defaults", True, False)]
        if not args.no_compile:
            configs.append(("fast + compiled package", True, True))
        for label, fast, compiled in configs:
            peak = peak_memory_gb(big, weights, fast=fast, threads=args.threads, compile=compiled)
            print(f"peak resident memory, 512x512x{args.memory_slices}, {label}: {peak['peak_gb']:.2f} GB "
                  f"(imports alone {peak['imports_gb']:.2f} GB; {peak['seconds']:.0f} s, {peak['inferred']} slices inferred)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
