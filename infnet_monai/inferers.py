"""The slice inferer: MONAI's ``SliceInferer`` over the axial slices of a preprocessed volume,
each slice batch turned into the network input and run in the chosen precision.

:func:`slice_inferer` builds it with the runtime defaults (:mod:`~infnet_monai.runtime.policy`).
"""

from __future__ import annotations

from typing import Callable

import torch
from monai.data import MetaTensor
from monai.inferers import SliceInferer
from monai.utils import BlendMode, convert_to_dst_type, ensure_tuple, optional_import

from infnet_monai.runtime.policy import PRECISIONS, default_batch_size, default_device, default_precision
from infnet_monai.shipped import network_size
from infnet_monai.transforms.chain import network_input_batch

tqdm, has_tqdm = optional_import("tqdm", name="tqdm")

__all__ = ["InfNetSliceInferer", "slice_inferer"]


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

    Slices run on ``device`` in batches of ``batch_size`` (default
    :func:`~infnet_monai.runtime.policy.default_batch_size`) in ``precision`` (default
    :func:`~infnet_monai.runtime.policy.default_precision`); the output volume is assembled on the
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
