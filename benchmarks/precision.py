"""Reduced precision: bf16 and fp16 autocast against fp32, on a trained network's outputs.

    python benchmarks/precision.py --weights MODEL.pt [--slices-dir DIR]... [--volume CT]
                                   [--dtypes bf16,fp16] [--repeats 3] [--batch-size N]

Masks (probability > 0.5) of the fast network in fp32 and under autocast to each of ``--dtypes``
are compared (on the CPU; the rounding is that of a GPU's autocast: 16-bit operands, fp32
accumulation, so the agreement carries over, the speed does not: CPUs without native fp16
emulate it slowly):

- per 2D slice set (``--slices-dir``: a COVID-SemiSeg-style folder with ``Imgs/``), the first
  ``--max-slices`` images through the validation transforms of training (352x352, ImageNet
  normalisation): pooled Dice of the bf16 masks against the fp32 masks, the lowest per-slice
  Dice among slices whose fp32 mask is not empty, and the differing pixels;
- ``--volume`` (NIfTI or DICOM folder; default: the benchmark volume made from the shared
  series): the whole CLI pipeline in each precision, masks on the input grid.

The network-alone time per slice of each precision on this CPU is printed with them. Weights must come
from training or from the authors' checkpoint (``infnet-monai convert-weights``): random
weights put most logits near the threshold, which says nothing about a real model.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from common import (
    DEFAULT_WORK_DIR,
    bench_volume,
    cpu_bf16_supported,
    dice,
    interleaved,
    machine_line,
    model_runner,
    pipeline_parts,
    set_threads,
)

from infnet_monai.data import semiseg_datalist  # noqa: E402
from infnet_monai.inference import infer_volume  # noqa: E402
from infnet_monai.inferers import slice_inferer  # noqa: E402
from infnet_monai.runtime import PRECISIONS
from infnet_monai.transforms.train2d import slice_validation_transforms  # noqa: E402


DTYPES = {name: dtype for name, dtype in PRECISIONS.items() if dtype is not None}


def slice_masks(
    network: torch.nn.Module, folder: Path, batch_size: int, dtype: torch.dtype | None, limit: int
) -> np.ndarray:
    """Boolean masks (N, 352, 352) of the first ``limit`` images (by name) in ``folder/Imgs``."""
    items = semiseg_datalist(folder, require_labels=False, edge_dir=None, prior_dir=None)[:limit]
    transforms = slice_validation_transforms()
    images = torch.stack([torch.as_tensor(transforms({"image": item["image"]})["image"]) for item in items])
    masks = []
    with torch.inference_mode(), torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        for start in range(0, len(images), batch_size):
            masks.append(torch.sigmoid(network(images[start : start + batch_size]).float()) > 0.5)
    return torch.cat(masks)[:, 0].numpy()


def compare(reference: np.ndarray, other: np.ndarray) -> str:
    """Pooled Dice, lowest per-slice Dice (non-empty reference slices) and differing voxels."""
    per_slice = [dice(r, o) for r, o in zip(reference, other) if r.any()]
    worst = f"{min(per_slice):.4f}" if per_slice else "-"
    return (f"Dice {dice(reference, other):.5f} (lowest per slice {worst}); {int((reference != other).sum())} of "
            f"{reference.size} voxels differ; {int(reference.sum())} foreground voxels in fp32")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", required=True, type=Path, help="trained or converted Inf-Net weights")
    parser.add_argument("--slices-dir", type=Path, action="append", default=[], help="folder with Imgs/ (repeatable)")
    parser.add_argument("--max-slices", type=int, default=200, help="images per --slices-dir (default 200)")
    parser.add_argument("--volume", type=Path, default=None, help="CT volume (default: the benchmark volume)")
    parser.add_argument("--dtypes", default="bf16,fp16", help="autocast precisions to compare (bf16, fp16)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs, median reported (default 3)")
    parser.add_argument("--batch-size", type=int, default=None, help="slices per network call (default: library's)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: one per core)")
    parser.add_argument("--work-dir", type=Path, default=DEFAULT_WORK_DIR, help="cache of the benchmark volume")
    args = parser.parse_args(argv)

    set_threads(args.threads)
    print(f"machine: {machine_line()}; native bf16: {cpu_bf16_supported()}")
    dtypes = {name: DTYPES[name] for name in args.dtypes.split(",") if name}
    network, pre, post, inferer = pipeline_parts(args.weights, fast=True, batch_size=args.batch_size)
    batch = inferer.sw_batch_size
    for folder in args.slices_dir:
        fp32 = slice_masks(network, folder, batch, None, args.max_slices)
        for name, dtype in dtypes.items():
            other = slice_masks(network, folder, batch, dtype, args.max_slices)
            print(f"{folder} ({len(fp32)} slices): {name} vs fp32 {compare(fp32, other)}")

    volume = args.volume or bench_volume(64, args.work_dir)
    item = pre({"image": str(volume)})
    fp32 = infer_volume(item, network, slice_inferer(batch, "cpu", precision="fp32"), post).item["pred"][0].numpy() > 0
    for name in dtypes:
        other = infer_volume(item, network, slice_inferer(batch, "cpu", precision=name), post).item["pred"][0].numpy() > 0
        print(f"{volume.name} through the pipeline: {name} vs fp32 "
              f"{compare(np.moveaxis(fp32, -1, 0), np.moveaxis(other, -1, 0))}")

    slices = torch.rand(1, 352, 352, 8)
    runs = {"fp32": model_runner(network, slices, batch)}
    runs.update({name: model_runner(network, slices, batch, dtype) for name, dtype in dtypes.items()})
    t = interleaved(runs, args.repeats)
    print(f"network alone on this CPU, batch {batch}: "
          + ", ".join(f"{name} {tt.wall / 8 * 1000:.0f} ms/slice" for name, tt in t.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
