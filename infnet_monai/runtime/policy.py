"""Runtime policy: which device, slice batch, precision and compiled form a run uses by default.

``default_device`` (the first GPU, else the CPU), ``default_batch_size`` (slices per network call),
``default_precision`` (bf16 autocast on CPUs with native bf16, fp32 elsewhere) and
``compile_choice`` (whether to use or build the compiled CPU package) are read by
:func:`infnet_monai.runtime.load_network`, the slice inferer, the :class:`~infnet_monai.segmenter.Segmenter`
and the bundle's ``inference.json``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from infnet_monai.data.inputs import estimated_slices, expand_inputs
from infnet_monai.defaults import COMPILE_MIN_SLICES, CPU_BATCH_SIZE, GPU_BATCH_SIZE
from infnet_monai.runtime.packaged import PACKAGE_PRECISIONS
from infnet_monai.utils.cpuinfo import native_bf16

__all__ = [
    "default_device",
    "default_batch_size",
    "PRECISIONS",
    "default_precision",
    "COMPILE_MIN_SLICES",
    "compile_pays_off",
    "compile_choice",
]


def default_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` if given, else the first CUDA GPU when present, else the CPU."""
    if device is not None and str(device) != "auto":
        return torch.device(device)
    return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")


def compile_pays_off(
    inputs: str | Path | Sequence[str | Path] | Sequence[dict], device: str | torch.device | None = None
) -> bool:
    """Whether a run over ``inputs`` (paths, globs, folders, or a ``[{"image": path}]`` datalist)
    is long enough to pay back building the compiled package: on the CPU, at least
    :data:`COMPILE_MIN_SLICES` axial slices in all (counted from the headers, no voxels read).
    Packages are CPU-only, so never on a GPU."""
    if default_device(device).type != "cpu":
        return False
    items = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
    paths = [i["image"] if isinstance(i, dict) else i for i in items]
    try:
        volumes = expand_inputs([str(p) for p in paths])
    except Exception:  # noqa: BLE001 - bad inputs are reported when they are read
        return False
    total = 0
    for path in volumes:
        total += estimated_slices(path)
        if total >= COMPILE_MIN_SLICES:
            return True
    return False


def compile_choice(
    inputs: str | Path | Sequence[str | Path] | Sequence[dict],
    device: str | torch.device | None = None,
    precision: str | None = None,
    requested: bool | None = None,
) -> bool | None:
    """``compile`` for :func:`~infnet_monai.runtime.loading.load_network`: ``requested`` when
    given (CLI ``--compile on|off``); without it True (build the compiled package if missing) when the run pays back a build
    (:func:`compile_pays_off`), else None (use a package built before, if any). Packages run
    fp32 or bf16: fp16 gives False, and refuses ``requested=True`` (ValueError)."""
    if (precision or "fp32") not in PACKAGE_PRECISIONS:
        if requested:
            raise ValueError(f"--compile on runs fp32 or bf16; leave out --precision {precision} or use --compile off")
        return False
    if requested is not None:
        return requested
    return True if compile_pays_off(inputs, device) else None


def default_batch_size(device: str | torch.device | None = None) -> int:
    """Slices per network call: :data:`~infnet_monai.defaults.GPU_BATCH_SIZE` (32) on a GPU,
    :data:`~infnet_monai.defaults.CPU_BATCH_SIZE` (2) on the CPU."""
    return GPU_BATCH_SIZE if default_device(device).type == "cuda" else CPU_BATCH_SIZE


# autocast dtype of each precision (None: full fp32)
PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}


def default_precision(device: str | torch.device | None = None) -> str:
    """``"bf16"`` on a CPU with native bf16 (AMX or AVX512-BF16 in its flags: oneDNN runs bf16
    convolutions at several times the fp32 rate), ``"fp32"`` elsewhere (GPUs included).

    With the shipped model, bf16 masks agree with fp32 ones to Dice 0.9967 on the example CT and
    0.9973 on the shared DICOM series, involvement within 0.001 percentage points (tested in
    ``tests/test_shipped_model.py``); ``--precision fp32`` keeps the exact path. Compiled
    packages are built for either (:func:`~infnet_monai.runtime.loading.load_network`).
    """
    return "bf16" if default_device(device).type == "cpu" and native_bf16() else "fp32"
