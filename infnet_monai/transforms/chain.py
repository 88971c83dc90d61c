"""The one preprocessing and postprocessing chain, shared by the bundle, the CLI and MONAI Label.

CT volume → network (:func:`ct_preprocessing`)::

    load (NIfTI or DICOM series, HU)  → channel first → orient (PLS: each axial slice is the
    radiological display image, rows anterior→posterior, columns patient right→left, as the
    Inf-Net training slices) → lung mask from HU
    → crop to the lungs (in-plane bounding box over all slices + margin; optional) and to the
    slices holding lung ± the lung dilation of the postprocessing (optional; the other slices
    are not inferred and come back as background) → HU window [-1250, 250] → [0, 1]
    → resize in-plane to the model's size (S×S: 256 for the shipped model, 352 for the
    authors' weights; :func:`infnet_monai.shipped.network_size`) keeping the slice count → 3 channels, ImageNet mean/std
    (for the whole volume, or per slice batch in the inferer: :func:`network_input_batch`)

Network output → mask in the input geometry (:func:`ct_postprocessing`)::

    sigmoid → Invertd (probabilities interpolated back through resize, crop and orientation)
    → threshold (0.5) to uint8 → ∩ dilated lung mask (optional; the lung labels are computed
    once on the input grid, only oriented, and oriented back exactly: :class:`UndoOrientationd`)

Every spatial step is a MONAI invertible transform recorded on the MetaTensor, so ``Invertd``
restores the input's exact shape and affine.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import (
    Activationsd,
    AsDiscreted,
    Compose,
    CopyItemsd,
    CropForegroundd,
    DeleteItemsd,
    EnsureTyped,
    Invertd,
    MapTransform,
    NormalizeIntensity,
    NormalizeIntensityd,
    Orientation,
    Orientationd,
    RepeatChannel,
    RepeatChanneld,
    Resized,
    ScaleIntensityRanged,
)

from infnet_monai.defaults import DEFAULT_THRESHOLD, DEFAULT_WINDOW_HU
from infnet_monai.shipped import network_size

from .io import LoadCTd
from .lung import LungMask, LungMaskd, LungRegion, RestrictToLungd

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "DEFAULT_WINDOW_HU",
    "LUNG_DILATION_MM",
    "CLASS_CHOICES",
    "SLICE_AXCODES",
    "network_input_transforms",
    "network_input_batch",
    "ct_preprocessing",
    "ct_postprocessing",
    "UndoOrientationd",
    "ct_lung_labels",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Infection outside the lung mask dilated by this much is dropped (mm); slices farther than this
# from every lung slice are therefore not inferred.
LUNG_DILATION_MM = 5.0
# what a volume's mask holds: infection (0/1) or infection patterns (0/1 GGO/2 consolidation)
CLASS_CHOICES = ("infection", "patterns")
# Orientation of the network's array axes: (row → Posterior, column → patient Left, slice →
# Superior), i.e. every axial slice is the image as radiologists display it.
SLICE_AXCODES = "PLS"


def _network_input_args() -> tuple[dict, dict]:
    """Arguments of the two steps of the network input: repeat, then ImageNet normalisation."""
    return (
        dict(repeats=3),
        dict(subtrahend=np.array(IMAGENET_MEAN), divisor=np.array(IMAGENET_STD), channel_wise=True),
    )


def network_input_transforms(keys: str | Sequence[str]) -> list[MapTransform]:
    """[0, 1] single-channel image ``(1, *spatial)`` → Inf-Net input ``(3, *spatial)``: the
    grey channel repeated and normalised with the ImageNet mean/std, as in the authors' training."""
    repeat, normalize = _network_input_args()
    return [RepeatChanneld(keys=keys, **repeat), NormalizeIntensityd(keys=keys, **normalize)]


def network_input_batch(batch: torch.Tensor) -> torch.Tensor:
    """:func:`network_input_transforms` applied to a batch of slices ``(B, 1, H, W)`` in [0, 1]
    → ``(B, 3, H, W)``, with the same MONAI transforms, so the values are the same as when the
    whole volume is converted; a ``(B, 3, H, W)`` batch is network input already and returned.
    The result is a plain tensor (no MetaTensor bookkeeping inside the network)."""
    if isinstance(batch, MetaTensor):
        batch = batch.as_tensor()
    if batch.shape[1] == 3:
        return batch
    if batch.shape[1] != 1:
        raise ValueError(f"expected slices (B, 1, H, W) in [0, 1] or network input (B, 3, H, W), got {tuple(batch.shape)}")
    repeat, normalize = _network_input_args()
    channels_first = RepeatChannel(**repeat)(batch.transpose(0, 1))  # (3, B, H, W)
    out = NormalizeIntensity(**normalize)(channels_first).transpose(0, 1).contiguous()
    return out.as_tensor() if isinstance(out, MetaTensor) else out  # MONAI transforms may wrap it


