"""The shipped model: its bundle, its weights file and the slice size it runs at.

The trained Inf-Net ships in the repository's bundle
(``bundles/covid19_lung_infection_ct_segmentation/models/model.pt``, fp16 weights loaded as
fp32); an editable install (``pip install -e .``) finds it beside the package. A model runs at
the in-plane size it was trained at: a bundle records it in ``configs/metadata.json``
(``network_data_format.inputs.image.spatial_shape``); weights outside a bundle (e.g. the authors'
converted checkpoints) run at the authors' 352 px.
"""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["BUNDLE_DIR", "AUTHORS_SIZE", "default_weights", "bundle_of", "network_size"]

BUNDLE_DIR = Path(__file__).resolve().parents[1] / "bundles" / "covid19_lung_infection_ct_segmentation"
AUTHORS_SIZE = 352  # the authors' training and test size (pixels)


def default_weights() -> Path | None:
    """The shipped model's weights file, or None when the bundle is not beside the package
    (a non-editable install)."""
    path = BUNDLE_DIR / "models" / "model.pt"
    return path if path.is_file() else None


def bundle_of(weights: str | Path) -> Path | None:
    """The bundle folder holding ``weights`` as ``<bundle>/models/<file>``, or None."""
    bundle = Path(weights).resolve().parent.parent
    return bundle if (bundle / "configs" / "metadata.json").is_file() else None


def network_size(weights: str | Path | None = None) -> int:
    """In-plane size (pixels) the model in ``weights`` runs at (None: the shipped model): the
    input ``spatial_shape`` in its bundle's ``metadata.json``, else :data:`AUTHORS_SIZE`."""
    weights = weights or default_weights()
    bundle = bundle_of(weights) if weights else None
    if bundle is None:
        return AUTHORS_SIZE
    meta_path = bundle / "configs" / "metadata.json"
    try:
        shape = json.loads(meta_path.read_text())["network_data_format"]["inputs"]["image"]["spatial_shape"]
        size = int(shape[0])
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise ValueError(f"{meta_path}: no network_data_format.inputs.image.spatial_shape [S, S]; add it") from exc
    if size % 32:
        raise ValueError(f"{meta_path}: spatial_shape {shape} is not a multiple of 32; Inf-Net needs one")
    return size
