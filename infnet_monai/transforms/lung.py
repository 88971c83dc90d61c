"""Lung masks from Hounsfield units alone (no learned model) and lung-based crops/restrictions.

``LungMask`` labels the right lung 1, the left lung 2 and the rest of the thoracic cavity 3 in a
CT volume (1, X, Y, Z) in HU. The sides and the slice axis come from the affine (MONAI world =
RAS, +x = patient's Right), so any array orientation works. Steps, on an in-plane
block-averaged copy near ``working_spacing_mm``:

1. air = HU < ``threshold_hu``; body = largest 3D tissue component after an in-plane opening
   (detaches table and blankets), holes filled per axial slice; candidates = air inside the body
   (air connected to the slice border or outside the body is dropped).
2. Airway removal: the trachea is found in the uppermost slices as a compact air region near the
   body midline, then followed down slice by slice (trachea, carina, main bronchi, cutting its
   footprint out where it touches a lung for up to ``airway_merge_mm``) until each branch has
   entered a lung; the followed regions are removed.
3. 3D components: the largest component on each side of the body midline with at least
   ``min_component_ml``; a single component spanning both sides (lungs touching) is split at its
   narrowest bridge (in-plane erosion until two cores part, the cores grown back), else at the
   midline.
4. Vessels and airways inside the lungs: in-plane closing (``closing_mm``) and hole filling per
   axial slice; then the boundary is refined at full resolution with the HU threshold.
5. Diseased lung (consolidation, dense GGO, atelectasis, tumour), which the threshold leaves
   out, is filled in from the aerated lung's shape, and the rest of the thoracic cavity is
   labelled :data:`THORAX` (3): :mod:`~infnet_monai.transforms.lung_pathology`
   (``fill_pathology=False`` stops after step 4).

Per-slice morphology (openings, closings, hole filling, in-plane reconstruction) runs on
volumes bit-packed along the slice axis (:mod:`~infnet_monai.transforms.slice_morphology`, the
same results as scipy's); each fill works on the box that can hold its result. Modules:
:mod:`.lung_segmenter` (:func:`lung_labels`, :class:`LungMaskParams`, steps 4 and the order of
all), :mod:`.lung_body` (steps 1-2), :mod:`.lung_sides` (step 3, :func:`label_sides`),
:mod:`.lung_pathology` (step 5), :mod:`.lung_common` (label values, boxes, :func:`dilate_mm`);
this module holds the MONAI transforms and the crop policy, and re-exports the rest.
"""

from __future__ import annotations

import copy
from dataclasses import asdict
from typing import Any, Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Transform
from monai.utils import TransformBackends, convert_to_dst_type

from infnet_monai.utils.geometry import affine_of, axial_axis, voxel_spacing

from .lung_common import (
    LEFT_LUNG,
    RIGHT_LUNG,
    THORAX,
    bbox,
    box_intersection,
    dilate_mm,
    margin_voxels,
    spatial,
    to_numpy,
)
from .lung_segmenter import LungMaskParams, lung_labels
from .lung_sides import label_sides

__all__ = [
    "RIGHT_LUNG",
    "LEFT_LUNG",
    "THORAX",
    "LungMaskParams",
    "lung_labels",
    "label_sides",
    "dilate_mm",
    "lung_columns",
    "LungRegion",
    "lung_slices",
    "LungMask",
    "LungMaskd",
    "RestrictToLung",
    "RestrictToLungd",
]


def _axial_index(img: Any) -> int:
    """Index (in a channel-first (1, X, Y, Z) array) of the slice axis; last if no affine."""
    affine = getattr(img, "affine", None)
    return 1 + (axial_axis(affine_of(img)) if affine is not None else 2)


