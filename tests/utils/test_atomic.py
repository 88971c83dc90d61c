"""Atomic outputs: complete file or nothing, normal permissions, no clobbering without consent."""

from __future__ import annotations

import os

import pytest

from infnet_monai.utils import atomic_output


def test_written_file_has_umask_permissions(tmp_path):
    target = tmp_path / "out.nii.gz"
    with atomic_output(target) as tmp:
        assert tmp.name.endswith(".nii.gz") and tmp.parent == tmp_path
        tmp.write_bytes(b"data")
    umask = os.umask(0)
    os.umask(umask)
    assert target.read_bytes() == b"data"
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask
    assert list(tmp_path.iterdir()) == [target]


def test_failure_leaves_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "report.json"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_output(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert target.read_text() == "old"
    assert list(tmp_path.iterdir()) == [target]


def test_existing_output_kept_without_overwrite(tmp_path):
    target = tmp_path / "mask.nii.gz"
    target.write_text("old")
    with pytest.raises(FileExistsError, match="--overwrite"):
        with atomic_output(target, overwrite=False):
            pass
    assert target.read_text() == "old"
