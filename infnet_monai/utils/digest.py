"""File digests: one streaming reader for the weights' checks, cache keys and prior folders."""

from __future__ import annotations

import hashlib
import os

__all__ = ["file_digest"]


def file_digest(path: str | os.PathLike, algorithm: str = "sha256", digest_size: int | None = None) -> str:
    """Hex digest of the file's bytes (``algorithm`` of :mod:`hashlib`; ``digest_size`` for
    blake2b), read in 4 MiB chunks (about 0.1 s for Inf-Net's 125 MB weights)."""
    digest = hashlib.new(algorithm) if digest_size is None else hashlib.blake2b(digest_size=digest_size)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()
