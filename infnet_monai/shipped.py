"""The shipped model: its bundle, its weights file and the slice size it runs at.

The trained Inf-Net ships in the repository's bundle
(``bundles/covid19_lung_infection_ct_segmentation/models/model.pt``, fp16 weights loaded as
fp32); an editable install (``pip install -e .``) finds it beside the package. A model runs at
the in-plane size it was trained at: a bundle records it in ``configs/metadata.json``
(``network_data_format.inputs.image.spatial_shape``), written there with the weights by
:func:`ship_model`. Weights outside a bundle run at the shipped bundle's size, like the bundle's
own inference config; the authors' converted checkpoints need ``--image-size 352``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from infnet_monai.utils import atomic_output

__all__ = [
    "BUNDLE_DIR",
    "AUTHORS_SIZE",
    "PATTERN_WEIGHTS",
    "default_weights",
    "default_pattern_weights",
    "bundle_of",
    "bundle_network_size",
    "network_size",
    "slice_protocol_dice",
    "best_by_slice_protocol",
    "ship_model",
]

BUNDLE_DIR = Path(__file__).resolve().parents[1] / "bundles" / "covid19_lung_infection_ct_segmentation"
AUTHORS_SIZE = 352  # the authors' training and test size (pixels)
PATTERN_WEIGHTS = "multiclass_model.pt"  # the multi-class UNet's file in a bundle's models/


def default_weights() -> Path | None:
    """The shipped model's weights file, or None when the bundle is not beside the package
    (a non-editable install)."""
    path = BUNDLE_DIR / "models" / "model.pt"
    return path if path.is_file() else None


def default_pattern_weights() -> Path | None:
    """The shipped multi-class (infection patterns) UNet's weights file
    (``models/multiclass_model.pt``, trained on priors of the shipped Inf-Net), or None."""
    path = BUNDLE_DIR / "models" / PATTERN_WEIGHTS
    return path if path.is_file() else None


def bundle_of(weights: str | Path) -> Path | None:
    """The bundle folder holding ``weights`` as ``<bundle>/models/<file>``, or None."""
    bundle = Path(weights).resolve().parent.parent
    return bundle if (bundle / "configs" / "metadata.json").is_file() else None


def bundle_network_size(bundle: str | Path) -> int:
    """The input ``spatial_shape`` side of the bundle's ``configs/metadata.json`` (pixels)."""
    meta_path = Path(bundle) / "configs" / "metadata.json"
    try:
        shape = json.loads(meta_path.read_text())["network_data_format"]["inputs"]["image"]["spatial_shape"]
        size = int(shape[0])
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise ValueError(f"{meta_path}: no network_data_format.inputs.image.spatial_shape [S, S]; add it") from exc
    if size % 32:
        raise ValueError(f"{meta_path}: spatial_shape {shape} is not a multiple of 32; Inf-Net needs one")
    return size


def network_size(weights: str | Path | None = None) -> int:
    """In-plane size (pixels) the model in ``weights`` runs at: the size recorded by the bundle
    holding it (``<bundle>/models/<file>``), else the shipped bundle's; :data:`AUTHORS_SIZE`
    when neither is there."""
    bundle = bundle_of(weights) if weights else None
    if bundle is None:
        bundle = BUNDLE_DIR if (BUNDLE_DIR / "configs" / "metadata.json").is_file() else None
    return AUTHORS_SIZE if bundle is None else bundle_network_size(bundle)


def slice_protocol_dice(weights: str | Path, datalist: Sequence[dict], image_size: int) -> float:
    """Mean Dice over the paper's 256 thresholds (:mod:`infnet_monai.metrics.slices`) of the model
    in ``weights`` on the slices of ``datalist`` (items ``image``, ``label`` paths), each map
    taken to its image's size as ``infnet-monai predict-slices`` does (without 8-bit rounding)."""
    from infnet_monai.runtime import load_network
    from infnet_monai.metrics.slices import read_ground_truth, slice_scores, summarise_slice_scores
    from infnet_monai.predict_slices import probability_map, slice_probabilities

    network = load_network(weights, "cpu", compile=False, size=image_size)
    labels = {str(Path(item["image"])): item["label"] for item in datalist}
    scores = []
    for file, logits in slice_probabilities(network, list(labels), image_size):
        gt = read_ground_truth(labels[str(file)])
        scores.append(slice_scores(probability_map(logits, gt.shape).double().numpy(), gt))
    return float(summarise_slice_scores(scores)["dice"]["mean"])


def best_by_slice_protocol(candidates: Sequence[str | Path], datalist: Sequence[dict], image_size: int) -> str:
    """The candidate weights file with the highest :func:`slice_protocol_dice` on ``datalist``
    (the first one on ties); prints each candidate's figure."""
    dice = {str(c): slice_protocol_dice(c, datalist, image_size) for c in candidates}
    for path, value in dice.items():
        print(f"{path}: mean Dice {value:.4f} over the paper's thresholds on {len(datalist)} validation slices")
    return max(dice, key=lambda path: (dice[path], -list(dice).index(path)))


def ship_model(checkpoint: str | Path, bundle: str | Path, image_size: int, name: str = "model.pt") -> str:
    """Make the model in ``checkpoint`` the bundle's: ``<bundle>/models/<name>`` in fp16
    (:func:`~infnet_monai.networks.convert.convert_checkpoint`) and ``image_size`` as the input
    and output ``spatial_shape`` of ``<bundle>/configs/metadata.json``; both written atomically.
    Returns a one-line summary."""
    from infnet_monai.networks.convert import convert_checkpoint

    if image_size % 32:
        raise ValueError(f"image_size must be a multiple of 32, got {image_size}")
    bundle = Path(bundle)
    meta_path = bundle / "configs" / "metadata.json"
    meta = json.loads(meta_path.read_text())
    formats = meta["network_data_format"]
    for part in ("inputs", "outputs"):
        for entry in formats.get(part, {}).values():
            entry["spatial_shape"] = [int(image_size), int(image_size)]
    summary = convert_checkpoint(checkpoint, bundle / "models" / name, overwrite=True, half=True)
    with atomic_output(meta_path) as tmp:
        tmp.write_text(json.dumps(meta, indent=4, ensure_ascii=False) + "\n", encoding="utf-8")
    return f"{summary}; fp16; {image_size} px recorded in {meta_path}"