def ct_preprocessing(
    image_key: str = "image",
    label_keys: Sequence[str] = (),
    window: Sequence[float] = DEFAULT_WINDOW_HU,
    lung_crop: bool = True,
    crop_margin: int = 10,
    slice_crop: bool = True,
    slice_margin_mm: float = LUNG_DILATION_MM,
    spatial_size: int | None = None,
    series_uid: str | None = None,
    lung_key: str = "lung",
    keep_lung_mask: bool = True,
    load: bool = True,
    network_input: bool = True,
) -> Compose:
    """CT volume (file or DICOM folder path under ``image_key``) → Inf-Net input ``(3, S, S, Z)``.

    Args:
        label_keys: optional label volumes resampled alongside (nearest neighbour), e.g. for
            training on NIfTI pairs.
        window: HU window (low, high) mapped to [0, 1] with clipping.
        lung_crop: crop in-plane to the lung bounding box (over all slices) before resizing.
        crop_margin: margin of the lung box, in voxels of the input grid.
        slice_crop: keep only the slices holding lung ± ``slice_margin_mm`` (the others are not
            inferred; ``Invertd`` pads them back as background). With ``slice_margin_mm`` at
            least the postprocessing's ``lung_dilation_mm``, masks restricted to the lung are
            the same as without the slice crop.
        spatial_size: in-plane size of the network input (multiple of 32); None: the shipped
            model's (:func:`infnet_monai.shipped.network_size`).
        series_uid: DICOM series to read when a folder holds several.
        keep_lung_mask: keep the lung labels (uint8, the input grid oriented, never cropped or
            resized) under ``lung_key`` for restricting the infection mask and for reports;
            otherwise they are dropped after the crop.
        load: include the loader (False when the caller provides loaded MetaTensors).
        network_input: end with the 3-channel ImageNet-normalised network input; False stops at
            the [0, 1] single channel ``(1, S, S, Z)``, a third of the memory, and
            :func:`infnet_monai.inferers.slice_inferer` converts each slice batch with
            :func:`network_input_batch` (same values; the CLI and the bundle do this).

    Output: ``image_key`` ``(3 or 1, spatial_size, spatial_size, Z)`` float32 MetaTensor whose
    ``applied_operations`` let ``Invertd`` return to the input grid.
    """
    if spatial_size is None:
        spatial_size = network_size()
    if spatial_size % 32:
        raise ValueError(f"spatial_size must be a multiple of 32 for Inf-Net, got {spatial_size}")
    low, high = (float(v) for v in window)
    if not low < high:
        raise ValueError(f"HU window must be (low, high) with low < high, got {tuple(window)}")
    label_keys = list(label_keys)
    spatial_keys = [image_key] + label_keys
    xforms: list = []
    if load:
        xforms.append(LoadCTd(keys=image_key, series_uid=series_uid, image_only=True, ensure_channel_first=True))
        if label_keys:  # label maps are not in HU
            xforms.append(LoadCTd(keys=label_keys, image_only=True, ensure_channel_first=True, check_hu=False))
    xforms += [
        EnsureTyped(keys=spatial_keys, dtype=torch.float32, track_meta=True),
        Orientationd(keys=spatial_keys, axcodes=SLICE_AXCODES, labels=None),
    ]
    use_lung = lung_crop or slice_crop or keep_lung_mask
    if use_lung:
        xforms.append(LungMaskd(keys=image_key, lung_key=lung_key))
    # the lung labels stay on the oriented input grid (the crop reads them, nothing resizes them):
    # the postprocessing undoes the orientation alone, exactly (UndoOrientationd)
    nearest_keys = label_keys
    if lung_crop or slice_crop:
        xforms.append(
            CropForegroundd(
                keys=[image_key] + nearest_keys, source_key=lung_key,
                select_fn=LungRegion(inplane=lung_crop, slices=slice_crop, slice_margin_mm=slice_margin_mm),
                margin=(crop_margin, crop_margin, 0) if lung_crop else 0, allow_smaller=True,
            )
        )
    if use_lung and not keep_lung_mask:
        xforms.append(DeleteItemsd(keys=lung_key))
    # windowing is voxel-wise, so after the crop it gives the same values on less data
    xforms.append(ScaleIntensityRanged(keys=image_key, a_min=low, a_max=high, b_min=0.0, b_max=1.0, clip=True))
    xforms.append(Resized(keys=image_key, spatial_size=(spatial_size, spatial_size, -1), mode="bilinear"))
    if nearest_keys:
        xforms.append(Resized(keys=nearest_keys, spatial_size=(spatial_size, spatial_size, -1), mode="nearest"))
    if network_input:
        xforms += network_input_transforms(image_key)
    return Compose(xforms)


