"""How close the network and the pipeline come to what this machine can do.

    python benchmarks/model_limit.py [--threads N] [--repeats 3] [--batch-size N]
                                     [--volumes 3] [--memory-slices 64,300,600]

Printed:

1. the machine's measured matrix-multiply rate (GFLOP/s): ``torch.mm`` of 2048x2048 matrices
   (MKL) and the same GEMM as a 1x1 convolution through oneDNN (the library of the network's
   convolutions), with the same thread count; the limit is the faster of the two (and the same
   in bf16 when the CPU has native bf16);
2. the network alone (ms and slices/s, batch ``--batch-size``, default the library's) with the
   optimisations added one by one (plain eval, channels-last, BatchNorm folded = what the CLI
   and the bundle load while no compiled package is built, TorchScript freezing, the compiled
   package = what they load once it is built, with its build and load seconds and break-even
   slice count, bf16 autocast), as GFLOP/s (27.7 GFLOP per 352x352 slice) and as time over the
   limit; then ms/slice by slices per call and by threads;
3. a 64-slice 512x512 volume end to end (file read to mask written) against the network alone
   on all its slices and on the slices it infers, with the eager and with the packaged network;
   then ``--volumes`` volumes through ``infnet-monai segment``'s library function with and
   without prefetching the next volume;
4. peak resident memory of the fast pipeline for 512x512 volumes of ``--memory-slices`` slices,
   each in a fresh process, plus the 600-slice volume with every slice inferred and with the
   packaged network.

The compiled package is built into a fresh cache folder under ``--work-dir`` by every run, so
its build time is measured.

Medians of ``--repeats`` runs; the load average is printed with the figures.
"""

from __future__ import annotations

import argparse
import copy
import os
import tempfile
import time
from pathlib import Path

import torch

from common import (
    DEFAULT_WORK_DIR,
    package_seconds,
    cpu_bf16_supported,
    interleaved,
    model_runner,
    GFLOP_PER_SLICE,
    bench_volume,
    machine_line,
    peak_memory_gb,
    pipeline_parts,
    random_weights,
    run_pipeline,
    set_threads,
    timed,
    use_fresh_package_cache,
)

from infnet_monai.segment_run import SegmentOptions, segment_volumes  # noqa: E402


