"""Seconds of the lung mask on a 512x512 chest CT against the 3 s target for 300 slices.

    python benchmarks/lung_mask.py [--slices 300] [--repeats 5] [--threads N]

Printed, on the shared real series resampled along z to ``--slices`` slices (a phantom where
``../shared`` is absent): the lung mask with the diseased-lung fills and the thoracic cavity (the
default), and the aerated-lung mask alone (``fill_pathology=False``), run in turn; medians and
spreads of ``--repeats`` rounds; each as a ratio to the target (3 s for 512x512x300, scaled
linearly with the slice count) and to each other; the volumes the two masks give.
"""

from __future__ import annotations

import argparse

import numpy as np

from common import bench_volume, interleaved, machine_line, set_threads

from infnet_monai.transforms import LoadCT
from infnet_monai.transforms.lung import LEFT_LUNG, RIGHT_LUNG, THORAX, lung_labels
from infnet_monai.utils.geometry import voxel_volume_ml

TARGET_S_PER_300 = 3.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    set_threads(args.threads or None)
    image = LoadCT(ensure_channel_first=False)(str(bench_volume(args.slices)))
    hu, affine = np.asarray(image, dtype=np.float32), np.asarray(image.affine, dtype=np.float64)
    results = {}

    def run(fill: bool):
        def go():
            results[fill] = lung_labels(hu, affine, fill_pathology=fill)
        return go

    timings = interleaved({"with fills (default)": run(True), "aerated lung only": run(False)}, args.repeats)
    target = TARGET_S_PER_300 * args.slices / 300
    print(machine_line())
    print(f"lung mask of a {hu.shape[0]}x{hu.shape[1]}x{hu.shape[2]} volume, target {target:.2f} s, {args.repeats} rounds")
    for name, timing in timings.items():
        print(f"  {name:<22} {timing}  = {timing.wall / target:.2f} x target")
    ratio = timings["with fills (default)"].wall / timings["aerated lung only"].wall
    print(f"  fills cost {ratio:.2f} x the aerated-lung mask")
    voxel_ml = voxel_volume_ml(affine)
    for fill, labels in results.items():
        ml = [np.count_nonzero(labels == k) * voxel_ml for k in (RIGHT_LUNG, LEFT_LUNG, THORAX)]
        print(f"  {'with fills' if fill else 'aerated only':<13} right {ml[0]:.0f} mL, left {ml[1]:.0f} mL, rest of thorax {ml[2]:.0f} mL")


if __name__ == "__main__":
    main()