def lung_columns(mask: Any) -> Any:
    """``select_fn`` for ``CropForeground(d)``: lung mask (1, X, Y, Z) projected over all slices.

    True at every slice of each (in-plane) column that holds lung in any slice, so the crop is
    in-plane only and keeps all slices. Use a per-axis margin without a slice margin, e.g.
    ``CropForegroundd(keys, source_key="lung", select_fn=lung_columns, margin=(8, 8, 0))``.
    A mask without any lung selects everything (no crop) rather than an empty box. The
    in-plane-only case of :class:`LungRegion`.
    """
    return LungRegion(inplane=True, slices=False)(mask)


class LungRegion:
    """``select_fn`` for ``CropForeground(d)``: the region of a lung mask (1, X, Y, Z) to keep.

    In-plane, the lung columns (bounding box over all slices, as :func:`lung_columns`) when
    ``inplane``, else whole slices; along the slice axis, the slices holding lung widened by
    ``slice_margin_mm`` on both sides when ``slices``, else all slices. Returns a boolean mask of
    the input's shape whose bounding box is that region; a mask without any lung keeps the whole
    volume (no crop), rather than an empty box. Use with an in-plane margin only, e.g.
    ``margin=(10, 10, 0)``.

    With ``slice_margin_mm`` at least the dilation of :class:`RestrictToLung`, the dropped slices
    are ones where the restricted mask is empty anyway.
    """

    def __init__(self, inplane: bool = True, slices: bool = True, slice_margin_mm: float = 5.0) -> None:
        if slice_margin_mm < 0:
            raise ValueError(f"slice_margin_mm must be >= 0, got {slice_margin_mm}")
        self.inplane = inplane
        self.slices = slices
        self.slice_margin_mm = slice_margin_mm

    def __call__(self, mask: Any) -> Any:
        axis = _axial_index(mask)
        positive = mask > 0
        if isinstance(positive, MetaTensor):
            positive = positive.as_tensor()
        positive = torch.as_tensor(positive)
        region = torch.ones((1,) * positive.ndim, dtype=torch.bool, device=positive.device)
        if not bool(positive.any()):
            region = region.expand_as(positive)
            return region if isinstance(mask, torch.Tensor) else region.numpy()
        if self.inplane:
            region = region & positive.any(dim=axis, keepdim=True)
        if self.slices:
            other = tuple(d for d in range(positive.ndim) if d != axis)
            in_lung = positive.any(dim=other).reshape(1, 1, -1).float()
            spacing = voxel_spacing(affine_of(mask))[axis - 1] if getattr(mask, "affine", None) is not None else 1.0
            reach = int(np.floor(self.slice_margin_mm / spacing + 1e-6))
            if reach:
                in_lung = torch.nn.functional.max_pool1d(in_lung, 2 * reach + 1, stride=1, padding=reach)
            shape = [1] * positive.ndim
            shape[axis] = -1
            region = region & (in_lung.reshape(shape) > 0)
        region = region.expand_as(positive)
        return region if isinstance(mask, torch.Tensor) else region.numpy()


def lung_slices(mask: Any) -> np.ndarray:
    """Boolean per axial slice (array order): True where the slice holds lung (mask > 0)."""
    positive = to_numpy(mask) > 0
    if positive.ndim == 3:
        positive = positive[None]
    axis = _axial_index(mask)
    other = tuple(d for d in range(positive.ndim) if d != axis)
    return positive.any(axis=other)


class LungMask(Transform):
    """CT (1, X, Y, Z) in HU -> uint8 lung labels (1, X, Y, Z): 0 background, 1 right, 2 left lung.

    ``params``: fields of :class:`LungMaskParams` (threshold HU, minimum component mL, ...).
    A MetaTensor output carries copies of the input's meta and applied operations. Sides come
    from the affine, so any orientation works.
    """

    backend = [TransformBackends.NUMPY]

    def __init__(self, **params: float) -> None:
        self.params = LungMaskParams(**params)

    def __call__(self, img: Any, affine: Any = None) -> Any:
        labels = lung_labels(spatial(img), affine_of(img, affine), **asdict(self.params))[None]
        if isinstance(img, MetaTensor):  # copies of the input's meta and applied operations
            return MetaTensor(
                torch.from_numpy(labels).to(img.device),
                meta=copy.deepcopy(img.meta),
                applied_operations=copy.deepcopy(img.applied_operations),
            )
        return convert_to_dst_type(labels, img, dtype=np.uint8 if isinstance(img, np.ndarray) else torch.uint8)[0]


