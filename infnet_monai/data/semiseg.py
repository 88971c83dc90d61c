"""Datalists for COVID-SemiSeg-style 2D slice folders.

Layout under ``root``: ``Imgs/*.jpg`` (8-bit slices), ``GT/*.png`` (masks: {0, 255} or soft
0-255 pseudo labels, or a 0/1/2 palette for background/GGO/consolidation), optionally
``Edge/*.png`` (edge targets) and ``Prior/*.png`` (infection prior of the multi-class stage).
Files pair by stem (``12.jpg`` <-> ``12.png``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from monai.data import partition_dataset

from .pairing import index_by_key, unpaired_message

__all__ = ["IMAGE_SUFFIXES", "attach_maps", "semiseg_datalist", "split_datalist"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")


def _image_stem(path: Path) -> str | None:
    return path.stem if path.suffix.lower() in IMAGE_SUFFIXES else None


def semiseg_datalist(
    root: str | os.PathLike,
    image_dir: str = "Imgs",
    label_dir: str | None = "GT",
    edge_dir: str | None = "Edge",
    prior_dir: str | None = "Prior",
    require_labels: bool = True,
) -> list[dict[str, str]]:
    """List ``{"image", "label"[, "edge"][, "prior"]}`` file dicts, one per image, sorted by name.

    Optional folders (``edge_dir``, ``prior_dir``, and ``label_dir`` when ``require_labels`` is
    False) are used when they exist; a folder that exists must cover every labelled image.
    With ``require_labels=False`` images without a mask are listed with their image only (the
    unlabelled pool of semi-supervised training).

    Raises:
        FileNotFoundError: ``root`` or ``root/image_dir`` (or a required ``label_dir``) is missing.
        ValueError: no images, a mask/edge/prior is missing for an image, or a mask has no image.
    """
    root = Path(root)
    images_path = root / image_dir
    if not images_path.is_dir():
        raise FileNotFoundError(f"{images_path}: image folder not found; point dataset_dir at a folder with {image_dir}/")
    images = index_by_key(images_path, _image_stem)
    if not images:
        raise ValueError(f"{images_path}: no images ({', '.join(IMAGE_SUFFIXES)}) found")
    datalist = [{"image": str(path)} for path in images.values()]
    labelled = set(images)

    if label_dir is not None:
        label_path = root / label_dir
        if label_path.is_dir():
            labels = index_by_key(label_path, _image_stem)
            orphans = sorted(set(labels) - set(images))
            if orphans:
                raise ValueError(unpaired_message(images_path, orphans, "mask"))
            missing = sorted(set(images) - set(labels))
            if missing and require_labels:
                raise ValueError(unpaired_message(label_path, missing, "image"))
            labelled = set(labels)
            for item in datalist:
                stem = Path(item["image"]).stem
                if stem in labels:
                    item["label"] = str(labels[stem])
        elif require_labels:
            raise FileNotFoundError(f"{label_path}: mask folder not found; add {label_dir}/ or set require_labels=False")

    for key, folder in (("edge", edge_dir), ("prior", prior_dir)):
        if folder is not None and (root / folder).is_dir():
            _attach(datalist, root / folder, key, labelled)
    return datalist


def attach_maps(datalist: Sequence[dict], folder: str | os.PathLike, key: str = "prior") -> list[dict]:
    """Copies of ``datalist``'s items with ``key`` = the map in ``folder`` of the same stem as
    the item's image (e.g. infection priors made by ``infnet-monai predict-slices``).

    Raises:
        ValueError: a labelled item (every item, when none has a label) has no map in ``folder``.
    """
    items = [dict(item) for item in datalist]
    stems = {Path(item["image"]).stem for item in items if "label" in item} or {Path(i["image"]).stem for i in items}
    return _attach(items, Path(folder), key, stems)


def _attach(datalist: list[dict], folder: Path, key: str, stems: set[str]) -> list[dict]:
    found = index_by_key(folder, _image_stem)
    missing = sorted(stems - set(found))
    if missing:
        raise ValueError(unpaired_message(folder, missing, "image"))
    for item in datalist:
        stem = Path(item["image"]).stem
        if stem in stems:
            item[key] = str(found[stem])
    return datalist


def split_datalist(
    datalist: Sequence[dict], val_fraction: float = 0.1, seed: int = 0
) -> tuple[list[dict], list[dict]]:
    """Shuffle (seeded) and split into (train, validation); validation gets at least one item.

    ``val_fraction`` in [0, 1): 0 gives an empty validation list.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    n = len(datalist)
    n_val = 0 if val_fraction == 0 else min(n - 1, max(1, round(val_fraction * n)))
    if n_val == 0:
        return list(datalist), []
    train, val = partition_dataset(list(datalist), ratios=[n - n_val, n_val], shuffle=True, seed=seed)
    return train, val
