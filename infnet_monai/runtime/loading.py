"""Loading the trained network for inference: the weights checked (:func:`require_weights`), the
network built (a bundle's ``network_def`` or ``InfNet()``), optimised for its device
(:mod:`~infnet_monai.runtime.optimize`) and, on the CPU, run from its compiled package once one
is built (:mod:`~infnet_monai.runtime.packaged`); :func:`prepare_package` builds that package.
The defaults (device, slice batch, precision) are :mod:`~infnet_monai.runtime.policy`'s.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, NamedTuple

import torch
from torch.overrides import TorchFunctionMode

from infnet_monai.networks import InfNet, load_authors_checkpoint
from infnet_monai.runtime.optimize import optimize_for_inference
from infnet_monai.runtime.packaged import PACKAGE_PRECISIONS, packaged_network
from infnet_monai.runtime.policy import default_batch_size, default_device, default_precision
from infnet_monai.shipped import default_weights, network_size

__all__ = [
    "MissingWeightsError", "PreparedPackage", "require_weights", "load_network", "prepare_package", "load_pattern_network",
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


class _SkipInitialisersOnMeta(TorchFunctionMode):
    """Skips the value initialisers (``torch.nn.init``'s, ``normal_``, ``uniform_``, ``fill_``,
    ``zero_``) on meta tensors, which hold no values: run, those of the meta device go through
    Python reference kernels that import ``torch._dynamo`` (0.6 s of a CLI run's start)."""

    _TENSOR_INITIALISERS = frozenset({"normal_", "uniform_", "fill_", "zero_"})

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if args and isinstance(args[0], torch.Tensor) and args[0].is_meta and (
            getattr(func, "__module__", None) == "torch.nn.init"
            or getattr(func, "__name__", None) in self._TENSOR_INITIALISERS
        ):
            return args[0]
        return func(*args, **(kwargs or {}))


def _unfilled(make: Callable[[], torch.nn.Module]) -> torch.nn.Module:
    """``make()`` built on the meta device and given uninitialised CPU storage, for a strict
    weight load to fill (every parameter and buffer is in the state dict). No random
    initialisation runs: it would be overwritten, and it would draw from torch's global random
    generator, which the caller's code may be using while the network loads in a background
    thread (:class:`~infnet_monai.segmenter.Segmenter`)."""
    with torch.device("meta"), _SkipInitialisersOnMeta():
        network = make()
    return network.to_empty(device="cpu")


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
    ``optimize``): run it from its ahead-of-time compiled package
    (:mod:`~infnet_monai.runtime.packaged`) for ``batch_size`` slices per call (default
    :func:`~infnet_monai.runtime.policy.default_batch_size`): None uses a package built before on
    this machine, True also builds it when missing (30-60 s, worth it for long runs:
    :func:`~infnet_monai.runtime.policy.compile_choice`), False never; the package runs in
    ``precision`` (fp32 or bf16 autocast baked in; None:
    :func:`~infnet_monai.runtime.policy.default_precision`), the precision the slice inferer runs
    the eager network in. ``network``: the module to load the weights into (a
    bundle's ``network_def``; None: a new ``InfNet()``).
    """
    weights = require_weights(weights)
    size = size or network_size(weights)
    device = default_device(device)
    if compile and (device.type != "cpu" or not optimize):
        raise ValueError(f"compiled networks are built for the CPU with optimize=True (got device {device}); "
                         "use --device cpu or --compile off")

    def eager() -> torch.nn.Module:
        net = load_authors_checkpoint(_unfilled(InfNet) if network is None else network, weights).eval()
        return optimize_for_inference(net, device, example_size=size) if optimize else net.to(device)

    precision = precision or default_precision(device)
    if compile is False or device.type != "cpu" or not optimize or precision not in PACKAGE_PRECISIONS:
        return eager()
    return packaged_network(weights, eager, batch_size or default_batch_size(device), size, build=compile,
                            precision=precision)


class PreparedPackage(NamedTuple):
    """A compiled package ready for use: its file and the slices it runs, ``batch_size`` of
    ``size`` x ``size`` px per call, in ``precision``."""

    path: Path
    batch_size: int
    size: int
    precision: str


def prepare_package(
    weights: str | Path | None = None, batch_size: int | None = None, size: int | None = None,
    precision: str | None = None,
) -> PreparedPackage:
    """Build the compiled CPU package of :func:`load_network` for ``weights`` (None: the shipped
    model), ``batch_size`` slices of ``size`` px in ``precision`` (None: the CPU's defaults), or
    find the one built before (``infnet-monai prepare``). Raises ``RuntimeError`` with the
    one-line reason when no package could be built or loaded."""
    import warnings

    from infnet_monai.runtime.packaged import PackagedNetwork, package_path

    weights = require_weights(weights)
    size = size or network_size(weights)
    batch_size = batch_size or default_batch_size("cpu")
    precision = precision or default_precision("cpu")
    with warnings.catch_warnings(record=True) as caught:  # packaged_network warns and falls back to eager
        warnings.simplefilter("always")
        network = load_network(weights, "cpu", compile=True, batch_size=batch_size, size=size, precision=precision)
    if not isinstance(network, PackagedNetwork):
        raise RuntimeError(str(caught[-1].message) if caught else "no compiled package could be built")
    return PreparedPackage(package_path(weights, batch_size, size, precision), batch_size, size, precision)


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
    unet = load_authors_checkpoint(_unfilled(InfNetUNet), pattern_weights).eval()
    return InfectionPatternNetwork(infection, optimize_for_inference(unet, device)).eval()
