"""Loading chest CT volumes in MONAI transforms: ``LoadCT``/``LoadCTd`` are ``LoadImage``/
``LoadImaged`` bound to :class:`~infnet_monai.data.ct_reader.CTReader` without MONAI's fallback
readers, so that a rejected input raises ``CTInputError`` instead of being silently read by
another reader. Input discovery is :mod:`infnet_monai.data.inputs`, the DICOM series
:mod:`infnet_monai.data.dicom_series`.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
from monai.config import DtypeLike, KeysCollection, PathLike
from monai.data import ImageReader
from monai.transforms import LoadImage, LoadImaged

from infnet_monai.data.ct_reader import CTReader

__all__ = ["LoadCT", "LoadCTd"]


class LoadCT(LoadImage):
    """``LoadImage`` that reads with a ``CTReader`` only.

    ``LoadImage(reader=CTReader())`` falls back to MONAI's other readers when ``CTReader`` raises,
    so an MR series or a 2D NIfTI would be read silently by ``PydicomReader``/``NibabelReader``;
    this transform always passes its ``CTReader`` as the runtime reader, so ``CTInputError``
    reaches the caller. Returns a float32 MetaTensor (X, Y, Z) in HU, (1, X, Y, Z) with
    ``ensure_channel_first``. ``check_hu``: refuse volumes not in HU (False for label volumes).
    Other arguments as ``LoadImage``.
    """

    def __init__(
        self,
        series_uid: str | None = None,
        image_only: bool = True,
        dtype: DtypeLike | None = np.float32,
        ensure_channel_first: bool = False,
        simple_keys: bool = False,
        prune_meta_pattern: str | None = None,
        prune_meta_sep: str = ".",
        expanduser: bool = True,
        affine_lps_to_ras: bool = True,
        check_hu: bool = True,
    ) -> None:
        self.ct_reader = CTReader(series_uid=series_uid, affine_lps_to_ras=affine_lps_to_ras, check_hu=check_hu)
        with warnings.catch_warnings():  # LoadImage also builds MONAI's default readers, never used here
            warnings.simplefilter("ignore", UserWarning)
            super().__init__(
                self.ct_reader, image_only, dtype, ensure_channel_first, simple_keys, prune_meta_pattern,
                prune_meta_sep, expanduser,
            )

    def __call__(self, filename: Sequence[PathLike] | PathLike, reader: ImageReader | None = None):
        return super().__call__(filename, reader=reader or self.ct_reader)


class LoadCTd(LoadImaged):
    """Dictionary twin of :class:`LoadCT`; arguments as ``LoadImaged`` plus ``series_uid`` and
    ``check_hu`` (False for label volumes)."""

    def __init__(
        self,
        keys: KeysCollection,
        series_uid: str | None = None,
        dtype: DtypeLike | None = np.float32,
        meta_keys: KeysCollection | None = None,
        meta_key_postfix: str = "meta_dict",
        overwriting: bool = False,
        image_only: bool = True,
        ensure_channel_first: bool = False,
        simple_keys: bool = False,
        prune_meta_pattern: str | None = None,
        prune_meta_sep: str = ".",
        allow_missing_keys: bool = False,
        expanduser: bool = True,
        affine_lps_to_ras: bool = True,
        check_hu: bool = True,
    ) -> None:
        super().__init__(
            keys, None, dtype, meta_keys, meta_key_postfix, overwriting, image_only, ensure_channel_first,
            simple_keys, prune_meta_pattern, prune_meta_sep, allow_missing_keys, expanduser,
        )
        self._loader = LoadCT(
            series_uid, image_only, dtype, ensure_channel_first, simple_keys, prune_meta_pattern, prune_meta_sep,
            expanduser, affine_lps_to_ras, check_hu,
        )
