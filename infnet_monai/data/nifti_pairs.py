"""Datalists for 3D CT volume / infection-label pairs stored as NIfTI.

Accepted layouts: a folder with ``imagesTr/`` and ``labelsTr/`` (Medical Segmentation Decathlon
style), or any image folder plus a label folder. Files pair by name without the ``.nii``/
``.nii.gz`` suffix; an nnU-Net channel suffix ``_0000`` on an image name is ignored.
Training on such pairs samples axial slices after the shared CT chain, see
:func:`infnet_monai.transforms.train2d.volume_slice_transforms`.
"""

from __future__ import annotations

import os
from pathlib import Path

from infnet_monai.naming import strip_suffix

from .pairing import index_by_key, unpaired_message

__all__ = ["NIFTI_SUFFIXES", "nifti_pairs_datalist", "volume_stem"]

NIFTI_SUFFIXES = (".nii.gz", ".nii")


def volume_stem(path: str | os.PathLike) -> str | None:
    """Name without the NIfTI suffix and the nnU-Net ``_0000`` channel tag; None if not NIfTI."""
    name = Path(path).name
    stem = None if name.startswith(".") else strip_suffix(name, NIFTI_SUFFIXES)
    return stem[: -len("_0000")] if stem is not None and stem.endswith("_0000") else stem


def _volumes(folder: Path) -> dict[str, Path]:
    found = index_by_key(folder, volume_stem)
    if not found:
        raise ValueError(f"{folder}: no .nii/.nii.gz volumes found")
    return found


def nifti_pairs_datalist(
    root: str | os.PathLike | None = None,
    images_dir: str | os.PathLike | None = None,
    labels_dir: str | os.PathLike | None = None,
) -> list[dict[str, str]]:
    """List ``{"image", "label"}`` NIfTI path dicts sorted by name.

    Give ``root`` (with ``imagesTr``/``labelsTr``), or ``images_dir`` and ``labels_dir``
    (relative ones resolve against ``root`` when given).

    Raises:
        FileNotFoundError: a folder is missing.
        ValueError: no volumes, or an image without a label (or the reverse).
    """
    if root is None and (images_dir is None or labels_dir is None):
        raise ValueError("give a dataset folder with imagesTr/ and labelsTr/, or both images_dir and labels_dir")
    base = Path(root) if root is not None else Path()
    images_path = base / (images_dir if images_dir is not None else "imagesTr")
    labels_path = base / (labels_dir if labels_dir is not None else "labelsTr")
    images, labels = _volumes(images_path), _volumes(labels_path)
    for folder, missing, what in (
        (labels_path, set(images) - set(labels), "image"),
        (images_path, set(labels) - set(images), "label"),
    ):
        if missing:
            raise ValueError(unpaired_message(folder, sorted(missing), what))
    return [{"image": str(images[stem]), "label": str(labels[stem])} for stem in sorted(images)]
