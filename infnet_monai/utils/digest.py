"""File digests: one streaming reader for the weights' checks, cache keys and prior folders, and
the same remembered per file identity so that a run does not read a large file only to name
its compiled package."""

from __future__ import annotations

import hashlib
import os

from infnet_monai.utils.atomic import atomic_output
from infnet_monai.utils.cache import cache_dir

__all__ = ["file_digest", "cached_file_digest"]


def file_digest(path: str | os.PathLike, algorithm: str = "sha256", digest_size: int | None = None) -> str:
    """Hex digest of the file's bytes (``algorithm`` of :mod:`hashlib`; ``digest_size`` for
    blake2b), read in 4 MiB chunks (about 0.1 s for Inf-Net's 125 MB weights)."""
    digest = hashlib.new(algorithm) if digest_size is None else hashlib.blake2b(digest_size=digest_size)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def cached_file_digest(path: str | os.PathLike, algorithm: str = "sha256", digest_size: int | None = None) -> str:
    """:func:`file_digest`, remembered in the user's cache folder (``digests/``) under the file's
    identity: real path, size, modification time (ns) and inode. A file changed in any of them is
    read again. Falls back to reading the file when the cache cannot be written."""
    info = os.stat(path)
    identity = f"{os.path.realpath(path)}|{info.st_size}|{info.st_mtime_ns}|{info.st_ino}|{algorithm}|{digest_size}"
    record = cache_dir("digests") / f"{hashlib.blake2b(identity.encode(), digest_size=16).hexdigest()}.txt"
    try:
        kept_identity, kept_digest = record.read_text().splitlines()[:2]
        if kept_identity == identity:
            return kept_digest
    except (OSError, ValueError):
        pass
    digest = file_digest(path, algorithm, digest_size)
    try:
        with atomic_output(record) as tmp:
            tmp.write_text(f"{identity}\n{digest}\n")
    except OSError:
        pass  # a read-only cache: the digest is read from the file every time
    return digest
