"""Does another Inductor setting make a faster compiled package? The shipped network's bf16
package built with the library's settings (frozen weights) against the same with
``max_autotune`` (Inductor benchmarks its kernel choices at build time), on the same slices, run
in turn, as ms per slice and as a multiple of the machine's bf16 limit measured in the same run.

    python benchmarks/package_settings.py [--repeats 5] [--slices 16] [--precision bf16]

Builds go to a fresh temporary folder (build seconds printed); nothing is cached.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from common import GFLOP_PER_SLICE, interleaved, machine_line, model_runner, set_threads
from model_limit import matmul_gflops

SETTINGS = {
    "library (freezing)": {"freezing": True},
    "freezing + max_autotune": {"freezing": True, "max_autotune": True},
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--slices", type=int, default=16, help="slices per timed run (default 16)")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="bf16")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    threads = set_threads(args.threads)

    from infnet_monai.runtime import default_batch_size, load_network
    from infnet_monai.runtime.packaged import PackagedNetwork, _load_runner, build_package
    from infnet_monai.shipped import network_size

    size, batch = network_size(), default_batch_size("cpu")
    print(f"machine: {machine_line()}")
    print(f"date: {time.strftime('%Y-%m-%d %H:%M')}; {args.repeats} repeats; {threads} threads; "
          f"{args.precision}; batch {batch}; {size}x{size}")
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    mm, one_dnn = matmul_gflops(repeats=5, dtype=dtype)
    limit_ms = GFLOP_PER_SLICE / max(mm, one_dnn) * 1000 * (size / 352) ** 2
    print(f"{args.precision} limit: {max(mm, one_dnn):.0f} GFLOP/s -> {limit_ms:.1f} ms per slice")

    eager = load_network(None, "cpu", compile=False, batch_size=batch)
    networks, builds = {}, {}
    with tempfile.TemporaryDirectory() as folder:
        for name, configs in SETTINGS.items():
            path = Path(folder) / f"{len(networks)}.pt2"
            start = time.perf_counter()
            build_package(eager, batch, size, path, precision=args.precision, inductor_configs=configs)
            builds[name] = time.perf_counter() - start
            networks[name] = PackagedNetwork(_load_runner(path), batch, size, lambda: eager, precision=args.precision)
            print(f"built {name}: {builds[name]:.0f} s", flush=True)
        image = torch.rand(1, size, size, args.slices)
        autocast = dtype if args.precision == "bf16" else None
        timings = interleaved({k: model_runner(n, image, batch, autocast) for k, n in networks.items()}, args.repeats)
        reference = networks["library (freezing)"]
        x = torch.rand(batch, 3, size, size)
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast is not None):
            ref_out = reference(x)
            diffs = {k: float((n(x) - ref_out).abs().max()) for k, n in networks.items()}
    base = timings["library (freezing)"].wall
    print(f"\n{'setting':28s} {'build s':>8s} {'ms/slice':>9s} {'spread':>15s} {'x limit':>8s} {'x library':>9s} "
          f"{'max |diff|':>10s}")
    for name, t in timings.items():
        per = [w / args.slices * 1000 for w in t.walls]
        print(f"{name:28s} {builds[name]:8.0f} {t.wall / args.slices * 1000:9.1f} "
              f"{min(per):6.1f}-{max(per):<7.1f} {t.wall / args.slices * 1000 / limit_ms:8.2f} {t.wall / base:9.2f} "
              f"{diffs[name]:10.2e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
