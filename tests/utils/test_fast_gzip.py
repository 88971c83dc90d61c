"""ISA-L gzip through nibabel's opener map: same voxels, standard gzip files, nibabel fallback."""

from __future__ import annotations

import gzip

import nibabel as nib
import nibabel.openers
import numpy as np
import pytest

from infnet_monai.utils import fast_gzip
from infnet_monai.utils.fast_gzip import register_fast_gzip


@pytest.fixture
def restore_opener():
    saved = dict(nibabel.openers.ImageOpener.compress_ext_map)
    yield
    nibabel.openers.ImageOpener.compress_ext_map.clear()
    nibabel.openers.ImageOpener.compress_ext_map.update(saved)


def test_isal_reads_and_writes_standard_gzip(tmp_path, restore_opener):
    pytest.importorskip("isal")
    rng = np.random.default_rng(0)
    data = rng.integers(-1024, 2000, (40, 30, 7)).astype(np.int16)
    affine = np.diag([0.8, 0.8, 2.5, 1.0])
    openers = nibabel.openers
    openers.ImageOpener.compress_ext_map[".gz"] = openers.Opener.compress_ext_map[".gz"]  # zlib
    nib.save(nib.Nifti1Image(data, affine), str(tmp_path / "zlib.nii.gz"))  # nibabel's own gzip
    assert register_fast_gzip()
    assert openers.ImageOpener.compress_ext_map[".gz"][0] is fast_gzip._isal_gzip_open
    read = nib.load(str(tmp_path / "zlib.nii.gz"))
    np.testing.assert_array_equal(np.asanyarray(read.dataobj), data)
    nib.save(nib.Nifti1Image(data, affine), str(tmp_path / "isal.nii.gz"))
    # a plain gzip stream that zlib and nibabel's default opener read back exactly
    raw = gzip.decompress((tmp_path / "isal.nii.gz").read_bytes())
    back = nib.Nifti1Image.from_bytes(raw)
    np.testing.assert_array_equal(np.asanyarray(back.dataobj), data)
    np.testing.assert_allclose(back.affine, affine)


def test_without_isal_nibabel_keeps_its_opener(monkeypatch, restore_opener):
    before = nibabel.openers.ImageOpener.compress_ext_map[".gz"]
    monkeypatch.setattr(fast_gzip, "igzip", None)
    assert register_fast_gzip() is False
    assert nibabel.openers.ImageOpener.compress_ext_map[".gz"] is before
