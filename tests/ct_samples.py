"""The real chest CT of ``../shared`` loaded for the tests (cached per session). The synthetic
phantoms are in :mod:`infnet_monai.data.phantoms`."""

from __future__ import annotations

import functools
from pathlib import Path

from monai.data import MetaTensor
from monai.transforms import LoadImage, Orientation

from infnet_monai.utils.geometry import RAS_LABELS


@functools.lru_cache(maxsize=1)
def real_ct(series_dir: Path) -> MetaTensor:
    """The real DICOM series as a MetaTensor (1, X, Y, Z) in HU, oriented RAS."""
    ct = LoadImage(image_only=True, ensure_channel_first=True, reader="PydicomReader")(str(series_dir))
    return Orientation(axcodes="RAS", labels=RAS_LABELS)(ct)


@functools.lru_cache(maxsize=1)
def real_lung(series_dir: Path) -> MetaTensor:
    """LungMask of :func:`real_ct` (computed once per test session)."""
    from infnet_monai.transforms.lung import LungMask

    return LungMask()(real_ct(series_dir))