class LungMaskd(MapTransform):
    """Dictionary twin of :class:`LungMask`: labels from ``keys`` (one CT key) into ``lung_key``.

    ``params``: fields of :class:`LungMaskParams`.
    """

    backend = LungMask.backend

    def __init__(
        self, keys: KeysCollection, lung_key: str = "lung", allow_missing_keys: bool = False, **params: float
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.lung_key = lung_key
        self.lung_mask = LungMask(**params)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[self.lung_key] = self.lung_mask(d[key])
        return d


class RestrictToLung(Transform):
    """Mask (1, X, Y, Z) ∩ (lungs dilated by ``dilation_mm`` ∪ the rest of the thoracic cavity).

    ``lung``: labels of :class:`LungMask` (1, 2 lungs, :data:`THORAX` the rest of the cavity) or
    any binary lung mask; the lungs are dilated (Euclidean, voxel spacing), the cavity is taken as
    it is (it reaches the ribs, and a margin around it would reach beyond the body).
    ``enabled=False`` returns the mask unchanged. Spacing comes from the lung's (or the mask's)
    affine; values outside become 0, the rest keep their value and dtype.
    """

    backend = [TransformBackends.NUMPY, TransformBackends.TORCH]

    def __init__(self, dilation_mm: float = 5.0, enabled: bool = True) -> None:
        self.dilation_mm = dilation_mm
        self.enabled = enabled

    def __call__(self, mask: Any, lung: Any) -> Any:
        if not self.enabled:
            return mask
        source = lung if getattr(lung, "affine", None) is not None else mask
        spacing = voxel_spacing(affine_of(source))
        labels = to_numpy(lung)
        if labels.shape[-3:] != tuple(mask.shape[-3:]):
            raise ValueError(f"lung mask shape {labels.shape} does not match mask shape {tuple(mask.shape)}")
        labels = labels.reshape(labels.shape[-3:])
        lung_np = labels > 0
        lungs_only = lung_np & (labels != THORAX)
        # only mask voxels outside the lung can be dropped: the dilation runs around them alone
        outside = (to_numpy(mask) != 0).reshape((-1,) + lung_np.shape)
        outside = outside[0] if len(outside) == 1 else outside.any(axis=0)
        np.greater(outside, lung_np, out=outside)  # outside & ~lung without a temporary
        margin = margin_voxels(spacing, self.dilation_mm)
        box = bbox(outside, margin)
        if box is None:
            return mask
        out = mask.clone() if isinstance(mask, torch.Tensor) else np.array(mask, copy=True)
        # beyond the lung's bounding box + margin everything is farther than dilation_mm
        near = bbox(lungs_only, margin)
        if near is not None:
            near = box_intersection(box, near)
            outside[near] &= ~dilate_mm(lungs_only[near], spacing, self.dilation_mm)
        out[(Ellipsis,) + box][..., convert_to_dst_type(outside[box], out, dtype=bool)[0]] = 0
        return out


class RestrictToLungd(MapTransform):
    """Dictionary twin of :class:`RestrictToLung`: restricts ``keys`` to the lung in ``lung_key``."""

    backend = RestrictToLung.backend

    def __init__(
        self,
        keys: KeysCollection,
        lung_key: str = "lung",
        dilation_mm: float = 5.0,
        enabled: bool = True,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.lung_key = lung_key
        self.restrict = RestrictToLung(dilation_mm, enabled)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.restrict(d[key], d[self.lung_key])
        return d
