"""File digests: the remembered digest equals the file's, and a changed file is read again."""

from __future__ import annotations

import os

import infnet_monai.utils.digest as digest_module
from infnet_monai.utils.digest import cached_file_digest, file_digest


def test_cached_digest_is_the_files_and_follows_changes(tmp_path, monkeypatch):
    monkeypatch.setenv("INFNET_MONAI_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "weights.pt"
    path.write_bytes(b"a" * 1000)
    reads = []
    real = digest_module.file_digest
    monkeypatch.setattr(digest_module, "file_digest", lambda *a, **k: reads.append(a[0]) or real(*a, **k))

    first = cached_file_digest(path, digest_size=32)
    assert first == file_digest(path, digest_size=32) and len(reads) == 1
    assert cached_file_digest(path, digest_size=32) == first and len(reads) == 1  # remembered
    assert cached_file_digest(path) == file_digest(path) and len(reads) == 2  # another algorithm: its own record

    path.write_bytes(b"b" * 1000)  # same size, new contents and modification time
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert cached_file_digest(path, digest_size=32) == file_digest(path, digest_size=32) != first
    assert len(reads) == 3


def test_unwritable_cache_still_gives_the_digest(tmp_path, monkeypatch):
    blocker = tmp_path / "cache"
    blocker.write_text("a file where the cache folder would be")
    monkeypatch.setenv("INFNET_MONAI_CACHE", str(blocker))
    path = tmp_path / "w.pt"
    path.write_bytes(b"xyz")
    assert cached_file_digest(path) == file_digest(path)