def matmul_gflops(n: int = 2048, repeats: int = 5, dtype: torch.dtype = torch.float32) -> tuple[float, float]:
    """GFLOP/s of ``torch.mm`` (n x n, MKL) and of the same GEMM as a 1x1 convolution (oneDNN,
    the library of the network's convolutions), in ``dtype``."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    flops = 2 * n**3 / 1e9
    mm = timed(lambda: torch.mm(a, b), repeats, warmup=1)[0]
    # the same GEMM as a 1x1 convolution: n pixels (64 x n/64) x n channels -> n channels
    x = torch.randn(1, n, 64, n // 64, dtype=dtype).contiguous(memory_format=torch.channels_last)
    conv = torch.nn.Conv2d(n, n, 1, bias=False).eval().to(dtype=dtype, memory_format=torch.channels_last)
    with torch.inference_mode():
        one_dnn = timed(lambda: conv(x), repeats, warmup=1)[0]
    return flops / mm.wall, flops / one_dnn.wall


def network_variants(
    weights: Path, bf16: bool, batch: int
) -> tuple[dict[str, tuple[torch.nn.Module, torch.dtype | None]], tuple[float, float]]:
    """The optimisations one by one: label -> (network, autocast dtype or None), and the (build,
    load) seconds of the compiled package (for slice batches of ``batch``)."""
    from infnet_monai.runtime import load_network
    from infnet_monai.runtime.optimize import optimize_for_inference

    plain = load_network(weights, "cpu", optimize=False)
    package_s = package_seconds(weights, batch)
    variants = {
        "plain eval fp32": (plain, None),
        "channels-last": (copy.deepcopy(plain).to(memory_format=torch.channels_last), None),
        "+ BatchNorm folded (default fp32)": (optimize_for_inference(plain, "cpu"), None),
        "+ TorchScript trace, frozen": (optimize_for_inference(plain, "cpu", script=True), None),
        "+ compiled package (once built)": (load_network(weights, "cpu", compile=None, batch_size=batch), None),
    }
    if bf16:
        variants["default + bf16 autocast (opt-in)"] = (variants["+ BatchNorm folded (default fp32)"][0], torch.bfloat16)
    return variants, package_s


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
    use_fresh_package_cache(args.work_dir)
    weights = random_weights(args.work_dir)
    volume = bench_volume(64, args.work_dir)
    print(f"machine: {machine_line()}")
    print(f"date: {time.strftime('%Y-%m-%d %H:%M')}; {args.repeats} repeats; {threads} threads")

    mm, one_dnn = matmul_gflops(repeats=max(args.repeats, 3))
    limit = max(mm, one_dnn)
    bf16 = cpu_bf16_supported()
    print(f"\n1. fp32 matmul 2048^3: torch.mm (MKL) {mm:.0f} GFLOP/s; as a 1x1 convolution (oneDNN) {one_dnn:.0f} "
          f"GFLOP/s -> limit {limit:.0f} GFLOP/s = {GFLOP_PER_SLICE / limit * 1000:.0f} ms per 352x352 slice "
          f"({limit / GFLOP_PER_SLICE:.2f} slices/s)")
    if bf16:
        mm16, one_dnn16 = matmul_gflops(repeats=max(args.repeats, 3), dtype=torch.bfloat16)
        limit16 = max(mm16, one_dnn16)
        print(f"   bf16 (native on this CPU): torch.mm {mm16:.0f}, oneDNN {one_dnn16:.0f} GFLOP/s -> bf16 limit "
              f"{GFLOP_PER_SLICE / limit16 * 1000:.0f} ms per slice")

    parts_fast = pipeline_parts(weights, fast=True, batch_size=args.batch_size)
    batch = parts_fast[3].sw_batch_size
    slices = torch.rand(1, 352, 352, args.model_slices)
    variants, (build_s, load_s) = network_variants(weights, bf16, batch)
    times = interleaved({k: model_runner(net, slices, batch, dtype) for k, (net, dtype) in variants.items()}, args.repeats)
    print(f"\n2. network alone, {args.model_slices} slices of 352x352, batch {batch} (variants run in turn, "
          f"median of {args.repeats}):")
    print(f"   {'':36s} {'ms/slice':>8s} {'slices/s':>8s} {'GFLOP/s':>8s} {'x limit':>8s}  {'cpu ms/slice':>12s}")
    for label, t in times.items():
        per_slice = t.wall / args.model_slices
        lim = limit if variants[label][1] is None else limit16
        print(f"   {label:36s} {per_slice * 1000:8.0f} {1 / per_slice:8.2f} {GFLOP_PER_SLICE / per_slice:8.0f} "
              f"{per_slice * lim / GFLOP_PER_SLICE:8.2f}  {t.cpu / args.model_slices * 1000:12.0f}")
    print("   (x limit: time over the matmul limit of the same precision)")
    eager_ms = times["+ BatchNorm folded (default fp32)"].wall / args.model_slices * 1000
    saved = eager_ms - times["+ compiled package (once built)"].wall / args.model_slices * 1000
    print(f"   compiled package: built once per machine in {build_s:.0f} s, then loaded in {load_s:.2f} s per process "
          f"(the eager network's weights load is part of both); {saved:.0f} ms saved per slice ("
          f"{eager_ms / (eager_ms - saved):.2f}x)" + (f" -> the build pays off after {build_s / saved * 1000:.0f} slices"
                                                      if saved > 0 else ""))
    if args.batch_sweep:
        sizes = [int(b) for b in args.batch_sweep.split(",")]
        sweep = interleaved({b: model_runner(parts_fast[0], slices, b) for b in sizes}, args.repeats)
        print(f"   default fp32 network, ms/slice by slices per call: "
              f"{', '.join(f'{b}: {t.wall / args.model_slices * 1000:.0f}' for b, t in sweep.items())}")
    if threads > 1:
        counts = sorted({1, max(1, threads // 2), threads})

        def with_threads(n: int):
            run = model_runner(parts_fast[0], slices, batch)

            def go() -> None:
                torch.set_num_threads(n)
                try:
                    run()
                finally:
                    torch.set_num_threads(threads)

            return go

        by_threads = interleaved({n: with_threads(n) for n in counts}, args.repeats)
        print(f"   default fp32 network, ms/slice by torch threads: "
              f"{', '.join(f'{n}: {t.wall / args.model_slices * 1000:.0f}' for n, t in by_threads.items())}")
    print(f"   load average {os.getloadavg()[0]:.2f}")

    print("\n3. 64-slice 512x512 volume, fast defaults, eager network and compiled package (end to end and the "
          "network alone, all run in turn):")
    parts_packaged = pipeline_parts(weights, fast=True, batch_size=args.batch_size, compile=True)
    with tempfile.TemporaryDirectory() as out:
        last, fns = {}, {}
        for name, parts in (("eager", parts_fast), ("package", parts_packaged)):
            def end_to_end(name=name, parts=parts) -> None:
                last[name] = run_pipeline(volume, parts, Path(out))

            end_to_end()
            run = last[name]
            fns[("e2e", name)] = end_to_end
            fns[("all", name)] = model_runner(parts[0], torch.rand(1, 352, 352, run.slices), batch)
            fns[("inferred", name)] = model_runner(parts[0], run.item["image"], batch)
        t = interleaved(fns, args.repeats)
    for name in ("eager", "package"):
        run, e2e, every, inferred = last[name], t[("e2e", name)], t[("all", name)], t[("inferred", name)]
        print(f"   {name}: end to end {e2e} -> {run.slices / e2e.wall:.2f} slices/s; stages of the last run: pre "
              f"{run.preprocess:.2f} / infer+post {run.infer_post:.2f} / save {run.save:.2f} s; {run.inferred} of "
              f"{run.slices} slices inferred (the others hold no lung)")
        print(f"   {name}: network alone on all {run.slices} slices {every}: end-to-end / model-only "
              f"{e2e.wall / every.wall:.2f}")
        print(f"   {name}: network alone on the {run.inferred} inferred slices {inferred}: end-to-end / model-only "
              f"{e2e.wall / inferred.wall:.2f}; time outside the network {e2e.wall - inferred.wall:.2f} s "
              f"({1 - inferred.wall / e2e.wall:.0%})")
    differ = int((last["package"].mask != last["eager"].mask).sum())
    print(f"   packaged vs eager masks: {differ} of {last['eager'].mask.size} voxels differ")
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
        peak = peak_memory_gb(biggest, weights, threads=args.threads, compile=True)
        print(f"   512x512x{max(counts)}, compiled package: {peak['peak_gb']:.2f} GB ({peak['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
