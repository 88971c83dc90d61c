"""Volume inference: the trained Inf-Net slice by slice over a CT volume.

Shared by the CLI (``infnet-monai segment``) and the bundle's ``configs/inference.json``:
:func:`load_network`, :func:`slice_inferer`, :func:`mask_saver` and :func:`infer_volume`. The
speed settings live here too, so both get them without flags: the network from
:func:`load_network` is optimised for its device (:mod:`infnet_monai.networks.optimize`),
:func:`slice_inferer` picks the slice batch for the device and :func:`infer_volume` runs CUDA
in bf16 autocast.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from monai.data import decollate_batch
from monai.inferers import SliceInferer
from monai.transforms import Compose, SaveImage

from infnet_monai.networks import InfNet, load_authors_checkpoint
from infnet_monai.networks.optimize import optimize_for_inference
from infnet_monai.transforms.chain import NETWORK_SIZE, network_input_batch
from infnet_monai.transforms.io import expand_inputs
from infnet_monai.utils import AtomicNibabelWriter
from infnet_monai.utils.geometry import axial_axis, voxel_volume_ml

__all__ = [
    "MissingWeightsError",
    "default_device",
    "require_weights",
    "load_network",
    "default_batch_size",
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
    weights: str | Path | None, device: str | torch.device | None = None, optimize: bool = True
) -> torch.nn.Module:
    """InfNet in eval mode with ``weights`` (a converted state dict or an authors' checkpoint).

    ``optimize``: return the inference-only copy of :func:`optimize_for_inference` (BatchNorm
    folded, channels-last, TorchScript on the CPU); False gives the plain eval ``InfNet``.
    """
    weights = require_weights(weights)
    device = default_device(device)
    net = load_authors_checkpoint(InfNet(), weights).eval()
    if optimize:
        return optimize_for_inference(net, device, example_size=NETWORK_SIZE)
    return net.to(device)


def default_batch_size(device: str | torch.device | None = None) -> int:
    """Slices per network call: 32 on a GPU (keeps it busy in bf16), 2 on the CPU (larger CPU
    batches leave the caches: on a 2-core CPU 8 slices per call take 20-50 % longer per slice
    than 2, with 1 or 2 threads; see benchmarks/RESULTS.md)."""
    return 32 if default_device(device).type == "cuda" else 2


class InfNetSliceInferer(SliceInferer):
    """``SliceInferer`` that turns each batch of [0, 1] single-channel slices into the network
    input (:func:`~infnet_monai.transforms.chain.network_input_batch`) just before the network,
    so the volume is held with one channel instead of three; 3-channel inputs pass unchanged."""

    def network_wrapper(self, network: Callable, x: torch.Tensor, *args, **kwargs):
        def with_network_input(slices: torch.Tensor, *a, **k):
            return network(network_input_batch(slices), *a, **k)

        return super().network_wrapper(with_network_input, x, *args, **kwargs)


def slice_inferer(
    batch_size: int | None = None, device: str | torch.device | None = None, progress: bool = False
) -> SliceInferer:
    """:class:`InfNetSliceInferer` over axial slices (last spatial axis) of ``(B, 1 or 3, S, S, Z)``
    inputs (a single channel is converted to the network input per slice batch).

    Slices run on ``device`` in batches of ``batch_size`` (default :func:`default_batch_size`);
    the output volume is assembled on the input's device (the CPU for volumes from transforms),
    so the GPU holds only one batch.
    """
    return InfNetSliceInferer(
        roi_size=(NETWORK_SIZE, NETWORK_SIZE),
        sw_batch_size=batch_size or default_batch_size(device),
        spatial_dim=2,
        sw_device=default_device(device),
        progress=progress,
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


def _network_device(network: torch.nn.Module, inferer: SliceInferer) -> torch.device:
    """Where the slices run: the inferer's ``sw_device``, else the network's first tensor."""
    if inferer.sw_device is not None:
        return torch.device(inferer.sw_device)
    for tensor in list(network.parameters()) + list(network.buffers()):
        return tensor.device
    return torch.device("cpu")


def infer_volume(
    item: dict,
    network: torch.nn.Module,
    inferer: SliceInferer,
    postprocessing: Compose,
    image_key: str = "image",
    pred_key: str = "pred",
    amp: bool | None = None,
) -> VolumeResult:
    """Run ``network`` over a preprocessed ``item`` (``image_key``: ``(1 or 3, S, S, Z)``) and apply
    ``postprocessing``; returns the item with ``pred_key`` on the input grid."""
    start = time.perf_counter()
    image = item[image_key]
    device = _network_device(network, inferer)
    use_amp = device.type == "cuda" if amp is None else amp
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if use_amp else contextlib.nullcontext()
    with torch.inference_mode(), autocast:
        logits = inferer(image.unsqueeze(0), network)
    item = dict(item)
    item[pred_key] = decollate_batch({pred_key: logits.float()})[0][pred_key]
    with torch.inference_mode():
        item = postprocessing(item)
    mask = item[pred_key]
    affine = np.asarray(mask.affine)
    infected = float(mask.sum()) * voxel_volume_ml(affine)
    input_slices = int(mask.shape[1 + axial_axis(affine)])
    return VolumeResult(item, int(image.shape[-1]), time.perf_counter() - start, infected, input_slices)
