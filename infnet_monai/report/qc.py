"""QC montage (PNG, PIL only): evenly spaced axial CT slices with infection and lung overlays.

Slices are shown in radiological convention, derived from the affine (MONAI world = RAS): the
patient's right on the image's left, anterior up, most superior slice first. Lung window
W 1500 / L -600 HU by default; infection is blended in red, lung outlines are drawn in green
(right lung, label 1) and blue (left lung, label 2).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from infnet_monai.utils import atomic_output
from infnet_monai.utils.geometry import affine_of, axial_axis, slice_z_mm, voxel_spacing

__all__ = [
    "INFECTION_RGB",
    "LUNG_WINDOW",
    "window_uint8",
    "RIGHT_LUNG_RGB",
    "LEFT_LUNG_RGB",
    "Tile",
    "QCLayout",
    "radiological_slice",
    "burden_lines",
    "qc_montage",
    "write_qc_png",
]

INFECTION_RGB = (255, 0, 0)
RIGHT_LUNG_RGB = (0, 255, 0)
LEFT_LUNG_RGB = (0, 128, 255)
TEXT_RGB = (255, 255, 255)
LUNG_WINDOW = (1500.0, -600.0)  # (width, level) HU: -1350..150, in the QC montage and the DICOM overlays
_COLOUR_NAMES = {(255, 200, 0): "yellow", (220, 30, 30): "red", (255, 0, 0): "red"}


@dataclass
class Tile:
    """One montage tile: slice ``index`` (array order) at world ``z_mm``, pixel ``box`` (l, t, r, b)."""

    index: int
    z_mm: float
    box: tuple[int, int, int, int]


@dataclass
class QCLayout:
    """Montage layout: header height (px) and the tiles."""

    header_px: int
    tiles: list[Tile] = field(default_factory=list)


def _volume(x: Any) -> np.ndarray:
    a = x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)
    return a[0] if a.ndim == 4 and a.shape[0] == 1 else a


def radiological_slice(volume: np.ndarray, affine: np.ndarray, index: int) -> tuple[np.ndarray, tuple[float, float]]:
    """Axial slice ``index`` of an (X, Y, Z) volume as a 2D (rows, columns) view in radiological
    convention (rows anterior -> posterior, columns patient right -> left), and its pixel size
    (row mm, column mm)."""
    affine = np.asarray(affine, dtype=np.float64)
    spacing = voxel_spacing(affine)
    axis = axial_axis(affine)
    p, q = (d for d in range(3) if d != axis)
    col, row = (p, q) if abs(affine[0, p]) / spacing[p] >= abs(affine[0, q]) / spacing[q] else (q, p)
    view = np.take(volume, index, axis=axis)  # axes (p, q)
    if (row, col) != (p, q):
        view = view.T
    if affine[1, row] > 0:  # index runs to anterior: flip so that anterior is up
        view = view[::-1]
    if affine[0, col] > 0:  # index runs to the patient's right: flip so that right is on the left
        view = view[:, ::-1]
    return np.ascontiguousarray(view), (float(spacing[row]), float(spacing[col]))


def burden_lines(report: dict[str, Any]) -> list[str]:
    """Header text lines with the figures of a burden report."""
    lung, inf, pct, sev = (report[k] for k in ("lung_ml", "infection_ml", "percent_involved", "severity_score"))
    return [
        f"lung R/L/total: {lung['right']:.0f} / {lung['left']:.0f} / {lung['total']:.0f} mL",
        f"infection R/L/total: {inf['right']:.1f} / {inf['left']:.1f} / {inf['total']:.1f} mL"
        f" (outside lung {inf['outside_lung']:.1f} mL)",
        f"involved R/L/total: {pct['right']:.2f} / {pct['left']:.2f} / {pct['total']:.2f} %"
        f"   CT severity R/L/total: {sev['right']} / {sev['left']} / {sev['total']} (of 4/4/8)",
    ] + (
        ["patterns: " + ", ".join(f"{name} {ml:.1f} mL" for name, ml in report["pattern_ml"].items())]
        if report.get("pattern_ml") else []
    )


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has no scalable default font
        return ImageFont.load_default()


def window_uint8(view: np.ndarray, window: tuple[float, float] = LUNG_WINDOW) -> np.ndarray:
    """HU values mapped to uint8 gray through ``window`` = (width, level) HU (clipped)."""
    width, level = window
    return (np.clip((view - (level - width / 2)) / width, 0, 1) * 255).astype(np.uint8)


def _resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    return np.asarray(Image.fromarray(mask.astype(np.uint8)).resize(size, Image.NEAREST))


def _tile_size(shape: Sequence[int], pixel_mm: tuple[float, float], tile_px: int) -> tuple[int, int]:
    height_mm, width_mm = shape[0] * pixel_mm[0], shape[1] * pixel_mm[1]
    scale = tile_px / max(height_mm, width_mm)
    return max(1, round(width_mm * scale)), max(1, round(height_mm * scale))


def qc_montage(
    image: Any,
    infection: Any = None,
    lung: Any = None,
    affine: Any = None,
    title: str = "",
    lines: Sequence[str] = (),
    n_slices: int = 12,
    columns: int = 4,
    tile_px: int = 256,
    window: tuple[float, float] = LUNG_WINDOW,
    alpha: float = 0.45,
    class_colours: dict[int, tuple[str, tuple[int, int, int]]] | None = None,
) -> tuple[Image.Image, QCLayout]:
    """RGB montage of ``n_slices`` evenly spaced axial slices of a CT (1, X, Y, Z) in HU.

    Slices are picked among those with lung when ``lung`` (labels, 1 = right, 2 = left) is
    given. ``infection`` (> 0) is blended in red with opacity ``alpha``, or, with
    ``class_colours`` (label value -> (name, RGB)), each label value in its colour. ``window`` = (width,
    level) in HU. Tiles keep the physical aspect ratio, longest side ``tile_px``. The header
    holds ``title`` and ``lines``. Returns the image and its layout.
    """
    affine = affine_of(image, affine)
    ct = _volume(image).astype(np.float32)
    inf = _volume(infection).astype(np.uint8) if infection is not None else None
    colours = {v: np.asarray(rgb, np.float32) for v, (_, rgb) in (class_colours or {}).items() if v > 0}
    legend = "red = infection"
    if class_colours:
        legend = ", ".join(
            f"{_COLOUR_NAMES.get(tuple(rgb), str(tuple(rgb)))} = {name}" for v, (name, rgb) in class_colours.items() if v > 0
        )
    lab = _volume(lung).astype(np.uint8) if lung is not None else None
    axis = axial_axis(affine)
    candidates = np.arange(ct.shape[axis])
    if lab is not None and lab.any():
        candidates = np.flatnonzero(lab.any(axis=tuple(d for d in range(3) if d != axis)))
    spread = np.round(np.linspace(0, len(candidates) - 1, min(n_slices, len(candidates)))).astype(int)
    z_of = {int(k): slice_z_mm(affine, ct.shape, int(k)) for k in np.unique(candidates[spread])}
    picks = sorted(z_of, key=lambda k: -z_of[k])  # most superior first

    font_size = max(10, tile_px // 18)
    font = _font(font_size)
    header_lines = [title, *lines, "radiological view: patient's right on the left, anterior up; "
                    f"{legend}, green/blue outline = right/left lung"]
    line_px = font_size + 4
    header_px = 8 + line_px * len(header_lines)
    view0, pixel_mm = radiological_slice(ct, affine, picks[0])
    size = _tile_size(view0.shape, pixel_mm, tile_px)
    rows = math.ceil(len(picks) / columns)
    canvas = Image.new("RGB", (columns * size[0], header_px + rows * size[1]), (0, 0, 0))
    draw = ImageDraw.Draw(canvas)
    for i, text in enumerate(header_lines):
        draw.text((6, 4 + i * line_px), text, fill=TEXT_RGB, font=font)

    layout = QCLayout(header_px=header_px)
    for n, k in enumerate(picks):
        gray = Image.fromarray(window_uint8(radiological_slice(ct, affine, k)[0], window)).resize(size, Image.BILINEAR)
        rgb = np.repeat(np.asarray(gray, dtype=np.float32)[..., None], 3, axis=-1)
        if inf is not None:
            view = _resize_mask(radiological_slice(inf, affine, k)[0], size)
            overlays = [(view == v, c) for v, c in colours.items()] or [(view > 0, np.asarray(INFECTION_RGB, np.float32))]
            for selected, colour in overlays:
                rgb[selected] = (1 - alpha) * rgb[selected] + alpha * colour
        if lab is not None:
            labels = _resize_mask(radiological_slice(lab, affine, k)[0], size)
            for value, colour in ((1, RIGHT_LUNG_RGB), (2, LEFT_LUNG_RGB)):
                side = labels == value
                rgb[side & ~ndimage.binary_erosion(side)] = colour
        left, top = (n % columns) * size[0], header_px + (n // columns) * size[1]
        canvas.paste(Image.fromarray(rgb.round().astype(np.uint8)), (left, top))
        draw.text((left + 4, top + 2), f"slice {k}  z {z_of[k]:.0f} mm", fill=TEXT_RGB, font=font)
        draw.text((left + 4, top + size[1] - line_px), "R", fill=TEXT_RGB, font=font)
        draw.text((left + size[0] - font_size, top + size[1] - line_px), "L", fill=TEXT_RGB, font=font)
        layout.tiles.append(Tile(index=int(k), z_mm=z_of[k], box=(left, top, left + size[0], top + size[1])))
    return canvas, layout


def write_qc_png(path: str | os.PathLike, *args: Any, overwrite: bool = False, **kwargs: Any) -> QCLayout:
    """:func:`qc_montage` written to ``path`` as PNG (atomic); returns the layout."""
    image, layout = qc_montage(*args, **kwargs)
    with atomic_output(path, overwrite=overwrite) as tmp:
        image.save(tmp, format="PNG")
    return layout
