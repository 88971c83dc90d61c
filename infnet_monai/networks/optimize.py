"""Inference-only copies of a network tuned for the device it runs on.

:func:`optimize_for_inference` is what the CLI and the bundle use (through
:func:`infnet_monai.inference.load_network`), so both get the same settings:

- every device: BatchNorm folded into the convolutions (:func:`fold_batchnorm`) and the weights
  in channels-last memory format (oneDNN's and cuDNN's fast layout for these convolutions);
- CUDA: ``cudnn.benchmark`` on (one slice size per run, so the autotuned kernels are reused);
  reduced-precision autocast is applied per slice batch by
  :class:`infnet_monai.inference.InfNetSliceInferer`.

A TorchScript trace, frozen and optimised for inference (``script=True``), is available but not
used by default: on the 2-core CPU of ``benchmarks/model_limit.py`` it was no faster than the
eager folded channels-last network (see ``benchmarks/RESULTS.md``).

``compile=True`` wraps the network in ``torch.compile`` (Inductor with weight freezing: oneDNN
convolutions with prepacked weights and fused ReLU/residual additions) for one fixed slice batch
(:class:`CompiledForInference`). On that CPU it is 6-11 % faster per slice but costs 11-15 s of
compilation per process (40-60 s the first time, before Inductor's on-disk caches are warm),
so callers use it only for runs long enough to pay that back
(:func:`infnet_monai.inference.compile_pays_off`).

The outputs equal the original network's up to float rounding (relative 1e-5 on CPU).
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from .fuse import fold_batchnorm

__all__ = ["configure_backends", "script_for_cpu", "CompiledForInference", "optimize_for_inference"]


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
        # announces its deprecation in favour of torch.compile, whose CPU compile takes minutes
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        traced = torch.jit.trace(network.eval(), example, check_trace=False)
        return torch.jit.optimize_for_inference(torch.jit.freeze(traced))


class CompiledForInference(nn.Module):
    """``torch.compile`` of an inference network, run on slice batches of one fixed size.

    The graph is compiled (lazily, at the first call) for the first batch size it sees; smaller
    batches (a volume's last one) are padded with zero slices and larger ones split, so one
    compilation serves the whole run instead of one per batch size (each costs as much as the
    first). If compilation fails (e.g. no C++ compiler), a one-line warning is given and the
    eager ``network`` is used from then on.

    Input ``(B, C, H, W)`` with fixed ``C, H, W``; output the eager network's, for the B slices.
    """

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network
        # a plain attribute, not a submodule: the parameters and state dict stay the network's
        object.__setattr__(self, "compiled", torch.compile(network, dynamic=False, options={"freezing": True}))
        self.batch: int | None = None
        self.failed = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.failed:
            return self.network(x)
        n, batch = x.shape[0], self.batch or x.shape[0]
        if n > batch:
            return torch.cat([self(part) for part in x.split(batch)])
        # in inference mode, on a fresh inference tensor: the graph's guards hold from call to
        # call, and Inductor freezes the weights (it does so only without autograd)
        with torch.inference_mode():
            x = torch.cat([x, x.new_zeros((batch - n, *x.shape[1:]))]) if n < batch else x.clone()
            try:
                out = self.compiled(x)
                self.batch = batch
            except (torch._dynamo.exc.TorchDynamoException, RuntimeError, OSError) as exc:  # no C++ toolchain...
                first_line = (str(exc).strip().splitlines() or [""])[0]
                warnings.warn(f"torch.compile failed ({exc.__class__.__name__}: {first_line}); running the network uncompiled")
                self.failed = True
                out = self.network(x)
        return out[:n]


def optimize_for_inference(
    network: nn.Module,
    device: str | torch.device = "cpu",
    example_size: int = 352,
    script: bool = False,
    compile: bool = False,
) -> nn.Module:
    """Inference-only copy of ``network`` on ``device`` (``network`` itself is left unchanged).

    Args:
        example_size: in-plane size of the example slice traced for ``script`` (multiple of 32).
        script: TorchScript tracing + freezing (off by default, see the module docstring).
        compile: ``torch.compile`` for one fixed slice batch (:class:`CompiledForInference`;
            off by default: it pays off only over thousands of slices, see the module docstring).

    Returns a module in eval mode mapping ``(B, 3, H, W)`` to the eval-mode output, with no
    trainable parameters (``requires_grad`` off; none at all once scripted).
    """
    if script and compile:
        raise ValueError("choose one of script (TorchScript) and compile (torch.compile)")
    device = torch.device(device)
    configure_backends(device)
    fast = fold_batchnorm(network).to(device).to(memory_format=torch.channels_last).eval().requires_grad_(False)
    if compile:
        return CompiledForInference(fast).eval()
    if not script:
        return fast
    example = torch.zeros(1, 3, example_size, example_size, device=device)
    try:
        return script_for_cpu(fast, example)
    except Exception as exc:  # noqa: BLE001 - any tracing failure: the eager network still works
        warnings.warn(f"TorchScript optimisation failed ({exc.__class__.__name__}: {exc}); using the eager network")
        return fast
