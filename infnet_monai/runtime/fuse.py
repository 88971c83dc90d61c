"""BatchNorm folding for inference: every ``BatchNorm2d`` that directly follows a ``Conv2d`` is
merged into the convolution's weight and bias (eval-mode statistics), and replaced by an identity.

The folded network computes the same function in eval mode with one pass over each activation
less per BatchNorm (Inf-Net has 103 of them). It is for inference only: the folded BatchNorms no
longer learn, and the state dict no longer matches the training one.

Conv → BN pairs are found structurally:

- consecutive children of an ``nn.Sequential`` (``ConvBN``, the Res2Net downsample shortcuts);
- sibling attributes ``convX`` / ``bnX`` (a convolution, or an ``nn.Sequential`` ending in one)
  and the index-matched ``ModuleList`` pair ``convs`` / ``bns`` (the Res2Net naming, whose
  forward applies each ``bnX`` right after ``convX``).
"""

from __future__ import annotations

import copy
from typing import Iterator, Tuple

from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

__all__ = ["conv_bn_pairs", "fold_batchnorm"]

# (parent of the conv, conv name, parent of the BN, BN name)
_Pair = Tuple[nn.Module, str, nn.Module, str]


def _last_conv(module: nn.Module, name: str) -> tuple[nn.Module, str] | None:
    """(parent, name) of the convolution ``module.<name>``, or of the last child of a Sequential."""
    child = getattr(module, name, None)
    if isinstance(child, nn.Sequential) and len(child) and isinstance(child[-1], nn.Conv2d):
        return child, str(len(child) - 1)
    if isinstance(child, nn.Conv2d):
        return module, name
    return None


def conv_bn_pairs(model: nn.Module) -> Iterator[_Pair]:
    """Every Conv2d → BatchNorm2d pair of ``model`` (see the module docstring for the rules)."""
    for module in model.modules():
        children = dict(module.named_children())
        if isinstance(module, nn.Sequential):
            names = list(children)
            for a, b in zip(names, names[1:]):
                if isinstance(children[a], nn.Conv2d) and isinstance(children[b], nn.BatchNorm2d):
                    yield module, a, module, b
        for name, child in children.items():
            if isinstance(child, nn.BatchNorm2d) and name.startswith("bn"):
                conv = _last_conv(module, "conv" + name[2:])
                if conv is not None:
                    yield conv[0], conv[1], module, name
        convs, bns = children.get("convs"), children.get("bns")
        if isinstance(convs, nn.ModuleList) and isinstance(bns, nn.ModuleList) and len(convs) == len(bns):
            for i, (conv, bn) in enumerate(zip(convs, bns)):
                if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                    yield convs, str(i), bns, str(i)


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Eval-mode copy of ``model`` with every Conv2d → BatchNorm2d pair folded into the conv.

    ``model`` itself is left unchanged. Returns the copy (in eval mode), whose outputs equal the
    original's in eval mode up to float rounding.
    """
    folded = copy.deepcopy(model).eval()
    for conv_parent, conv_name, bn_parent, bn_name in list(conv_bn_pairs(folded)):
        conv, bn = getattr(conv_parent, conv_name), getattr(bn_parent, bn_name)
        if isinstance(bn, nn.Identity):  # already folded through another rule
            continue
        setattr(conv_parent, conv_name, fuse_conv_bn_eval(conv, bn))
        setattr(bn_parent, bn_name, nn.Identity())
    return folded
