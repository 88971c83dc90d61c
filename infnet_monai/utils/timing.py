"""Seconds since this process started (Linux ``/proc``), for start-up measurements."""

from __future__ import annotations

import os
import time

__all__ = ["process_seconds"]


def process_seconds() -> float | None:
    """Wall seconds since the operating system started this process (10 ms resolution: clock
    ticks of ``/proc/self/stat``); None where ``/proc`` is not available."""
    try:
        with open("/proc/self/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        with open("/proc/stat") as f:
            boot = next(float(line.split()[1]) for line in f if line.startswith("btime"))
    except (OSError, StopIteration, IndexError, ValueError):
        return None
    started = boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22 of stat: start time in ticks
    return time.time() - started


class RunTimings:
    """Where a segmentation run's time goes, written as JSON (``infnet-monai segment --timings``):
    seconds from process start to the first slice batch entering the network and to the end, and
    per volume reading + preprocessing, network, postprocessing and writing."""

    def __init__(self) -> None:
        self.first_slice: float | None = None
        self.volumes: list[dict] = []

    def watch(self, network) -> None:
        """Note when ``network`` (a ``torch.nn.Module``) is first called."""

        def first_call(module, args):
            if self.first_slice is None:
                self.first_slice = process_seconds()

        network.register_forward_pre_hook(first_call)

    def volume(self, path, read: float, result, write: float) -> None:
        self.volumes.append({
            "input": str(path), "slices": result.input_slices, "inferred_slices": result.slices, "read_s": read,
            "network_s": result.network_seconds, "post_s": result.seconds - result.network_seconds, "write_s": write,
        })

    def write(self, path) -> None:
        import json

        from infnet_monai.utils.atomic import atomic_output

        summary = {"process_to_first_slice_s": self.first_slice, "process_to_end_s": process_seconds(),
                   "volumes": self.volumes}
        with atomic_output(path) as tmp:
            tmp.write_text(json.dumps(summary, indent=2) + "\n")
