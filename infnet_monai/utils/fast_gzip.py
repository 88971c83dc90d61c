"""Faster ``.nii.gz`` reading and writing through nibabel's own extension point.

nibabel opens compressed images through ``nibabel.openers.ImageOpener``, whose
``compress_ext_map`` lets packages register openers per extension. :func:`register_fast_gzip`
maps ``.gz`` to Intel ISA-L's gzip (the ``isal`` package, when installed): the same gzip format,
decompressed about 4x and compressed about 3x faster than zlib (``benchmarks/RESULTS.md``).
Without ``isal`` nibabel's own opener stays in place.
"""

from __future__ import annotations

import nibabel.openers

__all__ = ["register_fast_gzip"]

try:
    from isal import igzip
except ImportError:  # optional: plain zlib gzip through nibabel
    igzip = None


def _isal_gzip_open(filename: str, mode: str = "rb", compresslevel: int = 1):
    """ISA-L gzip file; nibabel's level (1 by default) is clipped to ISA-L's 0-3, and the header
    time is 0 like nibabel's deterministic writer."""
    if "r" in mode:
        return igzip.open(filename, mode)
    return igzip.IGzipFile(filename, mode, compresslevel=min(max(int(compresslevel), 0), 3), mtime=0)


def register_fast_gzip() -> bool:
    """Let nibabel read and write ``.gz`` images with ISA-L; returns whether it is in use."""
    if igzip is None:
        return False
    nibabel.openers.ImageOpener.compress_ext_map[".gz"] = (_isal_gzip_open, ("mode", "compresslevel"))
    return True