def ct_postprocessing(
    preprocessing: Compose,
    pred_key: str = "pred",
    image_key: str = "image",
    threshold: float = DEFAULT_THRESHOLD,
    prob_key: str | None = None,
    restrict_to_lung: bool = True,
    lung_key: str = "lung",
    lung_dilation_mm: float = LUNG_DILATION_MM,
    classes: str = "infection",
) -> Compose:
    """Network logits ``(C, S, S, Z)`` → uint8 mask ``(1, X, Y, Z)`` on the input grid.

    ``classes``: ``"infection"`` (one logit channel: sigmoid, threshold → 0/1) or
    ``"patterns"`` (three class logits of :class:`~infnet_monai.networks.patterns.InfectionPatternNetwork`:
    softmax, probabilities taken back to the input grid, argmax → 0 background, 1 ground-glass
    opacity, 2 consolidation; ``threshold`` unused).
    ``prob_key``: also keep the probability map(s) (float32, input grid) under that key.
    ``restrict_to_lung``: set to 0 what lies outside the lung mask dilated by ``lung_dilation_mm``
    (needs the preprocessing's ``keep_lung_mask``).
    """
    if classes not in CLASS_CHOICES:
        raise ValueError(f"classes must be one of {', '.join(CLASS_CHOICES)}, got {classes!r}")
    patterns = classes == "patterns"
    xforms: list = [
        Activationsd(keys=pred_key, softmax=patterns, sigmoid=not patterns),
        Invertd(keys=pred_key, transform=preprocessing, orig_keys=image_key, nearest_interp=False, to_tensor=True),
    ]
    if restrict_to_lung:  # the lung labels, computed on the input grid, back to its orientation: exact
        xforms.append(UndoOrientationd(keys=lung_key, preprocessing=preprocessing))
    if prob_key:
        xforms.append(CopyItemsd(keys=pred_key, names=prob_key))
    if patterns:
        xforms.append(AsDiscreted(keys=pred_key, argmax=True, dtype=torch.uint8))
    else:
        xforms.append(AsDiscreted(keys=pred_key, threshold=threshold, dtype=torch.uint8))
    if restrict_to_lung:
        xforms.append(RestrictToLungd(keys=pred_key, lung_key=lung_key, dilation_mm=lung_dilation_mm))
    return Compose(xforms)


class UndoOrientationd(MapTransform):
    """Bring ``keys`` that went through the preprocessing's orientation and nothing else (the lung
    labels) back to the input grid: the inverse of that ``Orientationd`` (axis permutation and
    flips, so no value changes; dtype kept)."""

    def __init__(self, keys, preprocessing: Compose, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        orientations = [t for t in preprocessing.flatten().transforms if isinstance(t, Orientationd)]
        if len(orientations) != 1:
            raise ValueError(f"expected one Orientationd in the preprocessing, found {len(orientations)}")
        self.orientation = orientations[0].ornt_transform

    def __call__(self, data):
        d = dict(data)
        for key in self.key_iterator(d):
            labels = d[key]  # the inverse pops its record: work on a view, the item may be postprocessed again
            view = MetaTensor(labels.as_tensor(), meta=dict(labels.meta), applied_operations=list(labels.applied_operations))
            d[key] = self.orientation.inverse(view)
        return d


def ct_lung_labels(ct: MetaTensor) -> MetaTensor:
    """Lung labels (uint8 ``(1, X, Y, Z)``: 1 right, 2 left, 3 rest of the thoracic cavity) of a
    CT in HU ``(1, X, Y, Z)`` on its own grid, computed as :func:`ct_preprocessing` does (in the
    slice orientation, then oriented back), so that a report made from a CT and a mask measures
    the same lungs as the segmentation run that made the mask."""
    orientation = Orientation(axcodes=SLICE_AXCODES, labels=None)
    return orientation.inverse(LungMask()(orientation(ct)))
