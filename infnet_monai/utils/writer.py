"""A NIfTI writer for MONAI's ``SaveImage`` that never leaves a partial file."""

from __future__ import annotations

import os
from pathlib import Path

from monai.data import NibabelWriter

from .atomic import atomic_output

__all__ = ["AtomicNibabelWriter"]


class AtomicNibabelWriter(NibabelWriter):
    """``NibabelWriter`` that writes to a temporary sibling and renames it onto the target, so
    an interrupted run leaves either the old file or the complete new one."""

    def write(self, filename_or_obj: os.PathLike | str, verbose: bool = False, **obj_kwargs) -> None:
        with atomic_output(Path(filename_or_obj)) as tmp:
            super().write(str(tmp), verbose=verbose, **obj_kwargs)
