"""Training/validation transforms for 2D CT slices: COVID-SemiSeg-style JPEG/PNG folders, and
axial slices sampled from NIfTI CT volumes through the shared CT chain.

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

from typing import Sequence

from monai.data import PILReader
from monai.transforms import (
    AsDiscreted,
    Compose,
    ConcatItemsd,
    DeleteItemsd,
    EnsureChannelFirstd,
    EnsureTyped,
    LabelFilterd,
    LoadImaged,
    MapTransform,
    RandAdjustContrastd,
    RandAffined,
    RandCropByPosNegLabeld,
    RandFlipd,
    RandRotate90d,
    RandScaleIntensityd,
    Resized,
    ScaleIntensityRanged,
    SqueezeDimd,
)

from .chain import DEFAULT_WINDOW_HU, ct_preprocessing, network_input_transforms
from .edge import EdgeTargetd

__all__ = [
    "TRAIN_SIZE",
    "AUGMENTATIONS",
    "to_single_channel",
    "slice_training_transforms",
    "slice_validation_transforms",
    "multiclass_slice_transforms",
    "volume_slice_transforms",
    "volume_validation_transforms",
]

TRAIN_SIZE = 352  # Inf-Net's training size (pixels)
_IMAGE, _LABEL, _EDGE, _PRIOR = "image", "label", "edge", "prior"


def to_single_channel(img):
    """PIL converter: keep 8-bit grayscale ('L') and palette ('P', class indices); others to 'L'."""
    return img if img.mode in ("L", "P") else img.convert("L")


AUGMENTATIONS = ("none", "flips", "ct")


def _augmentations(keys: list[str], augment: bool | str, label_modes: Sequence[str] = ()) -> list[MapTransform]:
    """Random transforms of ``augment`` on (C, H, W) slices with intensities in [0, 1].

    - ``False`` / ``"none"``: none (the authors' recipe, besides multi-scale training);
    - ``True`` / ``"flips"``: flips along both axes and 90-degree rotations;
    - ``"ct"``: the flips and 90-degree rotations above, then rotation within ±10°, zoom
      0.9-1.15 and shifts of 5 % (bilinear; ``label_modes`` gives the interpolation of the keys
      after the first, "nearest" for class indices), and contrast (gamma 0.7-1.5) and intensity
      scale (±10 %) on the image, for the differences in window and export between scanners.
      All eight flips/rotations are needed because COVID-SemiSeg stores its slices transposed
      (spine on the right) or transposed and mirrored (spine on the left), while CT volumes
      reach the network in the radiological display layout (spine at the bottom).
    """
    kind = ("flips" if augment else "none") if isinstance(augment, bool) else augment
    if kind not in AUGMENTATIONS:
        raise ValueError(f"augment must be one of {', '.join(AUGMENTATIONS)} (or true/false), got {augment!r}")
    if kind == "none":
        return []
    flips = [
        RandFlipd(keys, prob=0.5, spatial_axis=0, allow_missing_keys=True),
        RandFlipd(keys, prob=0.5, spatial_axis=1, allow_missing_keys=True),
        RandRotate90d(keys, prob=0.5, max_k=3, allow_missing_keys=True),
    ]
    if kind == "flips":
        return flips
    modes = ["bilinear"] + [label_modes[i] if i < len(label_modes) else "bilinear" for i in range(len(keys) - 1)]
    return flips + [
        RandAffined(
            keys, prob=0.7, rotate_range=0.175, scale_range=(-0.1, 0.15), translate_range=(0.05, 0.05),
            mode=modes, padding_mode="zeros", allow_missing_keys=True,
        ),
        RandAdjustContrastd(_IMAGE, prob=0.5, gamma=(0.7, 1.5)),
        RandScaleIntensityd(_IMAGE, prob=0.5, factors=0.1),
    ]


def _load_and_scale(keys: list[str], scaled: list[str]) -> list[MapTransform]:
    """Load single-channel slices channel-first ``(1, H, W)``, rows first as displayed (a slice
    image in the radiological display layout gets the (row → posterior, column → patient left)
    layout of the CT volumes' axial slices; COVID-SemiSeg's own slices are stored transposed, see
    :func:`_augmentations`); map ``scaled`` keys from 0-255 to [0, 1]."""
    reader = PILReader(converter=to_single_channel, reverse_indexing=False)
    return [
        LoadImaged(keys, reader=reader, image_only=True, allow_missing_keys=True),
        EnsureChannelFirstd(keys, channel_dim="no_channel", allow_missing_keys=True),
        ScaleIntensityRanged(scaled, a_min=0.0, a_max=255.0, b_min=0.0, b_max=1.0, allow_missing_keys=True),
    ]


def _binary_transforms(image_size: int, augment: bool | str, with_edge: bool) -> Compose:
    if with_edge:
        keys = [_IMAGE, _LABEL, _EDGE]
        transforms = _load_and_scale(keys, keys) + [EdgeTargetd(_LABEL, edge_keys=_EDGE, allow_missing_keys=True)]
    else:
        keys = [_IMAGE, _LABEL]
        transforms = [DeleteItemsd(_EDGE)] + _load_and_scale(keys, keys)
    transforms.append(Resized(keys, spatial_size=(image_size, image_size), mode="bilinear", allow_missing_keys=True))
    transforms += _augmentations(keys, augment)
    transforms += network_input_transforms([_IMAGE])
    return Compose(transforms + _training_target(with_edge, compute_edge=False))


def _training_target(with_edge: bool, compute_edge: bool) -> list[MapTransform]:
    """Label (+ edge) -> the loss target; plain float32 tensors for fast collation."""
    tail: list[MapTransform] = []
    if with_edge:
        if compute_edge:
            tail.append(EdgeTargetd(_LABEL, edge_keys=_EDGE, allow_missing_keys=True))
        tail += [ConcatItemsd([_LABEL, _EDGE], name=_LABEL, allow_missing_keys=True), DeleteItemsd(_EDGE)]
    tail.append(EnsureTyped([_IMAGE, _LABEL], dtype="float32", track_meta=False, allow_missing_keys=True))
    return tail


def slice_training_transforms(image_size: int = TRAIN_SIZE, augment: bool | str = False) -> Compose:
    """Binary Inf-Net training: ``image`` (3, S, S) normalised, ``label`` (2, S, S) soft mask + edge.

    Items: ``image``, ``label`` and optional ``edge`` file paths; a missing edge is computed from
    the mask (:class:`~infnet_monai.transforms.edge.EdgeTargetd`) before resizing, like the
    published ``Edge`` images. ``augment``: ``"none"``, ``"flips"`` or ``"ct"`` (see
    :func:`_augmentations`; the authors used none besides multi-scale training).
    """
    return _binary_transforms(image_size, augment, with_edge=True)


def slice_validation_transforms(image_size: int = TRAIN_SIZE) -> Compose:
    """Binary validation/inference: ``image`` (3, S, S) normalised, ``label`` (1, S, S) in [0, 1] if given."""
    return _binary_transforms(image_size, augment=False, with_edge=False)


def multiclass_slice_transforms(image_size: int = TRAIN_SIZE, augment: bool | str = False) -> Compose:
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
    transforms += _augmentations(keys, augment, label_modes=("bilinear", "nearest"))
    transforms += network_input_transforms([_IMAGE, _PRIOR])
    transforms += [ConcatItemsd([_IMAGE, _PRIOR], name=_IMAGE), DeleteItemsd(_PRIOR)]
    return Compose(transforms + _training_target(with_edge=False, compute_edge=False))


def _volume_transforms(
    image_size: int, window: Sequence[float], lung_crop: bool, infection_labels: Sequence[int] | None
) -> list:
    """Shared CT chain on image + label, then the label made binary (infection = 1)."""
    transforms: list = [
        ct_preprocessing(
            image_key=_IMAGE, label_keys=[_LABEL], window=window, lung_crop=lung_crop,
            spatial_size=image_size, keep_lung_mask=False,
        )
    ]
    if infection_labels is not None:
        transforms.append(LabelFilterd(_LABEL, applied_labels=list(infection_labels)))
    transforms.append(AsDiscreted(_LABEL, threshold=0.5))
    return transforms


def volume_slice_transforms(
    image_size: int = TRAIN_SIZE,
    window: Sequence[float] = DEFAULT_WINDOW_HU,
    lung_crop: bool = True,
    infection_labels: Sequence[int] | None = None,
    num_samples: int = 4,
    pos: float = 1.0,
    neg: float = 1.0,
    augment: bool | str = False,
) -> Compose:
    """Binary Inf-Net training on CT volumes: axial slices sampled after the shared CT chain.

    Items: ``image`` and ``label`` paths (NIfTI pairs, see
    :func:`infnet_monai.data.nifti_pairs_datalist`). The volume goes through
    :func:`~infnet_monai.transforms.chain.ct_preprocessing` (the inference chain: HU window, lung
    crop, in-plane resize to ``image_size``), the label becomes binary (values in
    ``infection_labels``, default all non-zero), then ``num_samples`` axial slices are drawn,
    ``pos : neg`` with/without infection. Output per sample: ``image`` (3, S, S), ``label``
    (2, S, S) mask + edge (the edge computed at the network resolution).
    """
    transforms = _volume_transforms(image_size, window, lung_crop, infection_labels)
    transforms += [
        RandCropByPosNegLabeld(
            [_IMAGE, _LABEL], label_key=_LABEL, spatial_size=(-1, -1, 1), pos=pos, neg=neg, num_samples=num_samples
        ),
        SqueezeDimd([_IMAGE, _LABEL], dim=-1),
    ]
    transforms += _augmentations([_IMAGE, _LABEL], augment, label_modes=("nearest",))
    return Compose(transforms + _training_target(with_edge=True, compute_edge=True))


def volume_validation_transforms(
    image_size: int = TRAIN_SIZE,
    window: Sequence[float] = DEFAULT_WINDOW_HU,
    lung_crop: bool = True,
    infection_labels: Sequence[int] | None = None,
) -> Compose:
    """Whole volumes for validation with a ``SliceInferer``: ``image`` (3, S, S, Z), binary ``label`` (1, S, S, Z)."""
    transforms = _volume_transforms(image_size, window, lung_crop, infection_labels)
    transforms.append(EnsureTyped([_IMAGE, _LABEL], dtype="float32", track_meta=False))
    return Compose(transforms)
