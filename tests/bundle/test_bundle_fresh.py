"""The bundle as a user gets it: a copy of the bundle folder plus the package, driven by
``python -m monai.bundle run`` with the README's commands: inference on a real CT (NIfTI made
from the shared DICOM series) and a two-iteration training run in fresh interpreters, and the
evaluation of that inference output against itself."""

from __future__ import annotations

import json
import math
import os
import shutil

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from scipy import ndimage

from infnet_monai.networks import InfNet

from tests.bundle_helpers import (
    TRAIN_FILE,
    copy_bundle,
    run_bundle_cli,
    run_bundle_subprocess,
    shared_random_weights,
    write_semiseg_slices,
)

SLICES = slice(28, 36)  # 8 mid-chest axial slices of the 64-slice series (5 mm apart)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """The bundle folder copied on its own, with random weights as models/model.pt."""
    bundle = copy_bundle(tmp_path_factory.mktemp("fresh") / "covid19_lung_infection_ct_segmentation")
    os.symlink(shared_random_weights(tmp_path_factory), bundle / "models" / "model.pt")
    return bundle


@pytest.fixture(scope="module")
def ct_nifti(dicom_series_dir, tmp_path_factory):
    """8 axial slices of the real series written as NIfTI (HU, geometry kept by SimpleITK)."""
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(dicom_series_dir)))
    volume = reader.Execute()[:, :, SLICES]
    path = tmp_path_factory.mktemp("ct") / "chest.nii.gz"
    sitk.WriteImage(volume, str(path))
    return path


@pytest.fixture(scope="module")
def inferred(bundle, ct_nifti):
    """README: ``python -m monai.bundle run --config_file configs/inference.json --dataset_dir ... --output_dir eval``."""
    proc = run_bundle_subprocess(
        ["run", "--config_file", "configs/inference.json", "--dataset_dir", str(ct_nifti.parent), "--output_dir", "eval"],
        cwd=bundle,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return bundle / "eval" / "chest_seg.nii.gz"


@pytest.mark.slow
def test_inference_writes_a_mask_on_the_input_grid(inferred, ct_nifti):
    mask, ct = nib.load(str(inferred)), nib.load(str(ct_nifti))
    assert mask.shape == ct.shape == (512, 512, 8)
    np.testing.assert_allclose(mask.affine, ct.affine, atol=1e-4)
    assert mask.get_data_dtype() == np.uint8
    data = np.asarray(mask.dataobj)
    assert set(np.unique(data).tolist()) == {0, 1}
    # restricted to the (dilated) lungs: nothing in the air around the body (air regions that
    # touch the in-plane border), and a non-trivial mask from the random weights
    hu = np.asarray(ct.dataobj)
    air, _ = ndimage.label(hu < -500)
    border = np.concatenate([air[0].ravel(), air[-1].ravel(), air[:, 0].ravel(), air[:, -1].ravel()])
    outside = np.isin(air, np.setdiff1d(border, [0]))
    assert outside.sum() > 0.3 * outside.size and not data[outside].any()
    assert 0 < data.sum() < (hu < -400).sum()


def test_evaluation_of_the_output_against_itself(bundle, inferred, tmp_path, monkeypatch, capsys):
    """In this process (same ``fire`` entry point; a third interpreter start would cost seconds),
    from the copied bundle folder, logging left as it is."""
    labels = tmp_path / "labels"
    labels.mkdir()
    shutil.copy(inferred, labels / "chest.nii.gz")
    report_file = tmp_path / "metrics.json"
    monkeypatch.chdir(bundle)
    # pred_dir defaults to the inference output folder (bundle_root/eval)
    run_bundle_cli(["run", "--config_file", "configs/evaluate.json", "--label_dir", str(labels),
                    "--output_file", str(report_file), "--logging_file", "False"])
    report = json.loads(report_file.read_text())
    (case,) = report["cases"]
    mask = nib.load(str(inferred))
    voxel_ml = abs(np.linalg.det(mask.affine[:3, :3])) / 1000.0
    expected_ml = float(np.asarray(mask.dataobj).sum()) * voxel_ml
    assert case["case"] == "chest" and case["empty"] == "none"
    assert (case["dice"], case["asd_mm"], case["hd95_mm"], case["nsd"]) == (1.0, 0.0, 0.0, 1.0)
    assert math.isclose(case["pred_ml"], expected_ml, rel_tol=1e-6) and case["label_ml"] == case["pred_ml"]
    assert report["summary"]["1"]["n"] == 1 and report["summary"]["1"]["dice"]["mean"] == 1.0
    assert "chest" in capsys.readouterr().out  # the table is printed


@pytest.mark.skipif(not TRAIN_FILE.exists(), reason="configs/train.json is not in this checkout yet (training configs land separately)")
@pytest.mark.slow
def test_two_iteration_training_run(bundle, tmp_path):
    data = write_semiseg_slices(tmp_path / "slices", count=4, size=64)
    models = tmp_path / "models"
    proc = run_bundle_subprocess(
        ["run", "--config_file", "configs/train.json", "--dataset_dir", str(data), "--epochs", "1",
         "--batch_size", "1", "--val_fraction", "0.5", "--val_interval", "1", "--image_size", "64",
         "--num_workers", "0", "--cache_rate", "0", "--ckpt_dir", str(models), "--output_dir", str(tmp_path / "logs")],
        cwd=bundle,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    # the best-validation model is a plain InfNet state dict, usable by inference.json
    InfNet().load_state_dict(torch.load(models / "model.pt", weights_only=True), strict=True)
    (checkpoint,) = models.glob("checkpoint_epoch=*.pt")
    state = torch.load(checkpoint, weights_only=False)
    # 4 slices, half for validation, batch 1: one epoch of two iterations
    assert dict(state["trainer"]) == {"epoch_length": 2, "iteration": 2, "max_epochs": 1}
