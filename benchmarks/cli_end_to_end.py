"""The shipped model on this CPU: the network against the machine's bf16 limit, and the CLI end to
end in fresh processes on the shared 64-slice series, with where its time goes.

    python benchmarks/cli_end_to_end.py [--repeats 3] [--series DIR] [--cohort 5] [--sections 1,2,3,4]

Printed, in one run:

1. the machine's bf16 limit: GFLOP/s of a 2048^3 GEMM as a 1x1 convolution through oneDNN (the
   library and path of the network's convolutions), and the ms per slice it gives Inf-Net at the
   shipped model's size (2 x its MACs per slice);
2. the network alone (shipped weights, 2 slices per call, the CLI's default on the CPU): eager
   fp32, eager bf16 autocast (the default without a package), the compiled package in fp32 and
   in bf16 (built into a fresh cache folder here; build seconds printed), each as ms/slice and as
   a multiple of the limit;
3. ``infnet-monai segment SERIES`` in fresh processes, default flags: "first run" with a fresh
   package cache (no package: the eager bf16 network), then after ``infnet-monai prepare``
   (the bf16 package) "later runs"; wall seconds, time from process start to the first slice
   batch entering the network, reading + preprocessing, network, postprocessing, writing, and
   the wall time over the network's time on the slices it infers; alternated with the later runs,
   the floor of any MONAI-based command: a fresh process that only imports torch and MONAI;
4. a cohort in one fresh process (``--cohort`` copies of the series as NIfTI, the package
   built): wall over network for the whole run, and per volume after the first (the process
   start paid once): read + preprocess, network, postprocess, write, and their sum over the
   network.

Medians of ``--repeats`` (rows alternate within each round); the load average is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from common import bench_volume, interleaved, machine_line, model_runner, set_threads
from model_limit import matmul_gflops

REPO = Path(__file__).resolve().parents[1]
SHARED_SERIES = REPO.parent / "shared" / "data" / "ct-dicom" / "lung-pet-ct-dx-A0001-chest-5mm-lung"


def network_rows(size: int, batch: int, repeats: int, cache: Path) -> tuple[dict, float]:
    """ms/slice of the shipped network in each form, and the bf16 package's build seconds."""
    from infnet_monai.runtime import load_network

    os.environ["INFNET_MONAI_CACHE"] = str(cache)
    image = torch.rand(1, size, size, 8)
    start = time.perf_counter()
    bf16_package = load_network(None, "cpu", compile=True, batch_size=batch, precision="bf16")
    build = time.perf_counter() - start
    forms = {
        "eager fp32": (load_network(None, "cpu", compile=False, batch_size=batch), None),
        "eager bf16 autocast": (load_network(None, "cpu", compile=False, batch_size=batch), torch.bfloat16),
        "package fp32": (load_network(None, "cpu", compile=True, batch_size=batch, precision="fp32"), None),
        "package bf16 (default once built)": (bf16_package, torch.bfloat16),
    }
    runs = {name: model_runner(net, image, batch, dtype) for name, (net, dtype) in forms.items()}
    timings = interleaved(runs, repeats)
    return {name: t.wall / image.shape[-1] * 1000 for name, t in timings.items()}, build


