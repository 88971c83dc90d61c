"""``infnet-monai predict-slices``: the network on 2D slice images, as the authors' test script.

Each JPG/PNG slice (any size, 8-bit gray or colour) is loaded like the training slices
(:func:`~infnet_monai.transforms.train2d.slice_validation_transforms`: [0, 1], resized to the
model's size, 3 ImageNet-normalised channels), the final map's logits are resized back to the
image's size (bilinear, ``align_corners=False``), passed through a sigmoid and written as an
8-bit PNG ``<stem>.png``: the probability × 255, or min-max normalised per image as the authors'
``MyTest_LungInf.py`` writes it (``normalize=True``). ``infnet-monai evaluate --mode slices``
then scores the maps by the paper's protocol (which min-max normalises every map itself).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from infnet_monai.data.semiseg import IMAGE_SUFFIXES
from infnet_monai.runtime import default_device, load_network, load_pattern_network, require_weights
from infnet_monai.labels import class_folder
from infnet_monai.shipped import network_size
from infnet_monai.transforms.train2d import slice_validation_transforms
from infnet_monai.utils import atomic_output

__all__ = [
    "slice_images",
    "slice_probabilities",
    "probability_map",
    "probability_png",
    "predict_slices",
    "class_pngs",
    "infection_priors",
]


def slice_images(inputs: str | os.PathLike) -> list[Path]:
    """The image files to predict: a folder's files with an image suffix (sorted), or one file.

    Raises ``FileNotFoundError`` for a missing path and ``ValueError`` for a folder without
    images or a file that is not a readable image (naming it).
    """
    path = Path(inputs)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise ValueError(f"{path}: no slice images ({', '.join(IMAGE_SUFFIXES)}) in this folder")
    else:
        files = [path]
    for file in files:
        try:
            with Image.open(file) as img:
                img.verify()
        except Exception as exc:  # noqa: BLE001 - any decoder error means the same to the user
            raise ValueError(
                f"{file}: not a readable image ({exc.__class__.__name__}); give JPG/PNG slices or remove the file"
            ) from exc
    return files


def slice_probabilities(
    network: torch.nn.Module, files: Sequence[str | os.PathLike], image_size: int, device: str | torch.device = "cpu"
) -> Iterator[tuple[Path, torch.Tensor]]:
    """(file, logits (1, 1, S, S)) of ``network`` (eval mode) for each slice image, run at
    ``image_size`` as the training slices are prepared; :func:`probability_png` takes them to
    the image's size."""
    transform = slice_validation_transforms(image_size=image_size)
    for file in files:
        image = transform({"image": str(file)})["image"]
        with torch.inference_mode():
            yield Path(file), network(torch.as_tensor(image)[None].to(device))


