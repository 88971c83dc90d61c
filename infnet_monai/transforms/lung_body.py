"""The body and the airways (trachea, main bronchi) for the HU lung mask.

Arrays are (X, Y, Z) booleans with the slice axis last, on the coarse grid of
:func:`~infnet_monai.transforms.lung.lung_labels`; ``affine`` maps them to RAS world (mm).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

from infnet_monai.utils.geometry import voxel_spacing

from . import slice_morphology as sm
from .lung_common import per_slice_fill, world_x

if TYPE_CHECKING:
    from .lung_segmenter import LungMaskParams

__all__ = ["body_mask", "airway_mask"]


def body_mask(tissue: np.ndarray, opening_voxels: int) -> np.ndarray:
    """The body: the largest 3D component of ``tissue`` (bool (X, Y, Z)) after an in-plane
    opening by ``opening_voxels`` (detaching table and blankets), holes filled per slice."""
    opened = sm.unpack(sm.dilate(sm.erode(sm.pack(tissue), opening_voxels), opening_voxels), tissue.shape[2])
    comps, n = ndimage.label(opened)
    if n == 0:
        return np.zeros_like(tissue)
    sizes = np.bincount(comps[opened], minlength=n + 1)
    sizes[0] = 0
    return per_slice_fill(comps == int(np.argmax(sizes)))


def _trachea_seed(
    candidates: np.ndarray, body: np.ndarray, affine: np.ndarray, p: LungMaskParams
) -> tuple[int, np.ndarray] | None:
    """(slice, 2D mask) of the trachea in the uppermost slices, or None (slice axis last).

    Searched within ``p.airway_search_mm`` below the first slice with air inside the body:
    compact air regions (bounding-box fill >= 0.5, aspect <= 2, 0.5 cm2 to ``p.max_airway_cm2``)
    whose centroid lies within ``p.airway_midline_mm`` of the body's midline in that slice.
    """
    spacing = voxel_spacing(affine)
    pixel_cm2 = spacing[0] * spacing[1] / 100.0
    z_count = candidates.shape[2]
    top_first = range(z_count - 1, -1, -1) if affine[2, 2] > 0 else range(z_count)
    first_air_z = None
    for z in top_first:
        labels, n = ndimage.label(candidates[:, :, z])
        if n == 0:
            continue
        first_air_z = z if first_air_z is None else first_air_z
        if abs(z - first_air_z) * spacing[2] > p.airway_search_mm:
            return None
        midline = world_x(affine, [i.mean() for i in np.nonzero(body[:, :, z])] + [z])
        areas = np.bincount(labels.ravel()) * pixel_cm2
        keep = []
        for lab, box in enumerate(ndimage.find_objects(labels), start=1):
            ext = np.array([(box[0].stop - box[0].start) * spacing[0], (box[1].stop - box[1].start) * spacing[1]])
            fill = areas[lab] / (ext[0] * ext[1] / 100.0)
            if not (0.5 <= areas[lab] <= p.max_airway_cm2 and fill >= 0.5 and ext.max() <= 2 * ext.min()):
                continue
            idx = np.nonzero(labels[box] == lab)
            cx = world_x(affine, [idx[0].mean() + box[0].start, idx[1].mean() + box[1].start, z])
            if abs(cx - midline) <= p.airway_midline_mm:
                keep.append(lab)
        if keep:
            return z, np.isin(labels, keep)
    return None


def airway_mask(candidates: np.ndarray, body: np.ndarray, affine: np.ndarray, p: LungMaskParams) -> np.ndarray:
    """Trachea and main bronchi: boolean (X, Y, Z), slice axis last.

    From the trachea seed (:func:`_trachea_seed`) each next slice down keeps the air regions
    overlapping the previous separate airway regions while they stay airway-sized: at most
    ``p.max_airway_cm2`` and at most twice the seed's cross-section (+ 1.5 cm2), so that a lung
    apex merging with the trachea in thin slices is not taken for airway. Where a branch runs
    into a larger (lung) region, its footprint (grown by one voxel per slice, following the
    bronchus) is cut out of that region for at most ``p.airway_merge_mm`` below the slice where
    it merged; then the branch has entered the lung.
    """
    airway = np.zeros_like(candidates)
    seed = _trachea_seed(candidates, body, affine, p)
    if seed is None:
        return airway
    spacing = voxel_spacing(affine)
    pixel_cm2 = spacing[0] * spacing[1] / 100.0
    down = -1 if affine[2, 2] > 0 else 1  # index step towards inferior
    z, separate = seed
    seed_cm2 = float(separate.sum()) * pixel_cm2
    max_cm2 = min(p.max_airway_cm2, max(2.0 * seed_cm2, seed_cm2 + 1.5))
    max_merged = int(np.ceil(p.airway_merge_mm / spacing[2]))
    airway[:, :, z] = separate
    previous = separate
    cuts: list[tuple[np.ndarray, int]] = []  # (footprint, slices since the branch merged)
    z += down
    while 0 <= z < candidates.shape[2] and (separate.any() or cuts):
        labels, _ = ndimage.label(candidates[:, :, z])
        areas = np.bincount(labels.ravel()) * pixel_cm2
        # regions under the previous slice's airway (separate branches and cuts): a branch
        # hidden in a lung for a few slices is picked up again when it separates
        touched = np.unique(labels[previous & (labels > 0)])
        small = [lab for lab in touched if areas[lab] <= max_cm2]
        large = np.isin(labels, [lab for lab in touched if areas[lab] > max_cm2])
        if (separate & large).any():  # a separate branch runs into a lung: start its cut
            cuts.append((sm.dilate(separate), 0))
        separate = np.isin(labels, small)
        previous = separate.copy()
        ongoing = []
        for footprint, age in cuts:
            cut = footprint & large
            if age < max_merged and cut.any():
                previous |= cut
                ongoing.append((sm.dilate(footprint), age + 1))
        cuts = ongoing
        airway[:, :, z] = previous
        z += down
    return airway