def import_floor() -> float:
    """Wall seconds of a fresh process that only imports torch and MONAI's transforms: what any
    MONAI-based command pays before its own code runs (it exits without the interpreter's teardown, as
    the CLI does)."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import os, torch, monai.transforms; os._exit(0)"], check=True, capture_output=True)
    return time.perf_counter() - start


def _volume_row(volume: dict) -> dict:
    return {"read": volume["read_s"], "network": volume["network_s"], "post": volume["post_s"],
            "write": volume["write_s"], "inferred": volume["inferred_slices"]}


def cli_run(inputs: Path, out: Path, cache: Path, every_volume: bool = False) -> dict:
    """One ``infnet-monai segment INPUTS`` in a fresh process: wall seconds and its ``--timings``
    (the first volume's, or with ``every_volume`` each volume's under ``"volumes"``)."""
    timings = out / "timings.json"
    env = {**os.environ, "INFNET_MONAI_CACHE": str(cache)}
    command = [sys.executable, "-m", "infnet_monai.cli", "segment", str(inputs), "-o", str(out), "-q", "--overwrite",
               "--timings", str(timings)]
    start = time.perf_counter()
    subprocess.run(command, env=env, check=True, capture_output=True)
    wall = time.perf_counter() - start
    data = json.loads(timings.read_text())
    run = {"wall": wall, "first_slice": data["process_to_first_slice_s"]}
    if every_volume:
        return {**run, "volumes": [_volume_row(v) for v in data["volumes"]]}
    return {**run, **_volume_row(data["volumes"][0])}


def cohort_rows(series_nifti: Path, count: int, work: Path, cache: Path, repeats: int) -> None:
    """Section 4: ``count`` copies of ``series_nifti`` segmented by one fresh process, ``repeats`` times."""
    folder = work / "cohort"
    folder.mkdir()
    for i in range(count):
        shutil.copy(series_nifti, folder / f"case{i}.nii.gz")
    print(f"4. a cohort of {count} copies of the series (NIfTI) in one fresh process, package built ({repeats} runs):")
    runs = [cli_run(folder, work / "out_cohort", cache, every_volume=True) for _ in range(repeats)]
    ratios = [r["wall"] / sum(v["network"] for v in r["volumes"]) for r in runs]
    later = [v for r in runs for v in r["volumes"][1:]]
    med = {key: statistics.median(v[key] for v in later) for key in ("read", "network", "post", "write")}
    total = sum(med.values())
    walls = ", ".join(f"{r['wall']:.1f}" for r in runs)
    print(f"   whole run: wall {statistics.median(r['wall'] for r in runs):.1f} s (runs {walls}); wall = "
          f"{statistics.median(ratios):.2f} x network (spread {min(ratios):.2f}-{max(ratios):.2f})")
    print(f"   per volume after the first (median of {len(later)}): read+preprocess {med['read']:.2f} s, network "
          f"{med['network']:.2f} s, postprocess {med['post']:.2f} s, write {med['write']:.2f} s; "
          f"sum = {total / med['network']:.2f} x network")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--series", type=Path, default=SHARED_SERIES)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--cohort", type=int, default=5, help="volumes of the cohort run (section 4; 0 skips it)")
    parser.add_argument("--sections", default="1,2,3,4", help="sections to run (the limit is always measured)")
    args = parser.parse_args(argv)
    set_threads(args.threads)
    from infnet_monai.networks import InfNet
    from infnet_monai.networks.complexity import count_macs
    from infnet_monai.shipped import network_size
    from infnet_monai.utils.cpuinfo import native_bf16

    print(machine_line())
    size, batch = network_size(), 2
    gflop = 2 * count_macs(InfNet().eval(), (1, 3, size, size)) / 1e9
    limit_dtype = torch.bfloat16 if native_bf16() else torch.float32
    _, conv_rate = matmul_gflops(dtype=limit_dtype)
    limit_ms = gflop / conv_rate * 1000
    print(f"1. limit: {str(limit_dtype).removeprefix('torch.')} 1x1 convolution (oneDNN) {conv_rate:.0f} GFLOP/s; "
          f"Inf-Net {gflop:.1f} GFLOP per {size}x{size} slice -> {limit_ms:.1f} ms/slice")
    sections = {int(x) for x in args.sections.split(",") if x.strip()}
    with tempfile.TemporaryDirectory(prefix="infnet_bench_") as work:
        work = Path(work)
        if 2 in sections:
            rows, build = network_rows(size, batch, args.repeats, work / "cache_network")
            print(f"2. network alone, {batch} slices per call ({args.repeats} rounds; bf16 package built in {build:.0f} s):")
            for name, ms in rows.items():
                print(f"   {name:36s} {ms:6.1f} ms/slice = {ms / limit_ms:4.2f} x limit")
        if not sections & {3, 4}:
            return 0
        if not args.series.is_dir():
            print(f"3-4. skipped: {args.series} not found")
            return 0
        cache = work / "cache_cli"
        results: dict[str, list[dict]] = {"first run (no package)": [], "later runs (after prepare)": []}
        if 3 in sections:
            for _ in range(args.repeats):
                results["first run (no package)"].append(
                    cli_run(args.series, work / "out_first", work / f"fresh_{time.time_ns()}"))
        subprocess.run([sys.executable, "-m", "infnet_monai.cli", "prepare"], check=True, capture_output=True,
                       env={**os.environ, "INFNET_MONAI_CACHE": str(cache)})
        if 3 in sections:
            print(f"3. infnet-monai segment {args.series.name} in fresh processes, default flags ({args.repeats} runs each):")
            floors = []
            for _ in range(args.repeats):  # alternated with the runs: the same machine state
                results["later runs (after prepare)"].append(cli_run(args.series, work / "out_later", cache))
                floors.append(import_floor())
            medians = {name: {key: statistics.median(r[key] for r in runs) for key in runs[0]}
                       for name, runs in results.items()}
            for name, med in medians.items():
                walls = ", ".join(f"{r['wall']:.2f}" for r in results[name])
                print(f"   {name}: wall {med['wall']:.2f} s (runs {walls}); process start to first slice "
                      f"{med['first_slice']:.2f} s; read+preprocess {med['read']:.2f} s, network {med['network']:.2f} s "
                      f"({med['inferred']:.0f} slices, {med['network'] / med['inferred'] * 1000:.0f} ms/slice), "
                      f"postprocess {med['post']:.2f} s, write {med['write']:.2f} s; wall = "
                      f"{med['wall'] / med['network']:.1f} x network")
            floor, later = statistics.median(floors), medians["later runs (after prepare)"]
            print(f"   floor: a bare process importing torch and MONAI {floor:.2f} s (runs "
                  f"{', '.join(f'{f:.2f}' for f in floors)}); later runs beyond it: first slice "
                  f"{later['first_slice'] - floor:.2f} s after the floor, wall - floor = "
                  f"{(later['wall'] - floor) / later['network']:.1f} x network")
        if 4 in sections and args.cohort > 1:
            cohort_rows(bench_volume(64), args.cohort, work, cache, args.repeats)
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
