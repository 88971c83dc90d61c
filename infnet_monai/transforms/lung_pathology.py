"""Diseased lung and the thoracic cavity around an aerated-lung mask (HU, no learned model).

An HU threshold keeps only aerated lung: consolidation, dense ground-glass opacity, atelectasis
and tumour fall outside it. They lie where the aerated lung leaves a gap inside the chest wall,
so they are filled in from the aerated lung's shape, per axial slice and side:

1. **Dependent and lateral fill** (:func:`dependent_fill`): from the posterior edge of each
   lung along the posterior direction, and from its lateral edge towards the chest wall, tissue
   up to ``max_dense_hu`` is added when its run ends at denser tissue (chest wall, ribs, spine)
   within ``max_fill_mm``: the dependent consolidation of a supine patient, consolidation along
   the lateral chest wall. Fluid (pleural effusion, about 0-20 HU) and muscle are denser than
   the default -20 HU and stop the fill; fat (``fat_hu``) is taken out again.
2. **Pockets** (:func:`pocket_fill`): concavities of the lung closed along the rows or the
   columns of the slice (peripheral consolidation or a tumour touching the chest wall, the gaps
   between dependent-fill runs), of any density, unless they open medially or
   antero-medially (hilum, heart, mediastinum) or are mostly fat.
3. **Thoracic cavity** (:func:`thoracic_cavity`): the lungs, the bones near them (ribs, spine,
   sternum) and what lies between, per slice (the span of rows intersected with the span of
   columns): lungs, mediastinum, heart, pleural space. Infection found there is inside the
   thorax, whatever its density; the restriction of infection masks and the crops use it.

:func:`pathology_and_cavity` runs the three on the coarse grid, each on the crop that can hold
its result; :func:`add_fills` brings them to full resolution. Arrays are (X, Y, Z) with the
slice axis last, on the coarse grid of :func:`~infnet_monai.transforms.lung.lung_labels`
unless stated; ``affine`` maps them to RAS world (mm).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np
from scipy import ndimage

from infnet_monai.utils.geometry import voxel_spacing

from . import slice_morphology as sm
from .lung_common import INPLANE, LEFT_LUNG, RIGHT_LUNG, THORAX, bbox, full_box, per_slice_fill, shift, upsample

if TYPE_CHECKING:
    from .lung_segmenter import LungMaskParams

__all__ = [
    "span_fill",
    "index_direction",
    "posterior_axis",
    "dependent_fill",
    "pocket_fill",
    "mirror_sides",
    "thoracic_cavity",
    "pathology_and_cavity",
    "add_fills",
]


def span_fill(mask: np.ndarray, axis: int) -> np.ndarray:
    """Voxels between the first and the last ``mask`` voxel of their line along ``axis``."""
    n = mask.shape[axis]
    first = np.where(mask.any(axis=axis), np.argmax(mask, axis=axis), n)
    last = n - 1 - np.argmax(np.flip(mask, axis), axis=axis)
    shape = [1] * mask.ndim
    shape[axis] = n
    index = np.arange(n).reshape(shape)
    return (index >= np.expand_dims(first, axis)) & (index <= np.expand_dims(last, axis))


def index_direction(affine: np.ndarray, world: Sequence[float]) -> tuple[int, int]:
    """(in-plane array axis 0 or 1, +1 or -1): the index direction closest to the in-plane
    ``world`` direction (x, y; RAS: +x patient right, +y anterior)."""
    along = np.asarray(world, dtype=np.float64) @ np.asarray(affine, dtype=np.float64)[:2, :2]
    axis = int(np.argmax(np.abs(along)))
    return axis, 1 if along[axis] > 0 else -1


def posterior_axis(affine: np.ndarray) -> tuple[int, int]:
    """(in-plane array axis 0 or 1, +1 or -1): the index direction closest to world posterior."""
    return index_direction(affine, (0.0, -1.0))


def dependent_fill(
    lung: np.ndarray, hu: np.ndarray, body: np.ndarray, affine: np.ndarray, spacing: Sequence[float],
    threshold_hu: float, max_dense_hu: float, max_fill_mm: float, direction: tuple[int, int] | None = None,
) -> np.ndarray:
    """Voxels beyond ``lung`` (bool) up to denser tissue: see the module docstring.

    Along every line of ``direction`` ((axis, step) of :func:`index_direction`; default
    posterior, :func:`posterior_axis`) the run of voxels after the line's last lung voxel with
    ``threshold_hu <= hu <= max_dense_hu`` inside ``body`` is returned when the voxel ending it
    is denser than ``max_dense_hu`` and the run is at most ``max_fill_mm`` long.
    """
    axis, step = direction or posterior_axis(affine)
    out = np.zeros_like(lung)
    if not lung.any():
        return out
    # work with the posterior direction along axis 0, increasing index
    order = (axis, 1 - axis, 2)
    lung_t = np.transpose(lung, order)
    hu_t = np.transpose(hu, order)
    body_t = np.transpose(body, order)
    if step < 0:
        lung_t, hu_t, body_t = lung_t[::-1], hu_t[::-1], body_t[::-1]
    n = lung_t.shape[0]
    index_type = np.int16 if n < np.iinfo(np.int16).max else np.int32
    index = np.arange(n, dtype=index_type).reshape(-1, 1, 1)
    has_lung = lung_t.any(axis=0)
    last = np.where(has_lung, n - 1 - np.argmax(lung_t[::-1], axis=0), -1)  # last lung index per line
    passable = (hu_t >= threshold_hu) & (hu_t <= max_dense_hu) & body_t
    blocked_at = np.where(passable, index_type(n), index)  # first non-passable index at or after each voxel
    next_block = np.flip(np.minimum.accumulate(np.flip(blocked_at, 0), axis=0), 0)
    start = np.clip(last + 1, 0, n - 1)
    stop = np.take_along_axis(next_block, start[None], axis=0)[0]
    stop_dense = np.take_along_axis(hu_t, np.clip(stop, 0, n - 1)[None], axis=0)[0] > max_dense_hu
    max_steps = int(np.floor(max_fill_mm / float(spacing[axis])))
    accept = has_lung & (last + 1 < n) & (stop < n) & stop_dense & (stop - start <= max_steps)
    filled_t = accept[None] & (index >= start[None]) & (index < stop[None])
    if step < 0:
        filled_t = filled_t[::-1]
    return np.transpose(filled_t, np.argsort(order))


def pocket_fill(
    lung: np.ndarray, hu: np.ndarray, affine: np.ndarray, side_is_right: bool, fat_hu: Sequence[float],
    origin: Sequence[int] = (0, 0, 0),
) -> np.ndarray:
    """Concavities of ``lung`` (one side, bool) closed along rows or columns, per slice.

    A concavity (in-plane connected component of the row or column span minus the lung) is kept
    when, seen from the lung's centre in its slice, it lies posteriorly (within 60° of the
    posterior direction: dependent lung, the paravertebral gutter) or laterally (within 45° of
    the lateral direction: the chest wall side); medial and anterior concavities (hilum, heart,
    mediastinum, the liver and spleen under the domes of the diaphragm) stay out. Concavities
    whose mean HU lies within ``fat_hu`` (low, high) are fat and stay out. ``origin``: index of
    the arrays' first voxel in a larger grid (a crop; centres are computed in that grid's
    indices, so a crop holding the lung gives the same pockets as the whole grid).
    """
    out = np.zeros_like(lung)
    if not lung.any():
        return out
    pockets = (span_fill(lung, 0) | span_fill(lung, 1)) & ~lung
    labels, n = ndimage.label(pockets, structure=INPLANE)
    if n == 0:
        return out
    where = np.nonzero(labels)
    lab = labels[where]
    count = np.maximum(np.bincount(lab, minlength=n + 1)[1:], 1).astype(np.float64)

    def pocket_mean(values: np.ndarray) -> np.ndarray:
        return np.bincount(lab, weights=values, minlength=n + 1)[1:] / count

    centres = np.stack([pocket_mean(i + o) for i, o in zip(where, origin)], axis=1)
    mean_hu = pocket_mean(hu[where])
    # the side's lung centre in the pocket's slice (sums of integer indices: exact)
    index = [np.arange(o, o + n_axis, dtype=np.int64) for o, n_axis in zip(origin, lung.shape)]
    lung_count = np.count_nonzero(lung, axis=(0, 1)).astype(np.float64)
    gx = (index[0] @ np.count_nonzero(lung, axis=1)).astype(np.float64)
    gy = (index[1] @ np.count_nonzero(lung, axis=0)).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        centre_x, centre_y = gx / lung_count, gy / lung_count
    z = np.clip(np.round(centres[:, 2]).astype(int) - origin[2], 0, lung.shape[2] - 1)
    offset = np.stack([centres[:, 0] - centre_x[z], centres[:, 1] - centre_y[z]], axis=1)  # index units
    # in world mm: in-plane columns of the affine
    world = offset @ np.asarray(affine, dtype=np.float64)[:2, :2].T  # (n, 2): world x, y
    length = np.linalg.norm(world, axis=1) + 1e-9
    lateral = world[:, 0] * (1.0 if side_is_right else -1.0) / length  # + = towards the side
    posterior = -world[:, 1] / length  # + = posterior
    facing_wall = (posterior >= 0.5) | (lateral >= np.cos(np.pi / 4))
    fat = (mean_hu >= fat_hu[0]) & (mean_hu <= fat_hu[1])
    keep = np.zeros(n + 1, dtype=bool)
    keep[1:] = facing_wall & ~fat
    return keep[labels]


def mirror_sides(mask: np.ndarray, body: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """``mask`` reflected, per slice, across the body's midline (the plane through the body's
    centre perpendicular to the in-plane index axis closest to world left-right)."""
    axis = int(np.argmax(np.abs(np.asarray(affine, dtype=np.float64)[0, :2])))
    out = np.zeros_like(mask)
    n = mask.shape[axis]
    profiles = np.count_nonzero(body, axis=1 - axis)  # (n, Z)
    for z in np.flatnonzero(mask.any(axis=(0, 1)) & profiles.any(axis=0)):
        profile = profiles[:, z].astype(np.float64)
        twice_centre = int(round(2 * (profile @ np.arange(n)) / profile.sum()))
        source = twice_centre - np.arange(n)
        valid = (source >= 0) & (source < n)
        target = np.flatnonzero(valid)
        if axis == 0:
            out[target, :, z] = mask[source[valid], :, z]
        else:
            out[:, target, z] = mask[:, source[valid], z]
    return out


def thoracic_cavity(
    lungs: np.ndarray, hu: np.ndarray, body: np.ndarray, affine: np.ndarray, bone_hu: float, rib_margin_mm: float,
) -> np.ndarray:
    """Lungs + nearby bone + what lies between them, per axial slice, inside ``body`` (bool).

    Bone (``hu > bone_hu``) counts when it lies within ``rib_margin_mm`` (in-plane, square
    neighbourhood) of a lung in its slice; the cavity is the union of the row span and the
    column span of lungs and that bone. Join it with its mirror image across the body's
    midline (:func:`mirror_sides`, on the whole slice) so that a hemithorax without any aerated
    lung is kept too.
    """
    if not lungs.any():
        return np.zeros_like(lungs)
    spacing = np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, :2], axis=0)
    reach = [max(1, int(np.ceil(rib_margin_mm / float(s)))) for s in spacing]
    near = sm.unpack(sm.dilate_rect(sm.pack(lungs), reach), lungs.shape[2])
    frame = lungs | (near & (hu > bone_hu) & body)
    return (span_fill(frame, 0) | span_fill(frame, 1)) & body


def _grown_box(box: tuple[slice, ...], axis: int, reach: int, shape: Sequence[int]) -> tuple[slice, ...]:
    """``box`` grown by ``reach`` voxels both ways along ``axis`` (clipped to ``shape``)."""
    return tuple(
        slice(max(0, b.start - reach), min(n, b.stop + reach)) if d == axis else b
        for d, (b, n) in enumerate(zip(box, shape))
    )


def pathology_and_cavity(
    labels_c: np.ndarray, mean_hu: np.ndarray, body: np.ndarray, affine: np.ndarray, p: LungMaskParams
) -> tuple[np.ndarray, np.ndarray]:
    """Coarse labels of what the aerated ``labels_c`` (uint8 (X, Y, Z), 1 right, 2 left) miss:
    diseased lung per side (1, 2) and the rest of the thoracic cavity (:data:`THORAX`), 0
    elsewhere and on the aerated lung (uint8 (X, Y, Z)); and the boolean mask of the lung voxels
    added by the dependent fill alone. ``mean_hu``: the coarse HU; ``body``: the body mask.

    Each fill works on the crop that can hold its result (exactly the same result as on the
    whole grid): a dependent/lateral fill on the side's lung box grown by ``max_fill_mm`` along
    its direction, the pockets and holes on the box of the filled lung."""
    spacing = voxel_spacing(affine)
    extra = np.zeros(labels_c.shape, dtype=np.uint8)
    dependent_all = np.zeros(labels_c.shape, dtype=bool)
    # everything happens near the lungs: within the longest fill / rib margin in-plane
    reach_mm = max(p.max_fill_mm, p.rib_margin_mm) + 2 * float(spacing[:2].max())
    box = bbox(labels_c > 0, [int(np.ceil(reach_mm / s)) for s in spacing[:2]] + [0])
    if box is None:
        return extra, dependent_all
    sub_labels, sub_hu, sub_body = labels_c[box], mean_hu[box], body[box]
    box_affine = shift(affine, [s.start for s in box])
    fat = (sub_hu >= p.fat_low_hu) & (sub_hu <= p.fat_high_hu)
    fat_core = sm.unpack(sm.dilate(sm.erode(sm.pack(fat))), fat.shape[2])  # in-plane opening
    free = (sub_labels == 0) & ~fat_core
    sub_extra = extra[box]
    for side in (RIGHT_LUNG, LEFT_LUNG):
        lung = sub_labels == side
        lung_box = bbox(lung, [0, 0, 0])
        if lung_box is None:
            continue
        dependent = np.zeros_like(lung)
        lateral = (1.0, 0.0) if side == RIGHT_LUNG else (-1.0, 0.0)  # world x: + = patient right
        for direction in (posterior_axis(box_affine), index_direction(box_affine, lateral)):
            # a run starts after the line's last lung voxel and is at most max_fill_mm long:
            # beyond that on the line its end cannot lie (two spare voxels)
            reach = int(np.floor(p.max_fill_mm / float(spacing[direction[0]]))) + 2
            crop = _grown_box(lung_box, direction[0], reach, lung.shape)
            dependent[crop] |= dependent_fill(
                lung[crop], sub_hu[crop], sub_body[crop], shift(box_affine, [s.start for s in crop]), spacing,
                p.threshold_hu, p.max_dense_hu, p.max_fill_mm, direction,
            )
        dependent &= free & (sub_extra == 0)
        grown = lung | dependent
        grown_box = bbox(grown, [0, 0, 0])  # holds the pockets: they lie between lung voxels
        pockets = np.zeros_like(lung)
        pockets[grown_box] = pocket_fill(
            grown[grown_box], sub_hu[grown_box], box_affine, side == RIGHT_LUNG, (p.fat_low_hu, p.fat_high_hu),
            [s.start for s in grown_box],
        )
        enclosed = per_slice_fill(grown | (pockets & free & (sub_extra == 0)))
        dependent_all[box] |= dependent & ~pockets
        sub_extra[enclosed & (sub_labels == 0) & (sub_extra == 0)] = side
    lungs = (labels_c > 0) | (extra > 0)
    cavity = np.zeros_like(lungs)
    cavity[box] = thoracic_cavity(lungs[box], sub_hu, sub_body, box_affine, p.bone_hu, p.rib_margin_mm)
    cavity = (cavity | mirror_sides(cavity, body, affine)) & body
    extra[cavity & ~lungs] = THORAX
    return extra, dependent_all


def add_fills(
    labels: np.ndarray, hu: np.ndarray, extra_c: np.ndarray, dependent_c: np.ndarray, factors: Sequence[int],
    p: LungMaskParams,
) -> None:
    """Add the coarse fills of :func:`pathology_and_cavity` to the full-resolution ``labels``
    (uint8 (X, Y, Z), in place, where they are 0; slice axis last; ``hu`` the full-resolution
    HU, ``factors`` the in-plane block sizes of the coarse grid).

    The dependent and lateral fills keep their density limits at full resolution (a coarse voxel
    at the lung's edge mixes lung with chest wall or extrapleural fat); the cavity outside the
    lungs takes no air (skin, airways); the filled lung then grows by up to one coarse voxel into
    lung-density tissue around it, geodesically (through such voxels only, so no islands;
    bit-packed in-plane dilation).
    """
    box = bbox(extra_c > 0, [0, 0, 0])
    if box is None:
        return
    region_box = full_box(box, factors, labels.shape)
    shape = [b.stop - b.start for b in region_box[:2]]
    extra = upsample(extra_c[box], factors, shape)
    hu_box = hu[region_box]
    fat_or_dense = (hu_box > p.max_dense_hu) | ((hu_box >= p.fat_low_hu) & (hu_box <= p.fat_high_hu))
    too_dense = upsample(dependent_c[box], factors, shape) & fat_or_dense
    outside_air = (extra == THORAX) & (hu_box < p.threshold_hu)
    region = labels[region_box]
    np.copyto(region, extra, where=(region == 0) & (extra > 0) & ~too_dense & ~outside_air)
    edge = ((region == 0) | (region == THORAX)) & ~fat_or_dense & (hu_box >= p.threshold_hu)
    slices = region.shape[2]
    for side in (RIGHT_LUNG, LEFT_LUNG):
        added = (extra == side) & (region == side)
        if not added.any():
            continue
        edge_p = sm.pack(edge)
        added_p = sm.pack(added)
        grown = sm.unpack(sm.dilate(added_p, max(factors), within=edge_p | added_p) & edge_p, slices)
        region[grown] = side
        edge &= ~grown
