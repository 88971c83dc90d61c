"""Shared fixtures: the read-only real data in ``../shared`` (skipped cleanly when absent)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("INFNET_SHARED", REPO_ROOT.parent / "shared"))
BUNDLE_DIR = REPO_ROOT / "bundles" / "covid19_lung_infection_ct_segmentation"

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

# Compiled network packages go to a throw-away cache, never the user's, and so do torch's compiler
# files unless a developer points TORCHINDUCTOR_CACHE_DIR at a lasting one (subprocesses inherit
# both). The folder is removed when the session ends: each session's packages are ~130 MB.
TEST_CACHE = Path(tempfile.mkdtemp(prefix="infnet_monai_test_cache_"))
os.environ["INFNET_MONAI_CACHE"] = str(TEST_CACHE)
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(TEST_CACHE / "inductor"))


def pytest_unconfigure(config) -> None:
    shutil.rmtree(TEST_CACHE, ignore_errors=True)


def _shared_path(*parts: str) -> Path:
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared data not available: {path}")
    return path


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    return _shared_path()


@pytest.fixture(scope="session")
def parity_file() -> Path:
    return _shared_path("parity", "infnet_reference.pt")


@pytest.fixture(scope="session")
def dicom_series_dir() -> Path:
    return _shared_path("data", "ct-dicom", "lung-pet-ct-dx-A0001-chest-5mm-lung")


@pytest.fixture(scope="session")
def semiseg_dir() -> Path:
    return _shared_path("data", "covid-semiseg", "train")
