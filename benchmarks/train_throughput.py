"""Inf-Net training throughput (slices/s): fp32 vs bf16, each optimisation side by side, against
the machine's bf16 convolution limit measured in the same run.

One training step = forward (five deep-supervision maps) + DeepSupervisionLoss + backward + Adam
step, on the same random slices and masks of ``--size`` pixels for every variant, run as the
trainer runs it (:class:`infnet_monai.engines.AutocastInferer`: autocast forward, float32 loss).
Rows, each adding one change to the row above:

1. fp32, contiguous memory, the structure loss pooling 31x31 on every map (before this stop);
2. channels-last;
3. the boundary weights pooled once per target with two 1D pools (the default loss): the fp32
   training path (``--precision fp32``, and CPUs without native bf16);
4. bf16 autocast of the forward pass: the CPU training default where bf16 is native;
5. with ``--compile``: ``torch.compile`` of the network (about 3 minutes of compilation on a cold
   cache; ``--train#trainer#compile True`` in the bundle).

Variants alternate step by step so that a machine whose load changes slows all of them alike;
medians of ``--iters`` steps with the spread. The limit: a 3x3 convolution (128 -> 128 channels,
64x64, batch 8, channels-last) in bf16 through oneDNN, forward, as GFLOP/s; the network's training
step counts 3 x 2 x its forward multiply-accumulates (``count_macs``; backward = 2 x forward).

    python benchmarks/train_throughput.py                        # 256 px, batch 8 (the CPU recipe)
    python benchmarks/train_throughput.py --size 352 --compile
    python benchmarks/train_throughput.py --device cuda --batch 24
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import torch
import torch.nn.functional as F

from infnet_monai.engines import AutocastInferer
from infnet_monai.losses import DeepSupervisionLoss, EdgeLoss, StructureLoss
from infnet_monai.networks import InfNet
from infnet_monai.networks.complexity import count_macs


def pooled_per_map_loss(pred, target: torch.Tensor) -> torch.Tensor:
    """The loss as it was before this stop: a 31x31 average pool of the mask for every map."""
    mask, edge = target[:, :1], target[:, 1:2]
    *maps, edge_pred = pred
    structure = StructureLoss()
    loss = EdgeLoss()(edge_pred, edge)
    for seg in maps:
        weights = 1.0 + 5.0 * torch.abs(F.avg_pool2d(mask, 31, stride=1, padding=15) - mask)
        loss = loss + structure(seg, mask, weights)
    return loss


def make_step(
    device: torch.device, channels_last: bool, precision: str, loss_fn: Callable, compiled: bool, size: int, batch: int
) -> Callable[[], None]:
    """One training step (same seed, data and optimiser for every variant)."""
    torch.manual_seed(0)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    net = InfNet().to(device=device, memory_format=memory_format).train()
    model = torch.compile(net) if compiled else net
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-4)
    inferer = AutocastInferer(precision, channels_last=channels_last)
    image = torch.randn(batch, 3, size, size, device=device)
    target = (torch.rand(batch, 2, size, size, device=device) > 0.7).float()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(inferer(image, model), target)
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()

    return step


def measure(steps: list[Callable[[], None]], iters: int, warmup: int) -> list[list[float]]:
    """Seconds per step of each variant, variants alternating step by step."""
    for step in steps:
        for _ in range(warmup):
            step()
    times: list[list[float]] = [[] for _ in steps]
    for _ in range(iters):
        for step, record in zip(steps, times):
            start = time.perf_counter()
            step()
            record.append(time.perf_counter() - start)
    return times


def conv_limit_gflops(device: torch.device, dtype: torch.dtype, repeats: int = 10) -> float:
    """GFLOP/s of a 3x3 convolution 128 -> 128 channels on 8 x 64 x 64, channels-last (forward)."""
    conv = torch.nn.Conv2d(128, 128, 3, padding=1, bias=False).to(device=device, dtype=dtype, memory_format=torch.channels_last)
    x = torch.randn(8, 128, 64, 64, device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)
    flops = 2 * 8 * 64 * 64 * 128 * 128 * 9 / 1e9
    seconds = []
    with torch.no_grad():
        for i in range(repeats + 2):
            start = time.perf_counter()
            conv(x)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i >= 2:
                seconds.append(time.perf_counter() - start)
    return flops / statistics.median(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256, help="slice size in pixels (multiple of 32)")
    parser.add_argument("--batch", type=int, default=8, help="slices per step")
    parser.add_argument("--iters", type=int, default=5, help="timed steps per variant (median reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per variant")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch default)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--compile", action="store_true", help="add a torch.compile row (slow to compile)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = True
    low = "bf16" if device.type == "cpu" else "fp16"
    low_dtype = torch.bfloat16 if low == "bf16" else torch.float16
    default_loss = DeepSupervisionLoss()
    variants = [
        ("fp32, contiguous, 31x31 pool per map", False, "fp32", pooled_per_map_loss, False),
        ("+ channels-last", True, "fp32", pooled_per_map_loss, False),
        ("+ separable pool once (fp32 default)", True, "fp32", default_loss, False),
        (f"+ {low} autocast (default)", True, low, default_loss, False),
    ]
    if args.compile:
        variants.append(("+ torch.compile", True, low, default_loss, True))
    steps = [make_step(device, cl, prec, loss, comp, args.size, args.batch) for _, cl, prec, loss, comp in variants]
    times = measure(steps, args.iters, args.warmup)

    macs = count_macs(InfNet(), (1, 3, args.size, args.size))
    train_gflop = 3 * 2 * macs / 1e9
    limit = conv_limit_gflops(device, low_dtype)
    limit_fp32 = conv_limit_gflops(device, torch.float32)
    label = torch.cuda.get_device_name() if device.type == "cuda" else f"{torch.get_num_threads()} CPU threads"
    print(f"Inf-Net training, {args.size}x{args.size}, batch {args.batch}, {args.iters} steps per row ({label})")
    print(f"training step: {train_gflop:.1f} GFLOP per slice (3 x 2 x {macs / 1e9:.2f} G MAC forward)")
    print(f"3x3 convolution limit: {low} {limit:.0f} GFLOP/s = {limit / train_gflop:.1f} slices/s; "
          f"fp32 {limit_fp32:.0f} GFLOP/s = {limit_fp32 / train_gflop:.1f} slices/s")
    print(f"{'variant':<40}{'slices/s':>9}{'spread':>14}{'x row 1':>9}{'% of limit':>12}")
    base = args.batch / statistics.median(times[0])
    for (name, *_), record in zip(variants, times):
        rates = sorted(args.batch / t for t in record)
        rate = statistics.median(rates)
        spread = f"{rates[0]:.2f}-{rates[-1]:.2f}"
        print(f"{name:<40}{rate:>9.2f}{spread:>14}{rate / base:>9.2f}{100 * rate * train_gflop / limit:>11.0f}%")


if __name__ == "__main__":
    main()
