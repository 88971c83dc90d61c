"""Volume inference: the trained Inf-Net slice by slice over a CT volume.

:func:`load_network` (the network optimised for its device, :mod:`infnet_monai.networks.optimize`,
and on the CPU run from its compiled package once one is built, :mod:`infnet_monai.networks.packaged`),
:func:`slice_inferer`, :func:`mask_saver` and :func:`infer_volume`; the defaults they use (device,
slice batch, precision, whether to compile) are :mod:`infnet_monai.runtime`'s.
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
from monai.utils import BlendMode, convert_to_dst_type, ensure_tuple, optional_import

from infnet_monai.networks import InfNet, load_authors_checkpoint
from infnet_monai.networks.optimize import optimize_for_inference
from infnet_monai.networks.packaged import PACKAGE_PRECISIONS, packaged_network
from infnet_monai.shipped import default_weights, network_size
from infnet_monai.transforms.chain import network_input_batch
from infnet_monai.data.inputs import expand_inputs
from infnet_monai.runtime import PRECISIONS, default_batch_size, default_device, default_precision
from infnet_monai.naming import CaseFolderLayout, case_name_formatter
from infnet_monai.utils import AtomicNibabelWriter
from infnet_monai.utils.geometry import axial_axis, voxel_volume_ml

tqdm, has_tqdm = optional_import("tqdm", name="tqdm")

__all__ = [
    "MissingWeightsError",
    "require_weights",
    "load_network",
    "load_pattern_network",
    "prepare_package",
    "InfNetSliceInferer",
    "slice_inferer",
    "mask_saver",
    "infer_volume",
    "VolumeResult",
    "volume_datalist",
]


class MissingWeightsError(FileNotFoundError):
    """Inference without trained weights would give a meaningless mask."""


def require_weights(weights: str | Path | None) -> Path:
    """The weights path (None: the shipped model's, :func:`infnet_monai.shipped.default_weights`),
    or a plain error: an untrained Inf-Net gives no meaningful mask."""
    if not weights:
        weights = default_weights()
    if not weights:
        raise MissingWeightsError(
            "no weights given and no shipped model beside the package (install with pip install -e . from the "
            "repository); pass --weights MODEL.pt (a trained bundle's models/model.pt, or an authors' checkpoint "
            "via infnet-monai convert-weights)"
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
    compile: bool | None = None,
    batch_size: int | None = None,
    size: int | None = None,
    network: torch.nn.Module | None = None,
    precision: str | None = None,
) -> torch.nn.Module:
    """InfNet in eval mode with ``weights`` (a converted state dict or an authors' checkpoint;
    None: the shipped model), for slices of ``size`` pixels (None: the model's own,
    :func:`infnet_monai.shipped.network_size`).

    ``optimize``: return the inference-only copy of :func:`optimize_for_inference` (BatchNorm
    folded, channels-last); False gives the plain eval ``InfNet``. ``compile`` (CPU, with
    ``optimize``): run it from its ahead-of-time compiled package for ``batch_size`` slices per
    call (default :func:`default_batch_size`; :mod:`infnet_monai.networks.packaged`): None uses
    a package built before on this machine, True also builds it when missing (30-60 s, worth it
    for long runs: :func:`compile_choice`), False never; the package runs in ``precision``
    (fp32 or bf16 autocast baked in; None: :func:`default_precision`), the precision the slice
    inferer runs the eager network in. ``network``: the module to load the weights into (a
    bundle's ``network_def``; None: a new ``InfNet()``).
    """
    weights = require_weights(weights)
    size = size or network_size(weights)
    device = default_device(device)
    if compile and (device.type != "cpu" or not optimize):
        raise ValueError(f"compiled networks are built for the CPU with optimize=True (got device {device}); "
                         "use --device cpu or --compile off")

    def eager() -> torch.nn.Module:
        net = load_authors_checkpoint(InfNet() if network is None else network, weights).eval()
        return optimize_for_inference(net, device, example_size=size) if optimize else net.to(device)

    precision = precision or default_precision(device)
    if compile is False or device.type != "cpu" or not optimize or precision not in PACKAGE_PRECISIONS:
        return eager()
    return packaged_network(weights, eager, batch_size or default_batch_size(device), size, build=compile,
                            precision=precision)


def prepare_package(
    weights: str | Path | None = None, batch_size: int | None = None, size: int | None = None,
    precision: str | None = None,
) -> Path:
    """Build the compiled CPU package of :func:`load_network` for ``weights`` (None: the shipped
    model), ``batch_size`` slices of ``size`` px in ``precision`` (None: the CPU's defaults), or
    find the one built before; returns its path (``infnet-monai prepare``). Raises
    ``RuntimeError`` with the one-line reason when no package could be built or loaded."""
    import warnings

    from infnet_monai.networks.packaged import PackagedNetwork, package_path

    weights = require_weights(weights)
    size = size or network_size(weights)
    batch_size = batch_size or default_batch_size("cpu")
    precision = precision or default_precision("cpu")
    with warnings.catch_warnings(record=True) as caught:  # packaged_network warns and falls back to eager
        warnings.simplefilter("always")
        network = load_network(weights, "cpu", compile=True, batch_size=batch_size, size=size, precision=precision)
    if not isinstance(network, PackagedNetwork):
        raise RuntimeError(str(caught[-1].message) if caught else "no compiled package could be built")
    return package_path(weights, batch_size, size, precision)


def load_pattern_network(
    weights: str | Path | None,
    pattern_weights: str | Path | None = None,
    device: str | torch.device | None = None,
    size: int | None = None,
) -> torch.nn.Module:
    """The infection-pattern network (:class:`~infnet_monai.networks.patterns.InfectionPatternNetwork`)
    in eval mode: the Inf-Net of ``weights`` (None: the shipped one, its prior) and the
    multi-class UNet of ``pattern_weights`` (None: the shipped one), both optimised for
    ``device``; never a compiled package."""
    from infnet_monai.networks import InfNetUNet
    from infnet_monai.networks.patterns import InfectionPatternNetwork
    from infnet_monai.shipped import BUNDLE_DIR, PATTERN_WEIGHTS, default_pattern_weights

    pattern_weights = pattern_weights or default_pattern_weights()
    if not pattern_weights or not Path(pattern_weights).is_file():
        raise MissingWeightsError(
            f"{pattern_weights or BUNDLE_DIR / 'models' / PATTERN_WEIGHTS}: no multi-class weights; pass --pattern-weights "
            "MODEL.pt (a bundle's models/multiclass_model.pt, trained by configs/train_multiclass_shipped.json)"
        )
    device = default_device(device)
    infection = load_network(weights, device, compile=False, size=size)
    unet = load_authors_checkpoint(InfNetUNet(), pattern_weights).eval()
    return InfectionPatternNetwork(infection, optimize_for_inference(unet, device)).eval()


class InfNetSliceInferer(SliceInferer):
    """``SliceInferer`` that turns each batch of [0, 1] single-channel slices into the network
    input (:func:`~infnet_monai.transforms.chain.network_input_batch`) just before the network,
    so the volume is held with one channel instead of three; 3-channel inputs pass unchanged.

    ``precision`` (``"fp32"``, ``"fp16"``, ``"bf16"``): the network runs under autocast to that
    dtype on ``sw_device`` (fp32 accumulation); a batch whose reduced-precision logits are not
    finite (fp16 overflow) is run again in fp32. The logits come back as float32.

    When the slices are exactly the window (``(N, C, *roi_size, Z)`` with the slice axis last:
    what the preprocessing gives) with constant blending and no extra network arguments, each
    window is one slice and the sliding-window bookkeeping (window gathering, weight and count
    maps) reduces to writing each slice batch's output in place: that case runs the batches
    directly, with the same values, dtype and meta data as the sliding window.
    """

    def __init__(self, *args, precision: str = "fp32", **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        self.precision = precision

    def _run(self, network: Callable, slices: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        """``network`` on a slice batch ``(B, 1 or 3, H, W)`` in this inferer's precision."""
        dtype = PRECISIONS[self.precision]
        inputs = network_input_batch(slices)
        if dtype is None:
            return network(inputs, *args, **kwargs)
        device_type = torch.device(self.sw_device or slices.device).type
        with torch.autocast(device_type, dtype=dtype):
            out = network(inputs, *args, **kwargs)
        if not bool(torch.isfinite(out).all()):
            with torch.autocast(device_type, enabled=False):
                out = network(inputs.float(), *args, **kwargs)
        return out.float()

    def network_wrapper(self, network: Callable, x: torch.Tensor, *args, **kwargs):
        return super().network_wrapper(lambda slices, *a, **k: self._run(network, slices, *a, **k), x, *args, **kwargs)

    def _slices_are_windows(self, inputs: torch.Tensor, args: tuple, kwargs: dict) -> bool:
        return (
            not args and not kwargs and inputs.dim() == 5 and self.spatial_dim == 2 and inputs.shape[0] * inputs.shape[-1] > 0
            and tuple(inputs.shape[2:4]) == tuple(ensure_tuple(self.orig_roi_size))
            and BlendMode(self.mode) == BlendMode.CONSTANT
        )

    def __call__(self, inputs: torch.Tensor, network: Callable, *args, **kwargs):
        if not self._slices_are_windows(inputs, args, kwargs):
            return super().__call__(inputs, network, *args, **kwargs)
        device = self.device or inputs.device
        sw_device = self.sw_device or inputs.device
        meta = MetaTensor([]).copy_meta_from(inputs, copy_attr=False) if isinstance(inputs, MetaTensor) else None
        volume = inputs.as_tensor() if isinstance(inputs, MetaTensor) else inputs
        n, _, height, width, depth = volume.shape
        slices = volume.permute(0, 4, 1, 2, 3).reshape(n * depth, -1, height, width)  # (N*Z, C, H, W)
        output = None
        starts = range(0, n * depth, self.sw_batch_size)
        for start in tqdm(starts) if self.progress and has_tqdm else starts:
            out = self._run(network, slices[start : start + self.sw_batch_size].to(sw_device))
            if output is None:
                output = torch.empty((n * depth, *out.shape[1:]), dtype=out.dtype, device=device)
            output[start : start + out.shape[0]] = out.to(device)
        output = output.reshape(n, depth, *output.shape[1:]).permute(0, 2, 3, 4, 1)  # (N, C_out, H, W, Z)
        return convert_to_dst_type(output, meta if meta is not None else inputs, device=device)[0]


def slice_inferer(
    batch_size: int | None = None,
    device: str | torch.device | None = None,
    progress: bool = False,
    precision: str | None = None,
    size: int | None = None,
) -> SliceInferer:
    """:class:`InfNetSliceInferer` over axial slices (last spatial axis) of ``(B, 1 or 3, S, S, Z)``
    inputs (a single channel is converted to the network input per slice batch); ``size``: S
    (None: the shipped model's, :func:`infnet_monai.shipped.network_size`).

    Slices run on ``device`` in batches of ``batch_size`` (default :func:`default_batch_size`)
    in ``precision`` (default :func:`default_precision`); the output volume is assembled on the
    input's device (the CPU for volumes from transforms), so the GPU holds only one batch.
    """
    return InfNetSliceInferer(
        roi_size=(size or network_size(),) * 2,
        sw_batch_size=batch_size or default_batch_size(device),
        spatial_dim=2,
        sw_device=default_device(device),
        progress=progress,
        precision=precision or default_precision(device),
    )


def mask_saver(output_dir: str | Path, postfix: str = "seg", dtype=np.uint8) -> SaveImage:
    """``SaveImage`` writing ``<case name>_<postfix>.nii.gz`` into ``output_dir``, atomically
    (:mod:`infnet_monai.naming`: the input's whole name, dots kept)."""
    return SaveImage(
        output_dir=str(output_dir),
        output_postfix=postfix,
        output_ext=".nii.gz",
        output_dtype=dtype,
        resample=False,
        separate_folder=False,
        print_log=False,
        writer=AtomicNibabelWriter,
        output_name_formatter=case_name_formatter,
        folder_layout=CaseFolderLayout(output_dir, postfix, ".nii.gz"),
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
    (more when the slice crop skipped slices without lung); ``seconds``: network and
    postprocessing, ``network_seconds`` the network's share."""

    item: dict
    slices: int
    seconds: float
    infected_ml: float
    input_slices: int = 0
    network_seconds: float = 0.0

    @property
    def mask(self) -> MetaTensor:
        """The mask ``(1, X, Y, Z)`` uint8 on the input grid (0/1, or the patterns' 0/1/2)."""
        return self.item["pred"]

    @property
    def lung(self) -> MetaTensor | None:
        """Lung labels ``(1, X, Y, Z)`` on the input grid (1 right, 2 left, 3 rest of the thoracic
        cavity), None when the mask was not restricted to the lungs."""
        return self.item.get("lung")

    @property
    def probabilities(self) -> MetaTensor | None:
        """Probabilities ``(C, X, Y, Z)`` float32 on the input grid when kept (``keep_prob``)."""
        return self.item.get("prob")

    def burden(self, case: str = "") -> dict:
        """The burden report of this result (lung and infection mL per side, percent involved,
        severity; :func:`~infnet_monai.report.burden.infection_burden`); needs :attr:`lung`."""
        from infnet_monai.report.burden import infection_burden

        if self.lung is None:
            raise ValueError("no lung labels: segment with restrict_to_lung=True for a burden report")
        return infection_burden(self.lung, self.mask, case=case)

    def mask_image(self):
        """The mask as a ``nibabel.Nifti1Image`` (uint8, the input's affine)."""
        import nibabel as nib

        return nib.Nifti1Image(np.asarray(self.mask[0].cpu(), np.uint8), np.asarray(self.mask.affine, np.float64))

    def summary(self, name: str, labels: dict | None = None) -> str:
        """One line: slices, seconds, infected mL and, for a labelmap (``labels`` with more than
        one class, value -> (name, ...)), the mL of each class."""
        inferred = f"{self.slices} of {self.input_slices}" if self.input_slices > self.slices else f"{self.slices}"
        line = f"{name}: {inferred} slices inferred, {self.seconds:.1f} s, infection {self.infected_ml:.1f} mL"
        if labels and len(labels) > 2:
            mask = self.item["pred"]
            voxel_ml = voxel_volume_ml(np.asarray(mask.affine))
            values = mask.as_tensor() if isinstance(mask, MetaTensor) else torch.as_tensor(mask)
            line += " (" + ", ".join(
                f"{entry[0]} {int(torch.count_nonzero(values == value)) * voxel_ml:.1f} mL"
                for value, entry in labels.items() if value > 0
            ) + ")"
        return line


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
    network_seconds = time.perf_counter() - start
    item = dict(item)
    item[pred_key] = decollate_batch({pred_key: logits.float()})[0][pred_key]
    with torch.inference_mode():
        item = postprocessing(item)
    mask = item[pred_key]
    affine = np.asarray(mask.affine)
    infected = int(torch.count_nonzero(mask.as_tensor() if isinstance(mask, MetaTensor) else mask)) * voxel_volume_ml(affine)
    input_slices = int(mask.shape[1 + axial_axis(affine)])
    return VolumeResult(item, int(image.shape[-1]), time.perf_counter() - start, infected, input_slices, network_seconds)
