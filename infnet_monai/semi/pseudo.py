"""Pseudo labels for unlabelled 2D slices: predict, turn into 0-255 masks with edges, write.

Prediction runs the network in eval mode on the same 2D preprocessing as training
(:func:`~infnet_monai.transforms.train2d.slice_validation_transforms`: 0-255 -> [0, 1], resize
to S x S, ImageNet normalisation). The final map's logits are resized bilinearly back to the
slice's own size, passed through a sigmoid and (by default) min-max normalised per slice, as the
authors made the COVID-SemiSeg pseudo labels. Edges come from the pseudo label with
:class:`~infnet_monai.transforms.edge.EdgeTarget` (foreground: label > 127.5, i.e. p > 0.5), the
same edge the training transforms would compute from it.

Output layout (COVID-SemiSeg): ``<out>/Imgs/<name>`` (the slice, copied byte for byte),
``<out>/GT/<stem>.png`` (uint8 0-255) and ``<out>/Edge/<stem>.png`` (uint8 {0, 255}).
Arrays returned here are (H, W) in image row/column order (PIL's ``size`` is (W, H)).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.data import DataLoader, Dataset
from PIL import Image

from infnet_monai.transforms.edge import EdgeTarget
from infnet_monai.transforms.train2d import slice_validation_transforms
from infnet_monai.utils import atomic_output

__all__ = [
    "predict_probabilities",
    "to_pseudo_label",
    "pseudo_edge",
    "write_pseudo_labels",
    "pseudo_datalist",
]

_EDGE = EdgeTarget(threshold=127.5)


def predict_probabilities(
    network: torch.nn.Module,
    image_files: Sequence[str | os.PathLike],
    image_size: int,
    device: str | torch.device = "cpu",
    batch_size: int = 8,
) -> list[np.ndarray]:
    """Infection probability maps, one float32 (H, W) array in [0, 1] per slice at its own size.

    ``network`` in eval mode must return logits (B, 1, S, S) (Inf-Net's final map); it is left
    in eval mode. Slices are read as 8-bit grayscale like the training slices.
    """
    network.eval()
    items = [{"image": str(f)} for f in image_files]
    sizes = iter([Image.open(f).size for f in image_files])  # (W, H) per slice
    loader = DataLoader(Dataset(items, slice_validation_transforms(image_size)), batch_size=batch_size)
    probs: list[np.ndarray] = []
    with torch.no_grad():
        for batch in loader:
            logits = network(batch["image"].to(device))
            if not isinstance(logits, torch.Tensor) or logits.shape[1] != 1:
                raise ValueError("the network must return (B, 1, H, W) logits in eval mode (Inf-Net's final map)")
            for logit in logits:
                # training slices are read row-major (H, W), as displayed and as the volumes' slices
                width, height = next(sizes)
                up = F.interpolate(logit[None].float(), size=(height, width), mode="bilinear", align_corners=False)
                probs.append(torch.sigmoid(up)[0, 0].cpu().numpy().astype(np.float32))
    return probs


def to_pseudo_label(prob: np.ndarray, normalize: bool = True) -> np.ndarray:
    """Probability map -> uint8 pseudo label: ``round(255 * p')`` with ``p'`` the per-slice
    min-max normalised map (``normalize``) or ``p`` itself. A constant map gives all zeros."""
    p = np.asarray(prob, dtype=np.float64)
    if normalize:
        lo, hi = p.min(), p.max()
        p = (p - lo) / (hi - lo) if hi > lo else np.zeros_like(p)
    return np.rint(np.clip(p, 0.0, 1.0) * 255.0).astype(np.uint8)


def pseudo_edge(label: np.ndarray) -> np.ndarray:
    """Edge band (uint8 {0, 255}, same (H, W)) of a 0-255 pseudo label thresholded at 127.5."""
    return (np.asarray(_EDGE(np.asarray(label)[None]))[0] * 255).astype(np.uint8)


def pseudo_datalist(out_dir: str | os.PathLike, image_files: Sequence[str | os.PathLike]) -> list[dict[str, str]]:
    """Training items ``{"image", "label", "edge"}`` of slices written by :func:`write_pseudo_labels`."""
    out_dir = Path(out_dir)
    items = []
    for f in image_files:
        name = Path(f).name
        stem = Path(name).stem
        items.append(
            {
                "image": str(out_dir / "Imgs" / name),
                "label": str(out_dir / "GT" / f"{stem}.png"),
                "edge": str(out_dir / "Edge" / f"{stem}.png"),
            }
        )
    return items


def write_pseudo_labels(
    out_dir: str | os.PathLike,
    image_files: Sequence[str | os.PathLike],
    labels: Sequence[np.ndarray],
) -> list[dict[str, str]]:
    """Write each slice with its pseudo label and edge under ``out_dir``; returns their items.

    Labels must be uint8 (H, W) of their slice's size (checked for all before anything is
    written). Every file is written atomically (temporary sibling + rename), so an interruption
    leaves complete files only; existing pseudo labels of the same names are replaced.
    """
    if len(image_files) != len(labels):
        raise ValueError(f"{len(image_files)} images but {len(labels)} pseudo labels")
    for src, label in zip(image_files, labels):
        width, height = Image.open(src).size
        if label.shape != (height, width) or label.dtype != np.uint8:
            raise ValueError(
                f"{src}: pseudo label must be uint8 of shape {(height, width)}, got {label.dtype} {label.shape}"
            )
    items = pseudo_datalist(out_dir, image_files)
    for src, label, item in zip(image_files, labels, items):
        if Path(src).resolve() != Path(item["image"]).resolve():
            with atomic_output(item["image"]) as tmp:
                shutil.copyfile(src, tmp)
        for key, array in (("label", label), ("edge", pseudo_edge(label))):
            with atomic_output(item[key]) as tmp:
                Image.fromarray(array).save(tmp, format="PNG")
    return items
