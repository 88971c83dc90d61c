"""The HU lung mask: right lung 1, left lung 2, the rest of the thoracic cavity 3 (uint8).

:func:`lung_labels` runs the steps described in :mod:`infnet_monai.transforms.lung` on a CT
volume (X, Y, Z) in HU: the body and airways (:mod:`.lung_body`), the sides
(:mod:`.lung_sides`), closing and refinement here, the diseased lung and the cavity
(:mod:`.lung_pathology`). Per-slice morphology is bit-packed (:mod:`.slice_morphology`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import ndimage

from infnet_monai.utils.geometry import voxel_spacing

from . import slice_morphology as sm
from .lung_body import airway_mask, body_mask
from .lung_common import (
    LEFT_LUNG,
    RIGHT_LUNG,
    axial_last,
    bbox,
    block_mean,
    centroid_x,
    full_box,
    label_set,
    per_slice_fill,
    upsample,
)
from .lung_pathology import add_fills, pathology_and_cavity
from .lung_sides import sides_of_components

__all__ = ["LungMaskParams", "lung_labels"]


@dataclass(frozen=True)
class LungMaskParams:
    """Parameters of :func:`lung_labels` / :class:`LungMask`.

    Attributes:
        threshold_hu: voxels below it are air/lung (HU).
        min_component_ml: smallest 3D air component accepted as a lung (mL).
        working_spacing_mm: in-plane spacing for the component analysis (block averaging by an
            integer factor; the boundary is refined at full resolution).
        closing_mm: in-plane closing radius that closes vessels at the lung surface (mm).
        body_opening_mm: in-plane opening radius detaching table and blankets from the body (mm).
        max_airway_cm2: largest axial cross-section still followed as trachea/bronchus (cm2).
        airway_midline_mm: largest distance of the trachea from the body midline (mm).
        airway_search_mm: depth below the first in-body air searched for the trachea (mm).
        airway_merge_mm: how far a followed airway may run touching a lung in the axial slices
            before it counts as having entered the lung (mm).
        fill_pathology: add diseased lung and the thoracic cavity
            (:mod:`~infnet_monai.transforms.lung_pathology`); False gives aerated lung only.
        max_dense_hu: densest tissue the dependent fill adds to a lung (HU; effusion and muscle
            are denser).
        max_fill_mm: longest posterior or lateral run the fills add (mm).
        fat_low_hu, fat_high_hu: HU range of fat, which fills leave out.
        bone_hu: bone (ribs, spine, sternum) for the thoracic cavity (HU).
        rib_margin_mm: bone within this in-plane distance of a lung frames the cavity (mm).
    """

    threshold_hu: float = -320.0
    fill_pathology: bool = True
    max_dense_hu: float = -20.0
    max_fill_mm: float = 80.0
    fat_low_hu: float = -160.0
    fat_high_hu: float = -60.0
    bone_hu: float = 200.0
    rib_margin_mm: float = 30.0
    min_component_ml: float = 50.0
    working_spacing_mm: float = 1.6
    closing_mm: float = 3.0
    body_opening_mm: float = 5.0
    max_airway_cm2: float = 10.0
    airway_midline_mm: float = 20.0
    airway_search_mm: float = 80.0
    airway_merge_mm: float = 15.0


def lung_labels(hu: np.ndarray, affine: np.ndarray, **params: float) -> np.ndarray:
    """Lung labels, uint8 (X, Y, Z): right (1), left (2), the rest of the thoracic cavity (3, with
    ``fill_pathology``), for a CT volume (X, Y, Z) in HU.

    ``affine``: MONAI (RAS world, mm) 4x4 affine of ``hu``; ``params``: fields of
    :class:`LungMaskParams`. See :mod:`infnet_monai.transforms.lung` for the steps.
    """
    p = LungMaskParams(**params)
    hu = np.asarray(hu)
    affine = np.asarray(affine, dtype=np.float64)
    perm, affine_t = axial_last(affine)
    hu_t = np.transpose(hu, perm)
    spacing = voxel_spacing(affine_t)
    factors = [max(1, int(round(p.working_spacing_mm / s))) for s in spacing[:2]]
    coarse_affine = affine_t.copy()
    coarse_affine[:3, :2] = affine_t[:3, :2] * factors
    coarse_affine[:3, 3] = affine_t[:3, 3] + affine_t[:3, :2] @ ((np.asarray(factors) - 1) / 2.0)
    coarse_spacing = voxel_spacing(coarse_affine)

    mean_hu = block_mean(hu_t, factors)
    air = mean_hu < p.threshold_hu
    body = body_mask(~air, max(1, int(round(p.body_opening_mm / coarse_spacing[:2].mean()))))
    candidates = air & body
    candidates &= ~airway_mask(candidates, body, coarse_affine, p)
    # drop anything touching the in-plane border of the volume; the 3D components of what is
    # left are those of this labelling that do not touch it
    comps, n = ndimage.label(candidates)
    border = np.concatenate([comps[0].ravel(), comps[-1].ravel(), comps[:, 0].ravel(), comps[:, -1].ravel()])
    candidates &= ~label_set(comps, n, border)[comps]

    labels_c = np.zeros(candidates.shape, dtype=np.uint8)
    if candidates.any():
        midline_x = centroid_x(body, coarse_affine)  # the body holds every candidate
        labels_c = sides_of_components(comps, candidates, coarse_affine, midline_x, p.min_component_ml)
    closing_voxels = int(round(p.closing_mm / coarse_spacing[:2].mean()))
    labels_c = _close_and_fill(labels_c, closing_voxels)
    labels_t = _refine(labels_c, hu_t, p.threshold_hu, factors)
    if p.fill_pathology:
        extra_c, dependent_c = pathology_and_cavity(labels_c, mean_hu, body, coarse_affine, p)
        add_fills(labels_t, hu_t, extra_c, dependent_c, factors, p)
    return np.ascontiguousarray(np.transpose(labels_t, np.argsort(perm)), dtype=np.uint8)


def _close_and_fill(labels: np.ndarray, closing_voxels: int) -> np.ndarray:
    """Per label of uint8 (X, Y, Z): in-plane closing by ``closing_voxels`` then per-slice hole
    filling (vessels, airways, nodules); bit-packed."""
    out = labels.copy()
    for side in (RIGHT_LUNG, LEFT_LUNG):
        mask = labels == side
        box = bbox(mask, [closing_voxels + 1, closing_voxels + 1, 0])
        if box is None:
            continue
        sub = mask[box]
        if closing_voxels > 0:  # padded so that the array's edge does not erode the closing
            c = closing_voxels
            padded = np.pad(sm.pack(sub), [(c, c), (c, c), (0, 0)])
            closed = sm.erode(sm.dilate(padded, c), c)
            sub = sm.unpack(closed[c:-c, c:-c], sub.shape[2])
        sub = per_slice_fill(sub)
        region = out[box]
        region[sub & (region == 0)] = side
    return out


def _refine(labels_c: np.ndarray, hu: np.ndarray, threshold_hu: float, factors: Sequence[int]) -> np.ndarray:
    """Upsample coarse labels (uint8 (x, y, Z)) to the grid of ``hu`` (X, Y, Z, HU); within one
    coarse voxel of their boundary, the full-resolution air (``hu < threshold_hu``) decides.

    Band air counts where it reaches the lung in its slice (not e.g. an airway beyond a thin
    wall); each lung's holes are filled per slice. Work on the lungs' box only."""
    if tuple(factors) == (1, 1):
        return labels_c
    slices = labels_c.shape[2]
    inner_c = sm.unpack(sm.erode(sm.pack(labels_c > 0)), slices)
    # grey dilation of the labels by the in-plane cross: the larger label wins where both reach
    near = [sm.unpack(sm.dilate(sm.pack(labels_c == side)), slices) for side in (RIGHT_LUNG, LEFT_LUNG)]
    grown_c = np.where(near[1], np.uint8(LEFT_LUNG), np.where(near[0], np.uint8(RIGHT_LUNG), np.uint8(0)))
    out = np.zeros(hu.shape, dtype=np.uint8)
    coarse_box = bbox(grown_c > 0, [0, 0, 0])
    if coarse_box is None:
        return out
    box = full_box(coarse_box, factors, hu.shape)  # only the lungs' box is upsampled
    box_shape = [b.stop - b.start for b in box[:2]]

    def upsampled(coarse: np.ndarray) -> np.ndarray:
        return upsample(coarse[coarse_box], factors, box_shape)

    inner = upsampled(inner_c)
    grown = upsampled(grown_c)
    band = (grown > 0) & ~inner & (hu[box] < threshold_hu)
    # band air must reach the lung within its slice: in-plane reconstruction from the inner part
    reached = sm.unpack(sm.reconstruct(sm.pack(inner), sm.pack(inner | band)), inner.shape[2])
    reached |= ~inner.any(axis=(0, 1))
    region = out[box]
    np.copyto(region, upsampled(labels_c), where=inner)
    np.copyto(region, grown, where=band & reached)
    for side in (RIGHT_LUNG, LEFT_LUNG):
        # out is zero around the box: holes of the side's mask within the box are its holes
        region[per_slice_fill(region == side) & (region == 0)] = side
    return out


