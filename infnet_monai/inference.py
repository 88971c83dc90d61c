"""Volume inference: the trained Inf-Net slice by slice over a CT volume.

Shared by the CLI (``infnet-monai segment``) and the bundle's ``configs/inference.json``:
:func:`load_network`, :func:`slice_inferer`, :func:`mask_saver` and :func:`infer_volume`. The
speed settings live here too, so both get them without flags: the network from
:func:`load_network` is optimised for its device (:mod:`infnet_monai.networks.optimize`),
:func:`slice_inferer` picks the slice batch for the device and the precision (fp32 unless fp16 or
bf16 autocast is asked for: :func:`default_precision`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from monai.data import MetaTensor, decollate_batch
from monai.inferers import SliceInferer
from monai.transforms import Compose, SaveImage

from infnet_monai.networks import InfNet, load_authors_checkpoint
from infnet_monai.networks.optimize import optimize_for_inference
from infnet_monai.transforms.chain import NETWORK_SIZE, network_input_batch
from infnet_monai.transforms.io import estimated_slices, expand_inputs
from infnet_monai.utils import AtomicNibabelWriter
from infnet_monai.utils.geometry import axial_axis, voxel_volume_ml

__all__ = [
    "MissingWeightsError",
    "default_device",
    "require_weights",
    "load_network",
    "COMPILE_MIN_SLICES",
    "compile_pays_off",
    "default_batch_size",
    "PRECISIONS",
    "default_precision",
    "InfNetSliceInferer",
    "slice_inferer",
    "mask_saver",
    "infer_volume",
    "VolumeResult",
    "volume_datalist",
]


class MissingWeightsError(FileNotFoundError):
    """Inference without trained weights would give a meaningless mask."""


def default_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` if given, else the first CUDA GPU when present, else the CPU."""
    if device is not None and str(device) != "auto":
        return torch.device(device)
    return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")


def require_weights(weights: str | Path | None) -> Path:
    """The weights path, or a plain error: an untrained Inf-Net gives no meaningful mask."""
    if not weights:
        raise MissingWeightsError(
            "no weights given: an untrained Inf-Net gives no meaningful mask; pass --weights MODEL.pt "
            "(a trained bundle's models/model.pt, or an authors' checkpoint via infnet-monai convert-weights)"
        )
    if not Path(weights).is_file():
        raise MissingWeightsError(
            f"{weights}: weights file not found; train the bundle or convert the authors' checkpoint "
            "with infnet-monai convert-weights into this path"
        )
    return Path(weights)


def load_network(
    weights: str | Path | None,
    device: str | torch.device | None = None,
    optimize: bool = True,
    compile: bool = False,
) -> torch.nn.Module:
    """InfNet in eval mode with ``weights`` (a converted state dict or an authors' checkpoint).

    ``optimize``: return the inference-only copy of :func:`optimize_for_inference` (BatchNorm
    folded, channels-last); False gives the plain eval ``InfNet``. ``compile``: also
    ``torch.compile`` it (worth it for long runs only: :func:`compile_pays_off`).
    """
    weights = require_weights(weights)
    device = default_device(device)
    net = load_authors_checkpoint(InfNet(), weights).eval()
    if optimize:
        return optimize_for_inference(net, device, example_size=NETWORK_SIZE, compile=compile)
    return net.to(device)


# Slices over which torch.compile pays back its compilation on a CPU: on the 2-core CPU of
# benchmarks/RESULTS.md compiling takes 11-15 s with Inductor's on-disk caches warm (40-60 s the
# first time on a machine) and saves 7-12 ms per 352x352 slice, so it breaks even after about
# 1,000-1,700 slices (warm); 3000 slices (50 volumes of 60 slices, 5 of 600) leave a margin.
COMPILE_MIN_SLICES = 3000


def compile_pays_off(
    inputs: str | Path | Sequence[str | Path] | Sequence[dict], device: str | torch.device | None = None
) -> bool:
    """Whether a run over ``inputs`` (paths, globs, folders, or a ``[{"image": path}]`` datalist)
    is long enough for ``torch.compile`` to pay back its compilation: on the CPU, at least
    :data:`COMPILE_MIN_SLICES` axial slices in all (counted from the headers, no voxels read).
    On a GPU compilation was not measured, so it is not turned on there."""
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


def default_batch_size(device: str | torch.device | None = None) -> int:
    """Slices per network call: 32 on a GPU (keeps it busy), 2 on the CPU (on the 2-core CPU of
    ``benchmarks/RESULTS.md`` 2 or 4 slices per call are fastest; 8 leave the caches and take
    15-30 % longer per slice)."""
    return 32 if default_device(device).type == "cuda" else 2


# autocast dtype of each precision (None: full fp32)
PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}


def default_precision(device: str | torch.device | None = None) -> str:
    """``"fp32"`` on every device: reduced precision is opt-in.

    Against fp32 masks of a trained Inf-Net (``benchmarks/precision.py``, figures in
    ``benchmarks/RESULTS.md``), fp16 rounding gave Dice 0.9997 on 2D slices but 0.9988 on a CT
    volume and bf16 0.991-0.998, short of the 0.999 that a default must keep. ``device`` is
    accepted for configs that choose per device.
    """
    return "fp32"