def _resized_logits(logits: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """``logits`` (1, C, h, w) at ``shape`` = (H, W): bilinear, ``align_corners=False``, as the
    authors' test script resizes its maps."""
    return F.interpolate(logits.float(), size=tuple(shape), mode="bilinear", align_corners=False)


def probability_map(logits: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Probabilities (H, W) of ``logits`` (1, 1, h, w) at ``shape`` = (H, W): the logits resized
    (:func:`_resized_logits`), then the sigmoid."""
    return torch.sigmoid(_resized_logits(logits, shape))[0, 0]


def probability_png(logits: torch.Tensor, shape: Sequence[int], normalize: bool = False) -> np.ndarray:
    """8-bit map (H, W) of ``logits`` (1, 1, h, w) at ``shape`` = (H, W): :func:`probability_map`,
    optional min-max normalisation (a constant map gives zeros), × 255 rounded."""
    prob = probability_map(logits, shape)
    if normalize:
        low, high = prob.min(), prob.max()
        prob = (prob - low) / (high - low) if high > low else torch.zeros_like(prob)
    return (prob.clamp(0, 1) * 255.0).round().to(torch.uint8).cpu().numpy()


def predict_slices(
    inputs: str | os.PathLike,
    output_dir: str | os.PathLike,
    weights: str | os.PathLike | None = None,
    image_size: int | None = None,
    device: str | None = None,
    normalize: bool = False,
    overwrite: bool = False,
    classes: str = "infection",
    pattern_weights: str | os.PathLike | None = None,
) -> list[Path]:
    """Write ``output_dir/<stem>.png`` for every slice image in ``inputs`` (folder or file).

    ``weights``: None runs the shipped model; ``image_size``: the network input size (None: the
    model's own, 352 in the authors' script). ``classes="patterns"``: the infection-pattern
    network (Inf-Net prior + the multi-class UNet of ``pattern_weights``, None: the shipped one)
    writes ``GGO/<stem>.png`` and ``Consolidation/<stem>.png`` (8-bit class probability x 255)
    and ``labels/<stem>.png`` (class indices 0/1/2). Every input is checked before anything is
    written; existing maps are kept unless ``overwrite``. Returns the written paths.
    """
    files = slice_images(inputs)
    out = Path(output_dir)
    folders = [""] if classes == "infection" else [class_folder(1), class_folder(2), "labels"]
    if classes not in ("infection", "patterns"):
        raise ValueError(f"classes must be infection or patterns, got {classes!r}")
    targets = [[out / folder / f"{f.stem}.png" for folder in folders] for f in files]
    flat = [t for group in targets for t in group]
    clash = [t for t in flat if t.exists() and not overwrite]
    if clash:
        raise FileExistsError(f"{clash[0]}: exists ({len(clash)} maps in all); pass --overwrite to replace them")
    inputs_resolved = {f.resolve() for f in files}
    if any(t.resolve() in inputs_resolved for t in flat):
        raise ValueError(f"{out}: a map would overwrite an input image; choose another output folder")
    weights = require_weights(weights)
    size = image_size or network_size(weights)
    if classes == "infection":
        network = load_network(weights, default_device(device), compile=False, size=size)
        _write_maps(files, targets, network, size, device, lambda logits, shape: [probability_png(logits, shape, normalize)])
    else:
        network = load_pattern_network(weights, pattern_weights, default_device(device), size)
        _write_maps(files, targets, network, size, device, class_pngs)
    return flat


def class_pngs(logits: torch.Tensor, shape: Sequence[int]) -> list[np.ndarray]:
    """8-bit maps (H, W) of class logits (1, 3, h, w) at ``shape``: the GGO and consolidation
    probabilities x 255 (softmax after a bilinear resize of the logits) and the class indices."""
    prob = torch.softmax(_resized_logits(logits, shape), 1)[0]
    maps = [(prob[c].clamp(0, 1) * 255.0).round().to(torch.uint8).cpu().numpy() for c in (1, 2)]
    return maps + [prob.argmax(0).to(torch.uint8).cpu().numpy()]


def infection_priors(
    images: str | os.PathLike,
    cache_root: str | os.PathLike,
    weights: str | os.PathLike | None = None,
    image_size: int | None = None,
    device: str | None = None,
) -> Path:
    """The folder of the infection model's maps for the slice images in ``images`` (the prior
    of the multi-class stage): ``<cache_root>/<first 12 hex digits of the weights' SHA-256>/
    <stem>.png``, 8-bit probability × 255 at each image's size. Maps already there are reused
    (they depend only on the weights and the image); missing ones are written."""
    from infnet_monai.utils import file_digest

    weights = require_weights(weights)
    files = slice_images(images)
    folder = Path(cache_root) / file_digest(weights)[:12]
    todo = [f for f in files if not (folder / f"{f.stem}.png").is_file()]
    if todo:
        size = image_size or network_size(weights)
        network = load_network(weights, default_device(device), compile=False, size=size)
        _write_maps(todo, [[folder / f"{f.stem}.png"] for f in todo], network, size, device,
                    lambda logits, shape: [probability_png(logits, shape)])
    return folder


def _write_maps(files: Sequence[Path], targets: Sequence[Sequence[Path]], network, size: int, device, to_pngs) -> None:
    """``network`` on ``files``; ``to_pngs(logits, (H, W))`` gives each file's 8-bit maps, each
    written atomically to its target."""
    for (file, logits), paths in zip(slice_probabilities(network, files, size, default_device(device)), targets):
        with Image.open(file) as img:
            shape = (img.height, img.width)
        for path, array in zip(paths, to_pngs(logits, shape)):
            with atomic_output(path, overwrite=True) as tmp:
                Image.fromarray(array).save(tmp, format="PNG")
