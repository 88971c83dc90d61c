"""Inf-Net training throughput (slices/s): contiguous vs channels-last, and AMP on CUDA.

One training step = forward (five deep-supervision maps) + DeepSupervisionLoss + backward +
Adam step, on random slices and masks of ``--size`` pixels (the authors train at 352).
Every variant runs in this one process on the same data, step by step in turn; the table prints
the median slices/s side by side with the ratio to the first row of the same device.

    python benchmarks/train_throughput.py --size 352 --batch 4 --iters 5
    python benchmarks/train_throughput.py --device cuda --batch 24   # adds AMP rows
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import torch

from infnet_monai.losses import DeepSupervisionLoss
from infnet_monai.networks import InfNet


def make_step(device: torch.device, channels_last: bool, amp: bool, size: int, batch: int) -> Callable[[], None]:
    """One Inf-Net training step (same seed, data and optimiser for every variant)."""
    torch.manual_seed(0)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    net = InfNet().to(device=device, memory_format=memory_format).train()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler("cuda") if amp else None
    loss_fn = DeepSupervisionLoss()
    image = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=memory_format)
    target = (torch.rand(batch, 2, size, size, device=device) > 0.7).float()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
            loss = loss_fn(net(image), target)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()

    return step


def measure(steps: list[Callable[[], None]], iters: int, warmup: int) -> list[float]:
    """Median seconds per step of each variant; variants alternate step by step so that a
    machine whose load changes during the run slows all of them alike."""
    for step in steps:
        for _ in range(warmup):
            step()
    times: list[list[float]] = [[] for _ in steps]
    for _ in range(iters):
        for step, record in zip(steps, times):
            start = time.perf_counter()
            step()
            record.append(time.perf_counter() - start)
    return [statistics.median(record) for record in times]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=352, help="slice size in pixels (multiple of 32)")
    parser.add_argument("--batch", type=int, default=4, help="slices per step")
    parser.add_argument("--iters", type=int, default=5, help="timed steps per variant (median reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per variant")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch default)")
    parser.add_argument("--device", choices=["cpu", "cuda", "all"], default="all", help="'all': CPU, and CUDA if present")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.backends.cudnn.benchmark = True

    devices = ["cpu"] if args.device in ("cpu", "all") else []
    if args.device in ("cuda", "all") and torch.cuda.is_available():
        devices.append("cuda")
    elif args.device == "cuda":
        parser.error("CUDA is not available")
    rows = []
    for name in devices:
        device = torch.device(name)
        variants = [(False, False), (True, False)] + ([(False, True), (True, True)] if name == "cuda" else [])
        steps = [make_step(device, cl, amp, args.size, args.batch) for cl, amp in variants]
        seconds = measure(steps, args.iters, args.warmup)
        for (channels_last, amp), sec in zip(variants, seconds):
            rate = args.batch / sec
            fmt = "channels_last" if channels_last else "contiguous"
            rows.append((name, fmt, "fp16 AMP" if amp else "fp32", rate, seconds[0] / sec))

    label = torch.cuda.get_device_name() if "cuda" in devices else f"{torch.get_num_threads()} CPU threads"
    print(f"Inf-Net training throughput, {args.size}x{args.size}, batch {args.batch}, {args.iters} steps ({label})")
    print(f"{'device':<7}{'memory format':<15}{'precision':<10}{'slices/s':>10}{'ratio':>8}")
    for name, fmt, precision, rate, ratio in rows:
        print(f"{name:<7}{fmt:<15}{precision:<10}{rate:>10.2f}{ratio:>8.2f}")


if __name__ == "__main__":
    main()