class InfNetSliceInferer(SliceInferer):
    """``SliceInferer`` that turns each batch of [0, 1] single-channel slices into the network
    input (:func:`~infnet_monai.transforms.chain.network_input_batch`) just before the network,
    so the volume is held with one channel instead of three; 3-channel inputs pass unchanged.

    ``precision`` (``"fp32"``, ``"fp16"``, ``"bf16"``): the network runs under autocast to that
    dtype on ``sw_device`` (fp32 accumulation); a batch whose reduced-precision logits are not
    finite (fp16 overflow) is run again in fp32. The logits come back as float32.
    """

    def __init__(self, *args, precision: str = "fp32", **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        self.precision = precision

    def network_wrapper(self, network: Callable, x: torch.Tensor, *args, **kwargs):
        dtype = PRECISIONS[self.precision]
        device_type = torch.device(self.sw_device or x.device).type

        def with_network_input(slices: torch.Tensor, *a, **k):
            inputs = network_input_batch(slices)
            if dtype is None:
                return network(inputs, *a, **k)
            with torch.autocast(device_type, dtype=dtype):
                out = network(inputs, *a, **k)
            if not bool(torch.isfinite(out).all()):
                with torch.autocast(device_type, enabled=False):
                    out = network(inputs.float(), *a, **k)
            return out.float()

        return super().network_wrapper(with_network_input, x, *args, **kwargs)


def slice_inferer(
    batch_size: int | None = None,
    device: str | torch.device | None = None,
    progress: bool = False,
    precision: str | None = None,
) -> SliceInferer:
    """:class:`InfNetSliceInferer` over axial slices (last spatial axis) of ``(B, 1 or 3, S, S, Z)``
    inputs (a single channel is converted to the network input per slice batch).

    Slices run on ``device`` in batches of ``batch_size`` (default :func:`default_batch_size`)
    in ``precision`` (default :func:`default_precision`); the output volume is assembled on the
    input's device (the CPU for volumes from transforms), so the GPU holds only one batch.
    """
    return InfNetSliceInferer(
        roi_size=(NETWORK_SIZE, NETWORK_SIZE),
        sw_batch_size=batch_size or default_batch_size(device),
        spatial_dim=2,
        sw_device=default_device(device),
        progress=progress,
        precision=precision or default_precision(device),
    )


def mask_saver(output_dir: str | Path, postfix: str = "seg", dtype=np.uint8) -> SaveImage:
    """``SaveImage`` writing ``<input name>_<postfix>.nii.gz`` into ``output_dir``, atomically."""
    return SaveImage(
        output_dir=str(output_dir),
        output_postfix=postfix,
        output_ext=".nii.gz",
        output_dtype=dtype,
        resample=False,
        separate_folder=False,
        print_log=False,
        writer=AtomicNibabelWriter,
    )


def volume_datalist(inputs: str | Path | Sequence[str | Path]) -> list[dict]:
    """``[{"image": path}, ...]`` for a folder of volumes (NIfTI files or DICOM series folders),
    a single volume, or a list of such (globs allowed)."""
    items = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
    return [{"image": str(p)} for p in expand_inputs([str(i) for i in items])]


@dataclass
class VolumeResult:
    """One segmented volume: the postprocessed item and its summary figures.

    ``slices``: axial slices through the network; ``input_slices``: axial slices of the input
    (more when the slice crop skipped slices without lung)."""

    item: dict
    slices: int
    seconds: float
    infected_ml: float
    input_slices: int = 0

    def summary(self, name: str) -> str:
        inferred = f"{self.slices} of {self.input_slices}" if self.input_slices > self.slices else f"{self.slices}"
        return f"{name}: {inferred} slices inferred, {self.seconds:.1f} s, infection {self.infected_ml:.1f} mL"


def infer_volume(
    item: dict,
    network: torch.nn.Module,
    inferer: SliceInferer,
    postprocessing: Compose,
    image_key: str = "image",
    pred_key: str = "pred",
) -> VolumeResult:
    """Run ``network`` over a preprocessed ``item`` (``image_key``: ``(1 or 3, S, S, Z)``) and apply
    ``postprocessing``; returns the item with ``pred_key`` on the input grid. The precision is
    the inferer's (:class:`InfNetSliceInferer`)."""
    start = time.perf_counter()
    image = item[image_key]
    with torch.inference_mode():
        logits = inferer(image.unsqueeze(0), network)
    item = dict(item)
    item[pred_key] = decollate_batch({pred_key: logits.float()})[0][pred_key]
    with torch.inference_mode():
        item = postprocessing(item)
    mask = item[pred_key]
    affine = np.asarray(mask.affine)
    infected = int(torch.count_nonzero(mask.as_tensor() if isinstance(mask, MetaTensor) else mask)) * voxel_volume_ml(affine)
    input_slices = int(mask.shape[1 + axial_axis(affine)])
    return VolumeResult(item, int(image.shape[-1]), time.perf_counter() - start, infected, input_slices)
