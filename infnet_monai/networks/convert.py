"""Load the authors' released checkpoints and the Res2Net ImageNet checkpoint.

Supported sources (original key names, optionally prefixed ``module.`` by DataParallel, or
wrapped in ``{"state_dict": ...}`` / ``{"model": ...}``):

- Inf-Net and Semi-Inf-Net (same architecture): ``resnet.*``, ``rfb2_1.*``, ``ParDec.*``,
  ``ra4_conv1.*``, ``edge_conv1.*``… → :class:`~infnet_monai.networks.InfNet`;
- Inf-Net + UNet (multi-class): ``inc.double_conv.*``, ``down1.maxpool_conv.1.*``…
  → :class:`~infnet_monai.networks.InfNetUNet`;
- Res2Net-50 v1b 26w×4s ImageNet (``res2net50_v1b_26w_4s-3cf99910.pth``) → the InfNet encoder
  (the ``fc`` classifier is dropped; the SHA-256 of the file must start with the 8 hex digits
  in its name when the name has them).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable, Dict, Mapping

import torch
from torch import nn

from infnet_monai.utils import atomic_output, file_digest

__all__ = [
    "CheckpointMismatchError",
    "read_checkpoint",
    "verify_hash_in_name",
    "half_state_dict",
    "infnet_keys_from_authors",
    "unet_keys_from_authors",
    "res2net_keys_from_imagenet",
    "detect_source",
    "load_authors_checkpoint",
    "load_res2net_imagenet",
    "convert_checkpoint",
]

StateDict = Dict[str, torch.Tensor]

_HASH_IN_NAME = re.compile(r"-([0-9a-f]{8,})\.(pth|pt)$")

# Authors' Inf-Net head → ours: (pattern, replacement) applied in order on the key.
_INFNET_RULES = [
    (r"^resnet\.", "backbone."),
    (r"^rfb([234])_1\.", r"rfb\1."),
    (r"^ParDec\.", "partial_decoder."),
    (r"^ra4_conv1\.", "reverse_attention4.reduce."),
    (r"^ra4_conv([234])\.", lambda m: f"reverse_attention4.refine.{int(m.group(1)) - 2}."),
    (r"^ra4_conv5\.", "reverse_attention4.predict."),
    (r"^ra([23])_conv1\.", r"reverse_attention\1.reduce."),
    (r"^ra([23])_conv([23])\.", lambda m: f"reverse_attention{m.group(1)}.refine.{int(m.group(2)) - 2}."),
    (r"^ra([23])_conv4\.", r"reverse_attention\1.predict."),
    (r"^edge_conv1\.", "edge_attention.reduce."),
    (r"^edge_conv([23])\.", lambda m: f"edge_attention.refine.{int(m.group(1)) - 2}."),
    (r"^edge_conv4\.", "edge_attention.predict."),
]
_UNET_RULES = [
    (r"\.double_conv\.", "."),
    (r"^inc\.double_conv\.", "inc."),
    (r"^(down\d)\.maxpool_conv\.1\.", r"\1.conv."),
    (r"^outc\.conv\.", "outc."),
]


class CheckpointMismatchError(ValueError):
    """A checkpoint does not fit the network; the message lists missing and unexpected keys."""


def _strip_wrappers(obj: object, path: Path) -> StateDict:
    for key in ("state_dict", "model", "network"):
        if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping) or not all(torch.is_tensor(v) for v in obj.values()):
        raise ValueError(f"{path}: not a state dict of tensors; give a .pth/.pt saved with model.state_dict()")
    return {k[len("module.") :] if k.startswith("module.") else k: v for k, v in obj.items()}


def verify_hash_in_name(path: str | Path) -> None:
    """Check that the file's SHA-256 starts with the hex digits in its name (``name-3cf99910.pth``)."""
    path = Path(path)
    match = _HASH_IN_NAME.search(path.name)
    if not match:
        return
    digest = file_digest(path)
    if not digest.startswith(match.group(1)):
        raise ValueError(
            f"{path}: SHA-256 {digest[:8]}… does not match the {match.group(1)} in its name; "
            "the download is corrupt or a different file, fetch it again"
        )


def read_checkpoint(path: str | Path) -> StateDict:
    """Read a checkpoint file into a flat state dict (wrappers and ``module.`` removed)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    verify_hash_in_name(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - re-raised with the file name
        raise ValueError(f"{path}: cannot be read as a PyTorch checkpoint ({exc.__class__.__name__})") from exc
    return _strip_wrappers(obj, path)


def _rename(state: Mapping[str, torch.Tensor], rules) -> StateDict:
    out: StateDict = {}
    for key, value in state.items():
        new = key
        for pattern, repl in rules:
            new = re.sub(pattern, repl, new)
        out[new] = value
    return out


def infnet_keys_from_authors(state: Mapping[str, torch.Tensor]) -> StateDict:
    """Rename an authors' Inf-Net / Semi-Inf-Net state dict to :class:`InfNet` keys (``fc`` dropped)."""
    return {k: v for k, v in _rename(state, _INFNET_RULES).items() if not k.startswith("backbone.fc.")}


