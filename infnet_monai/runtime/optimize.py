"""Inference-only copies of a network tuned for the device it runs on.

:func:`optimize_for_inference` is what the CLI and the bundle use (through
:func:`infnet_monai.runtime.load_network`), so both get the same settings:

- every device: BatchNorm folded into the convolutions (:func:`fold_batchnorm`) and the weights
  in channels-last memory format (oneDNN's and cuDNN's fast layout for these convolutions);
- CUDA: ``cudnn.benchmark`` on (one slice size per run, so the autotuned kernels are reused);
  reduced-precision autocast is applied per slice batch by
  :class:`infnet_monai.inferers.InfNetSliceInferer`.

A TorchScript trace, frozen and optimised for inference (``script=True``), is available but not
used by default: on the 2-core CPU of ``benchmarks/model_limit.py`` it was no faster than the
eager folded channels-last network (see ``benchmarks/RESULTS.md``).

On the CPU, :func:`infnet_monai.runtime.load_network` can also run this network from an
ahead-of-time compiled package (:mod:`infnet_monai.runtime.packaged`), about 1.3x faster per
slice on that CPU.

The outputs equal the original network's up to float rounding (relative 1e-5 on CPU).
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from infnet_monai.utils.errors import one_line

from .fuse import fold_batchnorm

__all__ = ["configure_backends", "script_for_cpu", "optimize_for_inference"]


def configure_backends(device: torch.device) -> None:
    """Backend switches for fixed-size slice batches on ``device`` (cudnn autotuning on CUDA)."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True


def script_for_cpu(network: nn.Module, example: torch.Tensor) -> nn.Module:
    """TorchScript trace of ``network`` (eval) on ``example``, frozen and optimised for inference.

    The trace keeps the eval-mode path taken for ``example`` (3-channel input, final map only);
    batch size and in-plane size may differ later.
    """
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        # the trace records the eval-mode branch of InfNet's input checks; TorchScript itself
        # announces its deprecation in favour of torch.compile
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        traced = torch.jit.trace(network.eval(), example, check_trace=False)
        return torch.jit.optimize_for_inference(torch.jit.freeze(traced))


def optimize_for_inference(
    network: nn.Module,
    device: str | torch.device = "cpu",
    example_size: int = 352,
    script: bool = False,
) -> nn.Module:
    """Inference-only copy of ``network`` on ``device`` (``network`` itself is left unchanged).

    Args:
        example_size: in-plane size of the example slice traced for ``script`` (multiple of 32).
        script: TorchScript tracing + freezing (off by default, see the module docstring).

    Returns a module in eval mode mapping ``(B, 3, H, W)`` to the eval-mode output, with no
    trainable parameters (``requires_grad`` off; none at all once scripted).
    """
    device = torch.device(device)
    configure_backends(device)
    fast = fold_batchnorm(network).to(device).to(memory_format=torch.channels_last).eval().requires_grad_(False)
    if not script:
        return fast
    example = torch.zeros(1, 3, example_size, example_size, device=device)
    try:
        return script_for_cpu(fast, example)
    except Exception as exc:  # noqa: BLE001 - any tracing failure: the eager network still works
        reason = one_line(exc, with_type=True, first_only=True)
        warnings.warn(f"TorchScript optimisation failed ({reason}); using the eager network")
        return fast
