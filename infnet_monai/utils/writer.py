"""A NIfTI writer for MONAI's ``SaveImage`` that never leaves a partial file."""

from __future__ import annotations

import os
from pathlib import Path

from monai.data import NibabelWriter

from .atomic import atomic_output
from .fast_gzip import register_fast_gzip

__all__ = ["AtomicNibabelWriter"]


class AtomicNibabelWriter(NibabelWriter):
    """``NibabelWriter`` that writes to a temporary sibling and renames it onto the target, so
    an interrupted run leaves either the old file or the complete new one; ``.nii.gz`` is
    compressed with ISA-L when installed (:func:`~infnet_monai.utils.fast_gzip.register_fast_gzip`)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        register_fast_gzip()

    def write(self, filename_or_obj: os.PathLike | str, verbose: bool = False, **obj_kwargs) -> None:
        with atomic_output(Path(filename_or_obj)) as tmp:
            super().write(str(tmp), verbose=verbose, **obj_kwargs)