def unet_keys_from_authors(state: Mapping[str, torch.Tensor]) -> StateDict:
    """Rename an authors' Inf-Net + UNet state dict to :class:`InfNetUNet` keys."""
    return _rename(state, _UNET_RULES)


def res2net_keys_from_imagenet(state: Mapping[str, torch.Tensor]) -> StateDict:
    """Keep the backbone keys of a Res2Net ImageNet checkpoint (classifier ``fc`` dropped)."""
    return {k: v for k, v in state.items() if not k.startswith("fc.")}


def detect_source(state: Mapping[str, torch.Tensor]) -> str:
    """``"inf_net"``, ``"inf_net_unet"`` or ``"res2net50"`` from the checkpoint's key names
    (authors' or already converted)."""
    keys = set(state)
    if any(k.startswith(("ParDec.", "partial_decoder.")) for k in keys):
        return "inf_net"
    if any(k.startswith("inc.") for k in keys):
        return "inf_net_unet"
    if "layer1.0.conv1.weight" in keys:
        return "res2net50"
    raise ValueError("unrecognised checkpoint: neither Inf-Net, Inf-Net+UNet nor Res2Net-50 key names")


_CONVERTERS: Dict[str, Callable[[Mapping[str, torch.Tensor]], StateDict]] = {
    "inf_net": infnet_keys_from_authors,
    "inf_net_unet": unet_keys_from_authors,
    "res2net50": res2net_keys_from_imagenet,
}


def _load_strict(model: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or unexpected or wrong:

        def show(keys):
            return ", ".join(keys[:8]) + (f" … ({len(keys)} in all)" if len(keys) > 8 else "") if keys else "none"

        raise CheckpointMismatchError(
            f"{source}: does not fit {model.__class__.__name__}: missing keys: {show(missing)}; "
            f"unexpected keys: {show(unexpected)}; shape mismatches: {show(wrong)}"
        )
    model.load_state_dict(state, strict=True)


def load_authors_checkpoint(model: nn.Module, path: str | Path) -> nn.Module:
    """Load an authors' (or already converted) checkpoint into ``model`` (InfNet or InfNetUNet)."""
    from .infnet import InfNet

    state = read_checkpoint(path)
    kind = "inf_net" if isinstance(model, InfNet) else "inf_net_unet"
    _load_strict(model, _CONVERTERS[kind](state), str(path))
    return model


def load_res2net_imagenet(backbone: nn.Module, path: str | Path) -> nn.Module:
    """Load ``res2net50_v1b_26w_4s-3cf99910.pth`` (hash checked) into a :class:`Res2Net50`."""
    _load_strict(backbone, res2net_keys_from_imagenet(read_checkpoint(path)), str(path))
    return backbone


# BatchNorm statistics stay fp32 in half-precision files (tiny, and variances can fall below
# fp16's normal range)
_FP32_SUFFIXES = ("running_mean", "running_var")


def half_state_dict(state: Mapping[str, torch.Tensor]) -> StateDict:
    """``state`` with its floating-point weights in fp16 (BatchNorm statistics kept in fp32):
    half the file size; loading into an fp32 network casts them back."""
    return {
        k: v.half() if v.is_floating_point() and not k.endswith(_FP32_SUFFIXES) else v for k, v in state.items()
    }


def convert_checkpoint(
    src: str | Path, dst: str | Path, network: str = "auto", overwrite: bool = False, half: bool = False
) -> str:
    """Convert ``src`` to a plain state dict of our network at ``dst`` (atomic write).

    ``network``: ``"auto"`` (from the keys), ``"inf_net"``, ``"inf_net_unet"`` or ``"res2net50"``
    (a backbone-only state dict for ``InfNet.backbone``). The result is verified by loading it
    strictly into a freshly built network. ``half``: store the weights in fp16
    (:func:`half_state_dict`), as the shipped models are. Returns a one-line summary.
    """
    from .registry import get_network
    from .res2net import Res2Net50

    src, dst = Path(src), Path(dst)
    if src.resolve() == dst.resolve():
        raise ValueError(f"{dst}: destination is the source checkpoint; choose another output path")
    state = read_checkpoint(src)
    kind = detect_source(state) if network == "auto" else network
    if kind not in _CONVERTERS:
        raise ValueError(f"--network {kind!r} unknown; choose one of {sorted(_CONVERTERS)}")
    converted = _CONVERTERS[kind](state)
    model = Res2Net50() if kind == "res2net50" else get_network(kind)
    _load_strict(model, converted, str(src))
    state = half_state_dict(model.state_dict()) if half else model.state_dict()
    with atomic_output(dst, overwrite=overwrite) as tmp:
        torch.save(state, tmp)
    n = sum(v.numel() for k, v in converted.items() if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))
    return f"{src} -> {dst}: {kind}, {len(converted)} tensors, {n:,} parameters"
