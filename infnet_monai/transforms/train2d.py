"""Training/validation transforms for 2D CT slices (COVID-SemiSeg-style JPEG/PNG folders).

Chain per item of :func:`infnet_monai.data.semiseg_datalist`:
load (grayscale) -> channel first -> image, masks, edge and prior from 0-255 to [0, 1] ->
edge target from the mask when no ``Edge`` image is given -> bilinear resize to
``image_size`` x ``image_size`` (masks stay soft, as in the authors' training) -> optional
flips/rotations -> the shared network input (3 channels, ImageNet normalisation) -> for
training the label becomes (2, H, W): mask and edge, the contract of
:class:`infnet_monai.losses.DeepSupervisionLoss`.

Binary masks are read as 0-255 (``{0, 255}`` or soft pseudo labels); multi-class masks are class
indices (0 background, 1 ground-glass opacity, 2 consolidation).
"""

from __future__ import annotations

from monai.data import PILReader
from monai.transforms import (
    Compose,
    ConcatItemsd,
    DeleteItemsd,
    EnsureChannelFirstd,
    EnsureTyped,
    LoadImaged,
    MapTransform,
    RandFlipd,
    RandRotate90d,
    Resized,
    ScaleIntensityRanged,
)

from .chain import network_input_transforms
from .edge import EdgeTargetd

__all__ = [
    "TRAIN_SIZE",
    "to_single_channel",
    "slice_training_transforms",
    "slice_validation_transforms",
    "multiclass_slice_transforms",
]

TRAIN_SIZE = 352  # Inf-Net's training size (pixels)
_IMAGE, _LABEL, _EDGE, _PRIOR = "image", "label", "edge", "prior"


def to_single_channel(img):
    """PIL converter: keep 8-bit grayscale ('L') and palette ('P', class indices); others to 'L'."""
    return img if img.mode in ("L", "P") else img.convert("L")


def _augmentations(keys: list[str]) -> list[MapTransform]:
    return [
        RandFlipd(keys, prob=0.5, spatial_axis=0, allow_missing_keys=True),
        RandFlipd(keys, prob=0.5, spatial_axis=1, allow_missing_keys=True),
        RandRotate90d(keys, prob=0.5, max_k=3, allow_missing_keys=True),
    ]


def _load_and_scale(keys: list[str], scaled: list[str]) -> list[MapTransform]:
    """Load single-channel slices channel-first; map ``scaled`` keys from 0-255 to [0, 1]."""
    return [
        LoadImaged(keys, reader=PILReader(converter=to_single_channel), image_only=True, allow_missing_keys=True),
        EnsureChannelFirstd(keys, channel_dim="no_channel", allow_missing_keys=True),
        ScaleIntensityRanged(scaled, a_min=0.0, a_max=255.0, b_min=0.0, b_max=1.0, allow_missing_keys=True),
    ]


def _binary_transforms(image_size: int, augment: bool, with_edge: bool) -> Compose:
    keys = [_IMAGE, _LABEL, _EDGE]
    transforms = _load_and_scale(keys, keys)
    if with_edge:
        transforms.append(EdgeTargetd(_LABEL, edge_keys=_EDGE, allow_missing_keys=True))
    else:
        transforms.append(DeleteItemsd(_EDGE))
    transforms.append(Resized(keys, spatial_size=(image_size, image_size), mode="bilinear", allow_missing_keys=True))
    if augment:
        transforms += _augmentations(keys)
    transforms.append(network_input_transforms([_IMAGE]))
    if with_edge:
        transforms += [ConcatItemsd([_LABEL, _EDGE], name=_LABEL, allow_missing_keys=True), DeleteItemsd(_EDGE)]
    transforms.append(EnsureTyped([_IMAGE, _LABEL], dtype="float32", track_meta=False, allow_missing_keys=True))
    return Compose(transforms)


def slice_training_transforms(image_size: int = TRAIN_SIZE, augment: bool = False) -> Compose:
    """Binary Inf-Net training: ``image`` (3, S, S) normalised, ``label`` (2, S, S) soft mask + edge.

    Items: ``image``, ``label`` and optional ``edge`` file paths; a missing edge is computed from
    the mask (:class:`~infnet_monai.transforms.edge.EdgeTargetd`) before resizing, like the
    published ``Edge`` images. ``augment`` adds random flips and 90-degree rotations (the authors
    used none besides multi-scale training).
    """
    return _binary_transforms(image_size, augment, with_edge=True)


def slice_validation_transforms(image_size: int = TRAIN_SIZE) -> Compose:
    """Binary validation/inference: ``image`` (3, S, S) normalised, ``label`` (1, S, S) in [0, 1] if given."""
    return _binary_transforms(image_size, augment=False, with_edge=False)


def multiclass_slice_transforms(image_size: int = TRAIN_SIZE, augment: bool = False) -> Compose:
    """Inf-Net + UNet: ``image`` (6, S, S) = slice (3 ch) + infection prior (3 ch), ``label`` (1, S, S).

    The prior (``Prior/*.png``, 0-255) gets the slice's normalisation, as the authors did; the
    label holds class indices 0/1/2 (nearest-neighbour resize).
    """
    keys = [_IMAGE, _PRIOR, _LABEL]
    transforms = _load_and_scale(keys, [_IMAGE, _PRIOR])
    transforms += [
        Resized([_IMAGE, _PRIOR], spatial_size=(image_size, image_size), mode="bilinear"),
        Resized(_LABEL, spatial_size=(image_size, image_size), mode="nearest", allow_missing_keys=True),
    ]
    if augment:
        transforms += _augmentations(keys)
    transforms += [
        network_input_transforms([_IMAGE, _PRIOR]),
        ConcatItemsd([_IMAGE, _PRIOR], name=_IMAGE),
        DeleteItemsd(_PRIOR),
        EnsureTyped([_IMAGE, _LABEL], dtype="float32", track_meta=False, allow_missing_keys=True),
    ]
    return Compose(transforms)
