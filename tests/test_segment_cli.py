"""`infnet-monai segment` and the bundle's inference.json: same masks, clear errors, safe outputs."""

from __future__ import annotations

import os
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import torch

from infnet_monai.cli import main
from infnet_monai.inference import infer_volume
from infnet_monai.inferers import slice_inferer
from infnet_monai.networks import InfNet
from infnet_monai.transforms import LoadCT
from infnet_monai.transforms.chain import ct_postprocessing, ct_preprocessing

from tests.conftest import BUNDLE_DIR, REPO_ROOT
from infnet_monai.data.phantoms import affine_for, chest_phantom, save_nifti
from tests.test_inference import IntensityAsLogit


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """Random InfNet whose final logits are shifted to a zero median on a phantom, so that the
    masks are neither empty nor full and the comparison below means something."""
    torch.manual_seed(0)
    net = InfNet().eval()
    pre = ct_preprocessing(load=False)
    spacing = (2.4, 2.4, 6.0)
    from monai.data import MetaTensor

    image = MetaTensor(torch.from_numpy(chest_phantom((120, 128, 3), spacing))[None], affine=torch.tensor(affine_for(spacing)))
    x = pre({"image": image})["image"][..., 1][None]
    with torch.no_grad():
        logits = net(x)
        net.reverse_attention2.predict.bn.bias.sub_(logits.median())
    path = tmp_path_factory.mktemp("w") / "model.pt"
    torch.save(net.state_dict(), path)
    return path


