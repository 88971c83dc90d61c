"""Right / left lung labels for an air mask: the largest 3D component on each side of the midline,
and the split of a single component holding both lungs (where they touch).

Arrays are (X, Y, Z) with the slice axis last; ``affine`` maps them to RAS world (mm), so the
sides come from it whatever the array orientation.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage

from infnet_monai.utils.geometry import voxel_volume_ml

from . import slice_morphology as sm
from .lung_common import INPLANE, LEFT_LUNG, RIGHT_LUNG, bbox, centroid_x, right_of, shift

__all__ = ["label_sides"]


def _grow_labels(labels: np.ndarray, region: np.ndarray, max_steps: int = 200) -> np.ndarray:
    """Grow ``labels`` (uint8 (X, Y, Z): 0 unlabelled, 1, 2) step by step into ``region`` through
    in-plane 4-neighbours until nothing changes: each voxel takes the label that reaches it first
    (the larger label where two arrive in the same step; ``grey_dilation`` by
    :data:`~infnet_monai.transforms.slice_morphology.CROSS` per step). Bit-packed."""
    grown = [sm.pack(labels == RIGHT_LUNG), sm.pack(labels == LEFT_LUNG)]
    free = sm.pack(region & (labels == 0))
    for _ in range(max_steps):
        if not free.any():
            break
        left = sm.dilate(grown[1]) & free
        right = sm.dilate(grown[0]) & free & ~left
        if not (left.any() or right.any()):
            break
        grown[0] |= right
        grown[1] |= left
        free &= ~(left | right)
    out = labels.copy()
    z = labels.shape[2]
    out[sm.unpack(grown[0], z) & (labels == 0)] = RIGHT_LUNG
    out[sm.unpack(grown[1], z) & (labels == 0)] = LEFT_LUNG
    return out


def _assign_from_seeds(region: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    """Right/left labels (uint8 (X, Y, Z)) for ``region`` (bool, slice axis last) from core
    ``seeds`` (1, 2).

    Per axial slice, a connected part of the region holding cores of one side takes that side;
    a part holding both (where the lungs touch) is shared by growing the cores in-plane
    (:func:`_grow_labels`); a part holding none (apices and bases, where the cores vanished)
    takes the side that covers most of it in the neighbouring slice, sweeping up and down."""
    parts, n = ndimage.label(region, structure=INPLANE)
    has = [np.bincount(parts[seeds == side], minlength=n + 1) > 0 for side in (RIGHT_LUNG, LEFT_LUNG)]
    table = np.zeros(n + 1, dtype=np.uint8)
    table[has[0] & ~has[1]] = RIGHT_LUNG
    table[has[1] & ~has[0]] = LEFT_LUNG
    out = table[parts]
    shared = has[0] & has[1]
    shared[0] = False
    if shared.any():
        mixed = shared[parts]
        box = bbox(mixed, [1, 1, 0])
        grown = _grow_labels(np.where(mixed[box], seeds[box], 0).astype(np.uint8), mixed[box])
        out[box] = np.where(mixed[box], grown, out[box])
    unassigned = (table == 0) & ~shared
    unassigned[0] = False
    if unassigned.any():
        # slice by slice along Z: slice-major copies keep each slice contiguous
        parts_z = np.ascontiguousarray(np.moveaxis(parts, 2, 0))
        out_z = np.ascontiguousarray(np.moveaxis(out, 2, 0))
        unassigned_z = unassigned[parts_z]
        todo_slices = np.flatnonzero(unassigned_z.any(axis=(1, 2)))  # only these can change
        for step in (1, -1):  # up, then down: each slice from its neighbour in the sweep
            order = todo_slices[todo_slices >= 1] if step == 1 else todo_slices[todo_slices <= len(out_z) - 2][::-1]
            for z in order:
                neighbour, ids = out_z[z - step], parts_z[z]
                free = unassigned_z[z] & (out_z[z] == 0)
                todo = free & (neighbour > 0)
                if not todo.any():
                    continue
                votes = np.zeros((n + 1, 3), dtype=np.int64)
                np.add.at(votes, (ids[todo], neighbour[todo]), 1)
                choice = np.where(votes[:, RIGHT_LUNG] >= votes[:, LEFT_LUNG], RIGHT_LUNG, LEFT_LUNG).astype(np.uint8)
                choice[votes[:, 1:].sum(axis=1) == 0] = 0
                out_z[z] = np.where(free, choice[ids], out_z[z])
        out = np.ascontiguousarray(np.moveaxis(out_z, 0, 2))
    return out


def _split_component(sub: np.ndarray, affine: np.ndarray, origin: Sequence[int], midline_x: float) -> np.ndarray:
    """Split one component holding both lungs: right = 1, left = 2 (uint8, same shape).

    ``sub``: the component (bool (X, Y, Z)), cut to its bounding box with one background voxel
    around it, which starts at index ``origin`` of the grid of ``affine``. The component is
    eroded in-plane step by step (bit-packed) until two sizeable cores lie on opposite sides of
    the midline (the bridge between the lungs breaks); the cores then label the component
    (:func:`_assign_from_seeds`). Without such cores, and for what they do not reach, the plane
    x = ``midline_x`` splits the component.
    (Orientation-free: flips and transposes of the array give the same labels.)
    """
    total = int(np.count_nonzero(sub))
    seeds = None
    core = sm.pack(sub)
    for _ in range(int(np.ceil(min(sub.shape[:2]) / 2))):
        core = sm.erode(core)
        if not core.any():
            break
        core_mask = sm.unpack(core, sub.shape[2])
        cores, n = ndimage.label(core_mask)
        if n < 2:
            continue
        sizes = np.bincount(cores[core_mask], minlength=n + 1)[1:]
        big = np.argsort(sizes)[::-1][:2] + 1
        if sizes[big[1] - 1] < 0.05 * total:
            continue
        xs = [centroid_x(cores == b, shift(affine, origin)) for b in big]
        if (xs[0] - midline_x) * (xs[1] - midline_x) < 0:
            seeds = np.zeros(sub.shape, dtype=np.uint8)
            right, left = (big[0], big[1]) if xs[0] > xs[1] else (big[1], big[0])
            seeds[cores == right] = RIGHT_LUNG
            seeds[cores == left] = LEFT_LUNG
            break
    out = _assign_from_seeds(sub, seeds) if seeds is not None else np.zeros(sub.shape, dtype=np.uint8)
    missed = sub & (out == 0)
    if missed.any():
        right = right_of(sub.shape, affine, midline_x, origin)
        out[missed & right] = RIGHT_LUNG
        out[missed & ~right] = LEFT_LUNG
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
    if not mask.any():
        return np.zeros(mask.shape, dtype=np.uint8)
    if midline_x is None:
        midline_x = centroid_x(mask, affine)
    comps, _ = ndimage.label(mask)
    return sides_of_components(comps, mask, affine, midline_x, min_component_ml)


def sides_of_components(
    comps: np.ndarray, mask: np.ndarray, affine: np.ndarray, midline_x: float, min_component_ml: float
) -> np.ndarray:
    """:func:`label_sides` from 3D components: ``comps`` is ``ndimage.label`` of ``mask`` or of
    a larger mask whose other components ``mask`` leaves out whole (their size counts 0)."""
    out = np.zeros(mask.shape, dtype=np.uint8)
    objects = ndimage.find_objects(comps)
    sizes = np.bincount(comps[mask], minlength=len(objects) + 1)
    sizes[0] = 0
    min_voxels = min_component_ml / voxel_volume_ml(affine)
    chosen: dict[int, tuple[slice, ...]] = {}
    sides: dict[int, int] = {}
    for lab in np.argsort(sizes)[::-1]:
        if sizes[lab] < max(min_voxels, 1) or len(sides) == 2:
            break
        box = objects[lab - 1]
        comp = comps[box] == lab
        box_affine = shift(affine, [s.start for s in box])
        right_fraction = np.count_nonzero(comp & right_of(comp.shape, box_affine, midline_x)) / np.count_nonzero(comp)
        if not sides and 0.2 < right_fraction < 0.8:
            # the component and one voxel around it (background, where the volume allows)
            grown = tuple(slice(max(0, s.start - 1), min(n, s.stop + 1)) for s, n in zip(box, comps.shape))
            out[grown] = _split_component(comps[grown] == lab, affine, [s.start for s in grown], midline_x)
            return out
        side = RIGHT_LUNG if right_fraction >= 0.5 else LEFT_LUNG
        if side not in sides:
            sides[side] = int(lab)
            chosen[side] = box
    for side, lab in sides.items():
        region = out[chosen[side]]
        region[comps[chosen[side]] == lab] = side
    return out
