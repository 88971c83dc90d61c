"""Lung masks from Hounsfield units alone (no learned model) and lung-based crops/restrictions.

``LungMask`` labels the right lung 1, the left lung 2 and the rest of the thoracic cavity 3 in a
CT volume (1, X, Y, Z) in HU. The
sides and the slice axis come from the affine (MONAI world = RAS, +x = patient's Right), so any
array orientation works. Steps, on an in-plane block-averaged copy near ``working_spacing_mm``:

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
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from typing import Any, Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Transform
from monai.utils import TransformBackends, convert_to_dst_type
from scipy import ndimage

from infnet_monai.utils.geometry import affine_of, axial_axis, voxel_spacing, voxel_volume_ml

from .lung_pathology import (
    dependent_fill,
    index_direction,
    mirror_sides,
    pocket_fill,
    posterior_axis,
    thoracic_cavity,
)

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

RIGHT_LUNG = 1
LEFT_LUNG = 2
THORAX = 3  # the rest of the thoracic cavity: mediastinum, heart, pleural space, hila

# In-plane 4-connectivity with no link between slices: makes ndimage ops act per axial slice
# on arrays whose last axis is the slice axis.
_INPLANE = np.zeros((3, 3, 3), dtype=bool)
_INPLANE[:, :, 1] = ndimage.generate_binary_structure(2, 1)


def _to_numpy(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _spatial(x: Any) -> np.ndarray:
    """(1, X, Y, Z) or (X, Y, Z) -> (X, Y, Z) numpy."""
    a = _to_numpy(x)
    if a.ndim == 4:
        if a.shape[0] != 1:
            raise ValueError(f"expected one channel (1, X, Y, Z), got shape {a.shape}")
        a = a[0]
    if a.ndim != 3:
        raise ValueError(f"expected a 3D volume (1, X, Y, Z), got shape {a.shape}")
    return a


def _axial_last(affine: np.ndarray) -> tuple[list[int], np.ndarray]:
    """Axis permutation putting the slice axis last, and the affine of the permuted array."""
    ax = axial_axis(affine)
    perm = [d for d in range(3) if d != ax] + [ax]
    permuted = affine.copy()
    permuted[:, :3] = affine[:, perm]
    return perm, permuted


def _per_slice_fill(mask: np.ndarray) -> np.ndarray:
    """Fill holes in every axial slice (slice axis last): background regions (in-plane
    4-connected) that touch no in-plane edge of the slice. The same result as
    ``ndimage.binary_fill_holes(mask, structure=_INPLANE)``, from one labelling pass instead of a
    dilation iterated to convergence."""
    labels, n = ndimage.label(~mask, structure=_INPLANE)
    if n == 0:
        return mask.copy()
    open_region = np.zeros(n + 1, dtype=bool)
    open_region[0] = True  # the mask itself
    for edge in (labels[0], labels[-1], labels[:, 0], labels[:, -1]):
        open_region[edge] = True
    return mask | ~open_region[labels]


def _label_set(labels: np.ndarray, count: int, members: Sequence[int] | np.ndarray) -> np.ndarray:
    """Lookup table over the labels 0..``count`` of a labelling: True for ``members`` except the
    background 0. ``table[labels]`` equals ``np.isin(labels, members) & (labels > 0)`` in one
    gather instead of a sort."""
    table = np.zeros(count + 1, dtype=bool)
    table[np.asarray(members, dtype=np.intp)] = True
    table[0] = False
    return table


def _bbox(mask: np.ndarray, margin: Sequence[int]) -> tuple[slice, ...] | None:
    """Bounding box of ``mask`` grown by ``margin`` voxels per axis (clipped), None if empty."""
    box = []
    for axis, (m, n) in enumerate(zip(margin, mask.shape)):
        hits = np.flatnonzero(mask.any(axis=tuple(d for d in range(mask.ndim) if d != axis)))
        if not hits.size:
            return None
        box.append(slice(max(0, int(hits[0]) - m), min(n, int(hits[-1]) + m + 1)))
    return tuple(box)


def _box_intersection(a: tuple[slice, ...], b: tuple[slice, ...]) -> tuple[slice, ...]:
    """The common part of two boxes of :func:`_bbox` (an empty slice on axes where they miss)."""
    starts = [max(x.start, y.start) for x, y in zip(a, b)]
    return tuple(slice(start, max(start, min(x.stop, y.stop))) for start, x, y in zip(starts, a, b))


def _world_x(affine: np.ndarray, index: Sequence[np.ndarray]) -> np.ndarray:
    """World x (mm, + = patient's Right) of voxels given as index arrays."""
    return affine[0, 0] * index[0] + affine[0, 1] * index[1] + affine[0, 2] * index[2] + affine[0, 3]


def _centroid_x(mask: np.ndarray, affine: np.ndarray) -> float:
    idx = np.nonzero(mask)
    return float(_world_x(affine, [i.mean() for i in idx]))


def _margin_voxels(spacing: Sequence[float], mm: float) -> list[int]:
    """Voxels per axis that surely cover ``mm`` (one spare voxel)."""
    return [int(np.ceil(mm / s)) + 1 for s in spacing]


def _ball_rows(spacing: Sequence[float], mm: float) -> dict[int, list[tuple[int, int]]]:
    """The ball of radius ``mm`` (anisotropic ``spacing``) as rows along the first axis: for each
    half-width ``w`` (voxels), the (dy, dz) offsets whose row is ``-w..w``. An offset belongs to
    the ball when its Euclidean length in mm is at most ``mm``."""
    sx, sy, sz = (float(s) for s in spacing)
    rows: dict[int, list[tuple[int, int]]] = {}
    for dz in range(-int(mm // sz), int(mm // sz) + 1):
        for dy in range(-int(mm // sy), int(mm // sy) + 1):
            rest = (dy * sy) ** 2 + (dz * sz) ** 2
            if np.sqrt(rest) > mm:
                continue
            w = int(np.sqrt(max(mm**2 - rest, 0.0)) // sx)
            while np.sqrt(((w + 1) * sx) ** 2 + rest) <= mm:
                w += 1
            while w > 0 and np.sqrt((w * sx) ** 2 + rest) > mm:
                w -= 1
            rows.setdefault(w, []).append((dy, dz))
    return rows


def dilate_mm(mask: np.ndarray, spacing: Sequence[float], mm: float) -> np.ndarray:
    """Dilate a boolean (X, Y, Z) mask by ``mm`` (Euclidean, anisotropic ``spacing`` in mm).

    A voxel is set when a mask voxel lies within ``mm`` of it (the same set as
    ``distance_transform_edt(~mask, sampling=spacing) <= mm``). The ball is applied as rows: one
    1D maximum filter along the first axis per row half-width, OR-ed at each (y, z) offset of
    the ball, over the mask's bounding box (+ ``mm``) only; memory: two boolean copies of the box.
    """
    mask = np.asarray(mask, dtype=bool)
    if mm <= 0 or not mask.any():
        return mask.copy()
    box = _bbox(mask, _margin_voxels(spacing, mm))
    out = np.zeros_like(mask)
    sub, region = mask[box], out[box]
    ny, nz = sub.shape[1:]
    for w, offsets in _ball_rows(spacing, mm).items():
        rows = ndimage.maximum_filter1d(sub.view(np.uint8), 2 * w + 1, axis=0, mode="constant").view(bool) if w else sub
        for dy, dz in offsets:
            y0, y1, z0, z1 = max(0, dy), ny + min(0, dy), max(0, dz), nz + min(0, dz)
            region[:, y0:y1, z0:z1] |= rows[:, y0 - dy : y1 - dy, z0 - dz : z1 - dz]
    return out


def _shift(affine: np.ndarray, offset: Sequence[int]) -> np.ndarray:
    """Affine of a crop starting at index ``offset``."""
    out = affine.copy()
    out[:3, 3] = affine[:3, :3] @ np.asarray(offset, dtype=np.float64) + affine[:3, 3]
    return out


def _grow_labels(labels: np.ndarray, region: np.ndarray, footprint: np.ndarray, max_steps: int = 200) -> np.ndarray:
    """Grow ``labels`` (uint8, 0 = unlabelled) step by step into ``region`` through
    ``footprint`` neighbours until nothing changes: each voxel takes the label that reaches it
    first (the larger label where two arrive in the same step)."""
    out = labels.copy()
    for _ in range(max_steps):
        free = region & (out == 0)
        if not free.any():
            break
        grown = ndimage.grey_dilation(out, footprint=footprint)
        step = free & (grown > 0)
        if not step.any():
            break
        out[step] = grown[step]
    return out


def _assign_from_seeds(region: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    """Right/left labels for ``region`` (bool, slice axis last) from core ``seeds`` (1, 2).

    Per axial slice, a connected part of the region holding cores of one side takes that side;
    a part holding both (where the lungs touch) is shared by growing the cores in-plane
    (:func:`_grow_labels`); a part holding none (apices and bases, where the cores vanished)
    takes the side that covers most of it in the neighbouring slice, sweeping up and down."""
    parts, n = ndimage.label(region, structure=_INPLANE)
    has = [np.bincount(parts[seeds == side], minlength=n + 1) > 0 for side in (RIGHT_LUNG, LEFT_LUNG)]
    table = np.zeros(n + 1, dtype=np.uint8)
    table[has[0] & ~has[1]] = RIGHT_LUNG
    table[has[1] & ~has[0]] = LEFT_LUNG
    out = table[parts]
    shared = has[0] & has[1]
    shared[0] = False
    if shared.any():
        mixed = shared[parts]
        box = _bbox(mixed, [1, 1, 0])
        grown = _grow_labels(np.where(mixed[box], seeds[box], 0).astype(np.uint8), mixed[box], _INPLANE)
        out[box] = np.where(mixed[box], grown, out[box])
    unassigned = (table == 0) & ~shared
    unassigned[0] = False
    if unassigned.any():
        for order in (range(1, region.shape[2]), range(region.shape[2] - 2, -1, -1)):
            for z in order:
                neighbour = out[:, :, z - 1] if order.step == 1 else out[:, :, z + 1]
                ids = parts[:, :, z]
                todo = unassigned[ids] & (out[:, :, z] == 0) & (neighbour > 0)
                if not todo.any():
                    continue
                votes = np.zeros((n + 1, 3), dtype=np.int64)
                np.add.at(votes, (ids[todo], neighbour[todo]), 1)
                choice = np.where(votes[:, RIGHT_LUNG] >= votes[:, LEFT_LUNG], RIGHT_LUNG, LEFT_LUNG).astype(np.uint8)
                choice[votes[:, 1:].sum(axis=1) == 0] = 0
                newly = unassigned[ids] & (out[:, :, z] == 0)
                out[:, :, z] = np.where(newly, choice[ids], out[:, :, z])
    return out


def _split_component(comp: np.ndarray, affine: np.ndarray, midline_x: float) -> np.ndarray:
    """Split one component holding both lungs: right = 1, left = 2 (uint8, same shape).

    The component is eroded in-plane step by step until two sizeable cores lie on opposite
    sides of the midline (the bridge between the lungs breaks); the cores then label the
    component (:func:`_assign_from_seeds`). Without such cores, and for what they do not reach,
    the plane x = ``midline_x`` splits the component. (Orientation-free: flips and transposes of
    the array give the same labels.)
    """
    box = _bbox(comp, [1, 1, 1])
    sub = comp[box]
    offset = [s.start for s in box]
    total = int(sub.sum())
    seeds = None
    core = sub
    for _ in range(int(np.ceil(min(sub.shape[:2]) / 2))):
        core = ndimage.binary_erosion(core, structure=_INPLANE)
        if not core.any():
            break
        cores, n = ndimage.label(core)
        if n < 2:
            continue
        sizes = np.bincount(cores.ravel())[1:]
        big = np.argsort(sizes)[::-1][:2] + 1
        if sizes[big[1] - 1] < 0.05 * total:
            continue
        xs = [_centroid_x(cores == b, _shift(affine, offset)) for b in big]
        if (xs[0] - midline_x) * (xs[1] - midline_x) < 0:
            seeds = np.zeros(sub.shape, dtype=np.uint8)
            right, left = (big[0], big[1]) if xs[0] > xs[1] else (big[1], big[0])
            seeds[cores == right] = RIGHT_LUNG
            seeds[cores == left] = LEFT_LUNG
            break
    out = np.zeros(comp.shape, dtype=np.uint8)
    if seeds is not None:
        out[box] = _assign_from_seeds(sub, seeds)
    missed = comp & (out == 0)
    if missed.any():
        idx = np.nonzero(missed)
        out[idx] = np.where(_world_x(affine, idx) > midline_x, RIGHT_LUNG, LEFT_LUNG)
    return out


def label_sides(
    mask: np.ndarray, affine: np.ndarray, midline_x: float | None = None, min_component_ml: float = 0.0
) -> np.ndarray:
    """Right (1) / left (2) labels for a boolean (X, Y, Z) lung mask, sides from the affine.

    Each side keeps its largest 3D component of at least ``min_component_ml`` (a component
    holding 20-80 % of its voxels on either side of the midline holds both lungs and is split).
    ``midline_x`` (world x in mm) defaults to the mask's centroid. Returns uint8 (X, Y, Z).
    """
    mask = np.asarray(mask, dtype=bool)
    out = np.zeros(mask.shape, dtype=np.uint8)
    if not mask.any():
        return out
    if midline_x is None:
        midline_x = _centroid_x(mask, affine)
    comps, _ = ndimage.label(mask)
    sizes = np.bincount(comps.ravel())
    sizes[0] = 0
    min_voxels = min_component_ml / voxel_volume_ml(affine)
    objects = ndimage.find_objects(comps)
    chosen: dict[int, int] = {}
    for lab in np.argsort(sizes)[::-1]:
        if sizes[lab] < max(min_voxels, 1) or len(chosen) == 2:
            break
        box = objects[lab - 1]
        idx = np.nonzero(comps[box] == lab)
        offset = [s.start for s in box]
        right_fraction = float(np.mean(_world_x(_shift(affine, offset), idx) > midline_x))
        if not chosen and 0.2 < right_fraction < 0.8:
            return _split_component(comps == lab, affine, midline_x)
        side = RIGHT_LUNG if right_fraction >= 0.5 else LEFT_LUNG
        chosen.setdefault(side, int(lab))
    for side, lab in chosen.items():
        out[comps == lab] = side
    return out


def _block_mean(a: np.ndarray, factors: Sequence[int]) -> np.ndarray:
    """Average (X, Y, Z) over in-plane blocks factors[0] x factors[1] (edges padded)."""
    fx, fy = factors
    a = np.asarray(a, dtype=np.float32)  # no copy of a float32 volume
    if fx == fy == 1:
        return a
    pad = [(0, (-a.shape[0]) % fx), (0, (-a.shape[1]) % fy), (0, 0)]
    if pad[0][1] or pad[1][1]:
        a = np.pad(a, pad, mode="edge")
    x, y, z = a.shape
    return a.reshape(x // fx, fx, y // fy, fy, z).mean(axis=(1, 3))


def _upsample(a: np.ndarray, factors: Sequence[int], shape: Sequence[int]) -> np.ndarray:
    return np.repeat(np.repeat(a, factors[0], axis=0), factors[1], axis=1)[: shape[0], : shape[1]]


def _body_mask(tissue: np.ndarray, opening_voxels: int) -> np.ndarray:
    """Largest 3D tissue component after an in-plane opening, holes filled per slice."""
    opened = ndimage.binary_opening(tissue, structure=_INPLANE, iterations=opening_voxels)
    comps, n = ndimage.label(opened)
    if n == 0:
        return np.zeros_like(tissue)
    sizes = np.bincount(comps.ravel())
    sizes[0] = 0
    return _per_slice_fill(comps == int(np.argmax(sizes)))


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
        midline = _world_x(affine, [i.mean() for i in np.nonzero(body[:, :, z])] + [z])
        areas = np.bincount(labels.ravel()) * pixel_cm2
        keep = []
        for lab, box in enumerate(ndimage.find_objects(labels), start=1):
            ext = np.array([(box[0].stop - box[0].start) * spacing[0], (box[1].stop - box[1].start) * spacing[1]])
            fill = areas[lab] / (ext[0] * ext[1] / 100.0)
            if not (0.5 <= areas[lab] <= p.max_airway_cm2 and fill >= 0.5 and ext.max() <= 2 * ext.min()):
                continue
            idx = np.nonzero(labels[box] == lab)
            cx = _world_x(affine, [idx[0].mean() + box[0].start, idx[1].mean() + box[1].start, z])
            if abs(cx - midline) <= p.airway_midline_mm:
                keep.append(lab)
        if keep:
            return z, np.isin(labels, keep)
    return None


def _airway_mask(candidates: np.ndarray, body: np.ndarray, affine: np.ndarray, p: LungMaskParams) -> np.ndarray:
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
    inplane = _INPLANE[:, :, 1]
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
            cuts.append((ndimage.binary_dilation(separate, structure=inplane), 0))
        separate = np.isin(labels, small)
        previous = separate.copy()
        ongoing = []
        for footprint, age in cuts:
            cut = footprint & large
            if age < max_merged and cut.any():
                previous |= cut
                ongoing.append((ndimage.binary_dilation(footprint, structure=inplane), age + 1))
        cuts = ongoing
        airway[:, :, z] = previous
        z += down
    return airway


def _close_and_fill(labels: np.ndarray, closing_voxels: int) -> np.ndarray:
    """Per label: in-plane closing then per-slice hole filling (vessels, airways, nodules)."""
    out = labels.copy()
    for side in (RIGHT_LUNG, LEFT_LUNG):
        mask = labels == side
        box = _bbox(mask, [closing_voxels + 1, closing_voxels + 1, 0])
        if box is None:
            continue
        sub = mask[box]
        if closing_voxels > 0:
            padded = np.pad(sub, [(closing_voxels, closing_voxels)] * 2 + [(0, 0)])
            closed = ndimage.binary_closing(padded, structure=_INPLANE, iterations=closing_voxels)
            sub = closed[closing_voxels:-closing_voxels, closing_voxels:-closing_voxels]
        sub = _per_slice_fill(sub)
        region = out[box]
        region[sub & (region == 0)] = side
    return out


def _refine(labels_c: np.ndarray, air: np.ndarray, factors: Sequence[int]) -> np.ndarray:
    """Upsample coarse labels; within one coarse voxel of their boundary use the full-res HU air."""
    if tuple(factors) == (1, 1):
        return labels_c
    inner_c = ndimage.binary_erosion(labels_c > 0, structure=_INPLANE)
    grown_c = ndimage.grey_dilation(labels_c, footprint=_INPLANE)
    out = np.zeros(air.shape, dtype=np.uint8)
    coarse_box = _bbox(grown_c > 0, [0, 0, 0])
    if coarse_box is None:
        return out
    # the full-resolution box of the coarse one; only it is upsampled
    box = tuple(
        slice(c.start * f, min(n, c.stop * f)) for c, f, n in zip(coarse_box[:2], factors, air.shape[:2])
    ) + coarse_box[2:]
    box_shape = [b.stop - b.start for b in box[:2]]

    def upsampled(coarse: np.ndarray) -> np.ndarray:
        return _upsample(coarse[coarse_box], factors, box_shape)

    inner = upsampled(inner_c)
    grown = upsampled(grown_c)
    band = (grown > 0) & ~inner & air[box]
    # band air must reach the lung within its slice (not e.g. an airway beyond a thin wall)
    comps, n = ndimage.label(inner | band, structure=_INPLANE)
    reached = _label_set(comps, n, comps[inner])[comps] | ~inner.any(axis=(0, 1))
    region = out[box]
    np.copyto(region, upsampled(labels_c), where=inner)
    np.copyto(region, grown, where=band & reached)
    for side in (RIGHT_LUNG, LEFT_LUNG):
        # out is zero outside box: the side's bounding box is found there, then grown by one
        # voxel in-plane (so that background touching it is open) within the whole volume
        side_box = _bbox(region == side, [0, 0, 0])
        if side_box is None:
            continue
        side_box = tuple(
            slice(max(0, b.start + o.start - m), min(size, b.stop + o.start + m))
            for b, o, m, size in zip(side_box, box, (1, 1, 0), out.shape)
        )
        sub = out[side_box]
        sub[_per_slice_fill(sub == side) & (sub == 0)] = side
    return out


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
    """Right (1) / left (2) lung labels, uint8 (X, Y, Z), for a CT volume (X, Y, Z) in HU.

    ``affine``: MONAI (RAS world, mm) 4x4 affine of ``hu``; ``params``: fields of
    :class:`LungMaskParams`. See the module docstring for the steps.
    """
    p = LungMaskParams(**params)
    hu = np.asarray(hu)
    affine = np.asarray(affine, dtype=np.float64)
    perm, affine_t = _axial_last(affine)
    hu_t = np.transpose(hu, perm)
    spacing = voxel_spacing(affine_t)
    factors = [max(1, int(round(p.working_spacing_mm / s))) for s in spacing[:2]]
    coarse_affine = affine_t.copy()
    coarse_affine[:3, :2] = affine_t[:3, :2] * factors
    coarse_affine[:3, 3] = affine_t[:3, 3] + affine_t[:3, :2] @ ((np.asarray(factors) - 1) / 2.0)
    coarse_spacing = voxel_spacing(coarse_affine)

    mean_hu = _block_mean(hu_t, factors)
    air = mean_hu < p.threshold_hu
    body = _body_mask(~air, max(1, int(round(p.body_opening_mm / coarse_spacing[:2].mean()))))
    candidates = air & body
    candidates &= ~_airway_mask(candidates, body, coarse_affine, p)
    # drop anything touching the in-plane border of the volume
    comps, n = ndimage.label(candidates)
    border = np.concatenate([comps[0].ravel(), comps[-1].ravel(), comps[:, 0].ravel(), comps[:, -1].ravel()])
    candidates &= ~_label_set(comps, n, border)[comps]

    midline_x = _centroid_x(body, coarse_affine) if body.any() else None
    labels_c = label_sides(candidates, coarse_affine, midline_x, p.min_component_ml)
    closing_voxels = int(round(p.closing_mm / coarse_spacing[:2].mean()))
    labels_c = _close_and_fill(labels_c, closing_voxels)
    labels_t = _refine(labels_c, hu_t < p.threshold_hu, factors)
    if p.fill_pathology:
        extra_c, dependent_c = _pathology_and_cavity(labels_c, mean_hu, body, coarse_affine, p)
        _add_fills(labels_t, hu_t, extra_c, dependent_c, factors, p)
    return np.ascontiguousarray(np.transpose(labels_t, np.argsort(perm))).astype(np.uint8)


def _add_fills(
    labels: np.ndarray, hu: np.ndarray, extra_c: np.ndarray, dependent_c: np.ndarray, factors: Sequence[int],
    p: LungMaskParams,
) -> None:
    """Add the coarse fills of :func:`_pathology_and_cavity` to the full-resolution ``labels``
    (in place, where they are 0; slice axis last).

    The dependent and lateral fills keep their density limits at full resolution (a coarse voxel
    at the lung's edge mixes lung with chest wall or extrapleural fat); the cavity outside the
    lungs takes no air (skin, airways); the filled lung then grows by up to one coarse voxel into
    lung-density tissue around it, geodesically (through such voxels only, so no islands).
    """
    box = _bbox(extra_c > 0, [0, 0, 0])
    if box is None:
        return
    full_box = tuple(
        slice(b.start * f, min(n, b.stop * f)) for b, f, n in zip(box[:2], factors, labels.shape[:2])
    ) + box[2:]
    shape = [b.stop - b.start for b in full_box[:2]]
    extra = _upsample(extra_c[box], factors, shape)
    hu_box = hu[full_box]
    fat_or_dense = (hu_box > p.max_dense_hu) | ((hu_box >= p.fat_low_hu) & (hu_box <= p.fat_high_hu))
    too_dense = _upsample(dependent_c[box], factors, shape) & fat_or_dense
    outside_air = (extra == THORAX) & (hu_box < p.threshold_hu)
    region = labels[full_box]
    np.copyto(region, extra, where=(region == 0) & (extra > 0) & ~too_dense & ~outside_air)
    edge = ((region == 0) | (region == THORAX)) & ~fat_or_dense & (hu_box >= p.threshold_hu)
    for side in (RIGHT_LUNG, LEFT_LUNG):
        added = (extra == side) & (region == side)
        if added.any():
            grown = ndimage.binary_dilation(added, structure=_INPLANE, iterations=max(factors), mask=edge | added)
            region[grown & edge] = side
            edge &= ~grown


def _pathology_and_cavity(
    labels_c: np.ndarray, mean_hu: np.ndarray, body: np.ndarray, affine: np.ndarray, p: LungMaskParams
) -> tuple[np.ndarray, np.ndarray]:
    """Coarse labels of what the aerated ``labels_c`` miss: diseased lung per side (1, 2) and the
    rest of the thoracic cavity (:data:`THORAX`), 0 elsewhere and on the aerated lung; and the
    boolean mask of the lung voxels added by the dependent fill alone."""
    spacing = voxel_spacing(affine)
    extra = np.zeros(labels_c.shape, dtype=np.uint8)
    dependent_all = np.zeros(labels_c.shape, dtype=bool)
    # everything happens near the lungs: within the longest fill / rib margin in-plane
    reach_mm = max(p.max_fill_mm, p.rib_margin_mm) + 2 * float(spacing[:2].max())
    box = _bbox(labels_c > 0, [int(np.ceil(reach_mm / s)) for s in spacing[:2]] + [0])
    if box is None:
        return extra, dependent_all
    sub_labels, sub_hu, sub_body = labels_c[box], mean_hu[box], body[box]
    box_affine = _shift(affine, [s.start for s in box])
    fat = (sub_hu >= p.fat_low_hu) & (sub_hu <= p.fat_high_hu)
    fat_core = ndimage.binary_opening(fat, structure=_INPLANE)
    free = (sub_labels == 0) & ~fat_core
    sub_extra = extra[box]
    for side in (RIGHT_LUNG, LEFT_LUNG):
        lung = sub_labels == side
        dependent = np.zeros_like(lung)
        lateral = (1.0, 0.0) if side == RIGHT_LUNG else (-1.0, 0.0)  # world x: + = patient right
        for direction in (posterior_axis(box_affine), index_direction(box_affine, lateral)):
            dependent |= dependent_fill(
                lung, sub_hu, sub_body, box_affine, spacing, p.threshold_hu, p.max_dense_hu, p.max_fill_mm,
                direction,
            )
        dependent &= free & (sub_extra == 0)
        grown = lung | dependent
        pockets = pocket_fill(grown, sub_hu, box_affine, side == RIGHT_LUNG, (p.fat_low_hu, p.fat_high_hu))
        enclosed = _per_slice_fill(grown | (pockets & free & (sub_extra == 0)))
        dependent_all[box] |= dependent & ~pockets
        sub_extra[enclosed & (sub_labels == 0) & (sub_extra == 0)] = side
    lungs = (labels_c > 0) | (extra > 0)
    cavity = np.zeros_like(lungs)
    cavity[box] = thoracic_cavity(lungs[box], sub_hu, sub_body, box_affine, p.bone_hu, p.rib_margin_mm)
    cavity = (cavity | mirror_sides(cavity, body, affine)) & body
    extra[cavity & ~lungs] = THORAX
    return extra, dependent_all


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
    positive = _to_numpy(mask) > 0
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
        labels = lung_labels(_spatial(img), affine_of(img, affine), **asdict(self.params))[None]
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
        labels = _to_numpy(lung)
        if labels.shape[-3:] != tuple(mask.shape[-3:]):
            raise ValueError(f"lung mask shape {labels.shape} does not match mask shape {tuple(mask.shape)}")
        labels = labels.reshape(labels.shape[-3:])
        lung_np = labels > 0
        lungs_only = lung_np & (labels != THORAX)
        # only mask voxels outside the lung can be dropped: the dilation runs around them alone
        outside = (_to_numpy(mask) != 0).reshape((-1,) + lung_np.shape)
        outside = outside[0] if len(outside) == 1 else outside.any(axis=0)
        np.greater(outside, lung_np, out=outside)  # outside & ~lung without a temporary
        margin = _margin_voxels(spacing, self.dilation_mm)
        box = _bbox(outside, margin)
        if box is None:
            return mask
        out = mask.clone() if isinstance(mask, torch.Tensor) else np.array(mask, copy=True)
        # beyond the lung's bounding box + margin everything is farther than dilation_mm
        near = _bbox(lungs_only, margin)
        if near is not None:
            near = _box_intersection(box, near)
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