@pytest.fixture()
def volumes(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    spacing = (2.4, 2.4, 6.0)
    save_nifti(src / "case_a.nii.gz", chest_phantom((120, 128, 3), spacing, seed=1), affine_for(spacing, "LPS"))
    save_nifti(src / "case_b.nii", chest_phantom((128, 112, 2), spacing, seed=2), affine_for(spacing, "RAS"))
    return src


def test_real_dicom_series_geometry(dicom_series_dir, tmp_path):
    """The mask of the real series has the reader's shape and affine (stand-in network)."""
    pre = ct_preprocessing()
    item = pre({"image": str(dicom_series_dir)})
    result = infer_volume(item, IntensityAsLogit(), slice_inferer(8, "cpu"), ct_postprocessing(pre))
    reference = LoadCT(ensure_channel_first=True)(str(dicom_series_dir))
    mask = result.item["pred"]
    assert tuple(mask.shape) == (1, 512, 512, 64) == tuple(reference.shape)
    np.testing.assert_allclose(np.asarray(mask.affine), np.asarray(reference.affine), atol=1e-4)
    assert mask.dtype == torch.uint8 and 0 < int(mask.sum()) < mask.numel()
    # the stand-in marks HU > -500 inside the dilated lungs: mostly vessels/walls, few voxels
    lung = reference[0] > -500
    assert (mask[0].bool() & ~lung).float().mean() < 0.01


@pytest.mark.slow
def test_cli_and_bundle_give_the_same_masks(volumes, weights, tmp_path):
    out_cli = tmp_path / "cli"
    assert main(["segment", str(volumes / "*.nii*"), "-o", str(out_cli), "--weights", str(weights), "-q"]) == 0
    out_bundle = tmp_path / "bundle"
    cmd = [
        sys.executable, "-m", "monai.bundle", "run",
        "--config_file", str(BUNDLE_DIR / "configs" / "inference.json"),
        "--meta_file", str(BUNDLE_DIR / "configs" / "metadata.json"),
        "--bundle_root", str(BUNDLE_DIR),
        "--dataset_dir", str(volumes),
        "--output_dir", str(out_bundle),
        "--ckpt_path", str(weights),
    ]
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    proc = subprocess.run(cmd, capture_output=True, encoding="utf-8", errors="replace", env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("case_a", "case_b"):
        a = nib.load(str(out_cli / f"{name}_seg.nii.gz"))
        b = nib.load(str(out_bundle / f"{name}_seg.nii.gz"))
        src = nib.load(str(next(volumes.glob(f"{name}.nii*"))))
        assert a.shape == b.shape == src.shape
        np.testing.assert_allclose(a.affine, src.affine, atol=1e-4)
        np.testing.assert_allclose(b.affine, src.affine, atol=1e-4)
        np.testing.assert_array_equal(np.asarray(a.dataobj), np.asarray(b.dataobj))
        assert a.get_data_dtype() == np.uint8
        assert 0 < np.asarray(a.dataobj).sum() < np.prod(a.shape)  # a real, non-trivial mask


def test_missing_weights_is_a_plain_error(volumes, tmp_path, capsys, monkeypatch):
    """Without --weights and without the shipped model beside the package (a non-editable install)."""
    import infnet_monai.runtime.loading

    monkeypatch.setattr(infnet_monai.runtime.loading, "default_weights", lambda: None)
    assert main(["segment", str(volumes), "-o", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert "no weights given" in err and "--weights" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_bad_volume_reported_others_processed_and_outputs_kept(volumes, weights, tmp_path, capsys):
    bad = volumes / "flat.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((32, 32), np.float32), np.eye(4)), str(bad))
    nan = volumes / "nan.nii.gz"
    data = chest_phantom((64, 64, 2), (3, 3, 6))
    data[3, 3, 1] = np.nan
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(nan))
    out = tmp_path / "o"
    rc = main(["segment", str(volumes / "*.nii*"), "-o", str(out), "--weights", str(weights), "-q"])
    err = capsys.readouterr().err
    assert rc == 2  # the number of volumes that failed
    assert "flat.nii.gz" in err and "nan.nii.gz" in err
    assert sorted(p.name for p in out.iterdir()) == ["case_a_seg.nii.gz", "case_b_seg.nii.gz", "failures.csv", "summary.csv"]
    # an existing output is kept unless --overwrite
    kept = out / "case_a_seg.nii.gz"
    os.utime(kept, (0, 0))
    main(["segment", str(volumes / "case_a.nii.gz"), "-o", str(out), "--weights", str(weights), "-q"])
    assert kept.stat().st_mtime == 0
    assert main(["segment", str(volumes / "case_a.nii.gz"), "-o", str(out), "--weights", str(weights), "-q",
                 "--overwrite", "--save-prob", "--report"]) == 0
    assert kept.stat().st_mtime > 0
    prob = nib.load(str(out / "case_a_prob.nii.gz"))
    assert prob.get_data_dtype() == np.float32 and prob.shape == (120, 128, 3)
    # --report: burden figures computed from the written mask and the input's voxel size
    import json

    report = json.loads((out / "case_a_burden.json").read_text())
    mask = nib.load(str(kept))
    voxel_ml = abs(np.linalg.det(mask.affine[:3, :3])) / 1000
    infected_ml = float(np.asarray(mask.dataobj).sum()) * voxel_ml
    total = report["infection_ml"]["total"] + report["infection_ml"]["outside_lung"]
    assert total == pytest.approx(infected_ml, rel=1e-3, abs=1e-3)
    assert (out / "case_a_qc.png").stat().st_size > 1000 and (out / "burden.csv").exists()


@pytest.mark.slow
def test_command_exits_with_the_status_and_flushed_output(volumes, weights, tmp_path):
    """The installed command leaves without the interpreter's teardown (``os._exit``): its exit
    status, printed lines and files must be complete all the same."""
    command = [sys.executable, "-m", "infnet_monai.cli", "segment"]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    ok = subprocess.run(command + [str(volumes / "case_a.nii.gz"), "-o", str(tmp_path / "o"), "--weights", str(weights),
                                   "-q", "--device", "cpu"], capture_output=True, text=True, env=env, timeout=600)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert ok.stdout.startswith("case_a: ") and "infection" in ok.stdout
    assert nib.load(str(tmp_path / "o" / "case_a_seg.nii.gz")).shape == (120, 128, 3)
    assert (tmp_path / "o" / "summary.csv").read_text().count("\n") == 2
    bad = subprocess.run(command + [str(tmp_path / "missing.nii.gz"), "-o", str(tmp_path / "o2")],
                         capture_output=True, text=True, env=env, timeout=600)
    assert bad.returncode == 2 and bad.stderr.strip().endswith("missing.nii.gz: no such file or folder; check the path")
