"""How close the network and the pipeline come to what this machine can do.

    python benchmarks/model_limit.py [--threads N] [--repeats 3] [--batch-size N]
                                     [--volumes 3] [--memory-slices 64,300,600]

Printed:

1. the machine's measured fp32 matrix-multiply rate (GFLOP/s): ``torch.mm`` of 2048x2048
   matrices (MKL) and, for reference, a 1x1 convolution of the same size through oneDNN (the
   library the network's convolutions use), with the same thread count;
2. the network alone (slices/s, batch ``--batch-size``, default the library's), plain eval and
   fast (as the CLI loads it), as a percentage of the matmul limit: 27.7 GFLOP per 352x352 slice over the rate;
3. a 64-slice 512x512 volume end to end (file read to mask written) against the network alone
   on the slices it infers; then ``--volumes`` volumes through ``infnet-monai segment``'s library
   function with and without prefetching the next volume;
4. peak resident memory of the fast pipeline for 512x512 volumes of ``--memory-slices`` slices,
   each in a fresh process, plus the 600-slice volume with every slice inferred.

Medians of ``--repeats`` runs; the load average is printed with the figures.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

from common import (
    DEFAULT_WORK_DIR,
    GFLOP_PER_SLICE,
    bench_volume,
    machine_line,
    model_only,
    peak_memory_gb,
    pipeline_parts,
    random_weights,
    run_pipeline,
    set_threads,
    timed,
)

from infnet_monai.segment import SegmentOptions, segment_volumes  # noqa: E402


def matmul_gflops(n: int = 2048, repeats: int = 5) -> tuple[float, float]:
    """GFLOP/s of fp32 ``torch.mm`` (n x n) and of an equal-size 1x1 convolution via oneDNN."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    flops = 2 * n**3 / 1e9
    mm = timed(lambda: torch.mm(a, b), repeats, warmup=1)[0]
    # the same GEMM as a 1x1 convolution: n pixels (64 x n/64) x n channels -> n channels
    x = torch.randn(1, n, 64, n // 64).contiguous(memory_format=torch.channels_last)
    conv = torch.nn.Conv2d(n, n, 1, bias=False).eval().to(memory_format=torch.channels_last)
    with torch.inference_mode():
        one_dnn = timed(lambda: conv(x), repeats, warmup=1)[0]
    return flops / mm.wall, flops / one_dnn.wall


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: one per core)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs, median reported (default 3)")
    parser.add_argument("--batch-size", type=int, default=None, help="slices per network call (default: library's)")
    parser.add_argument("--model-slices", type=int, default=16, help="slices timed for the network alone (default 16)")
    parser.add_argument("--batch-sweep", default="1,2,4,8", help="slices per call to compare ('' skips)")
    parser.add_argument("--volumes", type=int, default=3, help="volumes of the prefetch comparison (0 skips it)")
    parser.add_argument("--memory-slices", default="64,300,600",
                        help="comma-separated slice counts for peak memory ('' skips)")
    parser.add_argument("--work-dir", type=Path, default=DEFAULT_WORK_DIR, help="cache of volumes and weights")
    args = parser.parse_args(argv)

    threads = set_threads(args.threads)
    weights = random_weights(args.work_dir)
    volume = bench_volume(64, args.work_dir)
    print(f"machine: {machine_line()}")
    print(f"date: {time.strftime('%Y-%m-%d %H:%M')}; {args.repeats} repeats; {threads} threads")

    mm, one_dnn = matmul_gflops(repeats=max(args.repeats, 3))
    print(f"\n1. fp32 matmul 2048^3: torch.mm {mm:.0f} GFLOP/s; oneDNN 1x1 convolution {one_dnn:.0f} GFLOP/s "
          f"-> limit {GFLOP_PER_SLICE / mm * 1000:.0f} ms/slice ({mm / GFLOP_PER_SLICE:.2f} slices/s) at the torch.mm rate")

    parts_fast = pipeline_parts(weights, fast=True, batch_size=args.batch_size)
    parts_plain = pipeline_parts(weights, fast=False, batch_size=args.batch_size)
    batch = parts_fast[3].sw_batch_size
    print(f"\n2. network alone, {args.model_slices} slices of 352x352, batch {batch}:")
    slices = torch.rand(3, 352, 352, args.model_slices)
    for label, parts in (("plain eval fp32", parts_plain), ("fast (BN folded, TorchScript/oneDNN)", parts_fast)):
        t = model_only(parts[0], slices, batch, args.repeats)
        rate = args.model_slices / t.wall
        print(f"   {label:38s} {rate:5.2f} slices/s ({t.wall / args.model_slices * 1000:.0f} ms/slice, "
              f"cpu {t.cpu / args.model_slices * 1000:.0f} ms/slice) = {rate * GFLOP_PER_SLICE:.0f} GFLOP/s, "
              f"{100 * rate * GFLOP_PER_SLICE / mm:.0f} % of torch.mm, {100 * rate * GFLOP_PER_SLICE / one_dnn:.0f} % of oneDNN; "
              f"time {mm / (rate * GFLOP_PER_SLICE):.2f}x the torch.mm limit")
    if args.batch_sweep:
        sweep = []
        for size in (int(b) for b in args.batch_sweep.split(",")):
            t = model_only(parts_fast[0], slices, size, args.repeats)
            sweep.append(f"{size}: {t.wall / args.model_slices * 1000:.0f}")
        print(f"   fast network, ms/slice by slices per call: {', '.join(sweep)}")
    print(f"   load average {os.getloadavg()[0]:.2f}")

    print("\n3. 64-slice 512x512 volume, fast defaults:")
    with tempfile.TemporaryDirectory() as out:
        t, run = timed(lambda: run_pipeline(volume, parts_fast, Path(out)), args.repeats)
        model = model_only(parts_fast[0], run.item["image"], batch, args.repeats)
    print(f"   end to end {t} -> {run.slices / t.wall:.2f} slices/s; stages pre {run.preprocess:.1f} / "
          f"infer+post {run.infer_post:.1f} / save {run.save:.1f} s")
    print(f"   network alone on the {run.inferred} inferred slices {model}; end-to-end / model-only "
          f"{t.wall / model.wall:.2f}; outside the model {1 - model.wall / t.wall:.0%}")
    print(f"   load average {os.getloadavg()[0]:.2f}")

    if args.volumes:
        with tempfile.TemporaryDirectory() as tmp:
            src = Path(tmp) / "in"
            src.mkdir()
            for i in range(args.volumes):
                os.symlink(volume, src / f"case{i}.nii.gz")
            for prefetch in (False, True):
                opts = SegmentOptions(output_dir=Path(tmp) / f"out{prefetch}", weights=str(weights), device="cpu",
                                      batch_size=args.batch_size, prefetch=prefetch, progress=False)
                start = time.perf_counter()
                segment_volumes([str(src / "*.nii.gz")], opts)
                wall = time.perf_counter() - start
                print(f"   segment {args.volumes} volumes, prefetch {'on ' if prefetch else 'off'}: {wall:.1f} s "
                      f"({wall / args.volumes:.1f} s per volume, network setup included), load {os.getloadavg()[0]:.2f}")

    counts = [int(c) for c in args.memory_slices.split(",") if c.strip()]
    if counts:
        print("\n4. peak resident memory, fast defaults (fresh process each; budget 4 GB):")
        for count in counts:
            peak = peak_memory_gb(bench_volume(count, args.work_dir), weights, threads=args.threads)
            print(f"   512x512x{count}: {peak['peak_gb']:.2f} GB ({peak['inferred']} slices inferred, {peak['seconds']:.0f} s)")
        biggest = bench_volume(max(counts), args.work_dir)
        peak = peak_memory_gb(biggest, weights, threads=args.threads, slice_crop=False)
        print(f"   512x512x{max(counts)}, every slice inferred (--no-slice-crop): {peak['peak_gb']:.2f} GB "
              f"({peak['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
