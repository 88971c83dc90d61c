"""Infection patterns (ground-glass opacity / consolidation): the Inf-Net prior + UNet network,
its labelmap on the input grid, the burden per class, predict-slices and per-class evaluation."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from PIL import Image

from infnet_monai.cli import main
from infnet_monai.data import attach_maps, semiseg_datalist
from infnet_monai.labels import PATTERN_LABELS, write_label_sidecar
from infnet_monai.networks import InfNet, InfNetUNet
from infnet_monai.networks.patterns import InfectionPatternNetwork
from infnet_monai.predict_slices import infection_priors
from infnet_monai.report.burden import infection_burden
from infnet_monai.transforms.chain import ct_postprocessing, ct_preprocessing, network_input_batch

from infnet_monai.data.phantoms import affine_for, chest_phantom, save_nifti
from tests.test_segment_cli import weights  # noqa: F401 - random Inf-Net with centred logits

SPACING = (2.4, 2.4, 6.0)


class _Prior(torch.nn.Module):
    """Stand-in Inf-Net: logit = first input channel."""

    def forward(self, x):
        return x[:, :1] * 4.0


class _Echo(torch.nn.Module):
    """Stand-in UNet: returns its 6 input channels' first three (slice) and fourth (prior)."""

    def forward(self, x):
        return torch.stack([x[:, 0], x[:, 3], -x[:, 3]], dim=1)


def test_pattern_network_feeds_the_prior_as_training_does():
    x = torch.randn(2, 3, 32, 32)
    out = InfectionPatternNetwork(_Prior(), _Echo())(x)
    prior = network_input_batch(torch.sigmoid(x[:, :1] * 4.0))  # [0, 1] map, repeated, ImageNet-normalised
    assert out.shape == (2, 3, 32, 32)
    torch.testing.assert_close(out[:, 0], x[:, 0])
    torch.testing.assert_close(out[:, 1], prior[:, 0])
    real = InfectionPatternNetwork(InfNet().eval(), InfNetUNet().eval()).eval()
    with torch.no_grad():
        assert real(torch.randn(1, 3, 64, 64)).shape == (1, 3, 64, 64)


def test_patterns_postprocessing_gives_a_labelmap_on_the_input_grid(tmp_path):
    ct = chest_phantom((96, 80, 4), SPACING)
    path = save_nifti(tmp_path / "ct.nii.gz", ct, affine_for(SPACING, "LPS"))
    pre = ct_preprocessing(spatial_size=64, keep_lung_mask=True, slice_crop=False, network_input=False)
    item = pre({"image": str(path)})
    image = item["image"]  # (1, 64, 64, Z) in [0, 1]
    logits = torch.zeros((3, *image.shape[1:]))
    logits[1] = (image[0] > 0.2).float() * 5  # "GGO" where the window is brighter
    logits[2, 20:40, 20:40] = 10  # a "consolidation" square
    item["pred"] = MetaTensor(logits, meta=image.meta, applied_operations=image.applied_operations)
    out = ct_postprocessing(pre, classes="patterns")(item)
    labels = out["pred"]
    assert labels.dtype == torch.uint8 and tuple(labels.shape) == (1, 96, 80, 4)
    assert set(torch.unique(labels).tolist()) <= {0, 1, 2} and (labels == 2).any() and (labels == 1).any()
    np.testing.assert_allclose(labels.affine.numpy(), affine_for(SPACING, "LPS"), atol=1e-5)
    unrestricted = ct_postprocessing(pre, classes="patterns", restrict_to_lung=False)(
        {**pre({"image": str(path)}), "pred": item["pred"]}
    )["pred"]
    assert int((labels > 0).sum()) < int((unrestricted > 0).sum())  # the chest wall's "GGO" went
    with pytest.raises(ValueError, match="classes must be one of infection, patterns"):
        ct_postprocessing(pre, classes="ggo")


def test_burden_per_class_sums_to_the_infection():
    affine = affine_for(SPACING)
    lung = np.zeros((1, 40, 40, 4), np.uint8)
    lung[0, 5:18, 5:35] = 1
    lung[0, 22:35, 5:35] = 2
    labels = np.zeros_like(lung)
    labels[0, 6:10, 6:20] = 1
    labels[0, 23:30, 10:30] = 2
    labels[0, 38:40, 10:12] = 1  # outside the lungs, 7 mm away: not attached,: not counted in the total
    report = infection_burden(lung, labels, affine=affine, class_names={1: "ground-glass opacity", 2: "consolidation"})
    voxel_ml = float(np.prod(SPACING)) / 1000
    assert report["pattern_ml"]["ground-glass opacity"] == pytest.approx(4 * 14 * 4 * voxel_ml)
    assert report["pattern_ml"]["consolidation"] == pytest.approx(7 * 20 * 4 * voxel_ml)
    assert sum(report["pattern_ml"].values()) == pytest.approx(report["infection_ml"]["total"])
    assert sum(report["pattern_percent"].values()) == pytest.approx(report["percent_involved"]["total"])


def test_label_sidecar_names_every_value(tmp_path):
    path = write_label_sidecar(tmp_path / "2.000000-5mm_patterns.nii.gz", "patterns")
    assert path.name == "2.000000-5mm_patterns.json"
    table = json.loads(path.read_text())["labels"]
    assert [(e["value"], e["name"]) for e in table] == [(v, PATTERN_LABELS[v][0]) for v in (0, 1, 2)]
    assert table[1]["code"] == ["DCM", "112120", "Ground glass opacity"] and table[2]["code"][0] == "99INFNET"
    assert table[0]["code"] is None


def _random_unet_and_phantom(tmp_path, name: str, seed: int):
    """A random multi-class UNet whose class biases favour GGO slightly (so all classes occur)
    and a chest phantom ``in/<name>``; returns (weights path, input folder)."""
    torch.manual_seed(seed)
    unet = InfNetUNet().eval()
    with torch.no_grad():
        unet.outc.bias.copy_(torch.tensor([0.0, 0.05, -0.05]))
    pattern_weights = tmp_path / "multiclass_model.pt"
    torch.save(unet.state_dict(), pattern_weights)
    src = tmp_path / "in"
    src.mkdir()
    save_nifti(src / name, chest_phantom((120, 128, 3), SPACING, seed=seed + 2), affine_for(SPACING, "LPS"))
    return pattern_weights, src


@pytest.mark.slow
def test_segment_patterns_writes_labelmap_sidecar_and_burden(weights, tmp_path, capsys):  # noqa: F811
    pattern_weights, src = _random_unet_and_phantom(tmp_path, "case.v1.nii.gz", seed=1)
    out = tmp_path / "o"
    rc = main(["segment", str(src / "case.v1.nii.gz"), "-o", str(out), "--weights", str(weights), "-q",
               "--classes", "patterns", "--pattern-weights", str(pattern_weights), "--report", "--image-size", "64"])
    assert rc == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "burden_patterns.csv", "case.v1_patterns.json", "case.v1_patterns.nii.gz",
        "case.v1_patterns_burden.json", "case.v1_patterns_qc.png", "summary.csv",
    ]
    labels = nib.load(str(out / "case.v1_patterns.nii.gz"))
    values = np.asarray(labels.dataobj)
    assert labels.shape == (120, 128, 3) and values.dtype == np.uint8 and set(np.unique(values)) <= {0, 1, 2}
    np.testing.assert_allclose(labels.affine, affine_for(SPACING, "LPS"), atol=1e-5)
    report = json.loads((out / "case.v1_patterns_burden.json").read_text())
    assert sum(report["pattern_ml"].values()) == pytest.approx(report["infection_ml"]["total"], abs=1e-6)
    printed = capsys.readouterr().out
    assert "ground-glass opacity" in printed and "consolidation" in printed


def _palette_gt(path, labels: np.ndarray) -> None:
    img = Image.fromarray(labels.astype(np.uint8), mode="P")
    img.putpalette([0, 0, 0, 255, 200, 0, 220, 30, 30] + [0] * 759)
    img.save(path)


def test_evaluate_slices_per_class(tmp_path, capsys):
    gt, pred = tmp_path / "GT", tmp_path / "maps"
    for folder in (gt, pred / "GGO", pred / "Consolidation"):
        folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for k in range(3):
        labels = np.zeros((40, 50), np.uint8)
        labels[5:15, 5 + k : 25] = 1
        labels[20:30, 20:40 - k] = 2
        _palette_gt(gt / f"{k}.png", labels)
        Image.fromarray(((labels == 1) * 255).astype(np.uint8)).save(pred / "GGO" / f"{k}.png")  # perfect GGO
        noise = rng.integers(0, 255, labels.shape).astype(np.uint8)
        Image.fromarray(noise).save(pred / "Consolidation" / f"{k}.png")  # noise
    report_path = tmp_path / "r.json"
    assert main(["evaluate", "--mode", "slices", "--labels", "1", "2", "--pred", str(pred), "--label", str(gt),
                 "-o", str(report_path)]) == 0
    report = json.loads(report_path.read_text())
    ggo, cons = report["classes"]["1"]["summary"], report["classes"]["2"]["summary"]
    assert ggo["per_image"]["dice_at_0.5"]["mean"] == pytest.approx(1.0)
    assert ggo["toolbox"]["dice"]["max"] == pytest.approx(1.0, abs=1e-6)
    assert cons["per_image"]["dice_at_0.5"]["mean"] < 0.3
    assert "class 1 (GGO maps)" in capsys.readouterr().out
    assert main(["evaluate", "--mode", "slices", "--labels", "1", "2", "--pred", str(pred), "--label", str(gt),
                 "-o", str(tmp_path / "r.csv")]) == 0
    header = [line for line in (tmp_path / "r.csv").read_text().splitlines() if not line.startswith("#")][0]
    assert header.startswith("class,case,dice")


def test_priors_are_made_once_per_weights_and_attached(weights, tmp_path):  # noqa: F811
    root = tmp_path / "multiclass"
    (root / "Imgs").mkdir(parents=True)
    (root / "GT").mkdir()
    rng = np.random.default_rng(0)
    for stem in ("3", "7"):
        Image.fromarray(rng.integers(0, 255, (48, 40), dtype=np.uint8)).save(root / "Imgs" / f"{stem}.jpg")
        _palette_gt(root / "GT" / f"{stem}.png", np.zeros((48, 40)))
    folder = infection_priors(root / "Imgs", tmp_path / "prior", weights, image_size=64)
    assert sorted(p.name for p in folder.iterdir()) == ["3.png", "7.png"]
    with Image.open(folder / "3.png") as img:
        assert img.size == (40, 48) and img.mode == "L"
    stamp = (folder / "3.png").stat().st_mtime_ns
    assert infection_priors(root / "Imgs", tmp_path / "prior", weights, image_size=64) == folder
    assert (folder / "3.png").stat().st_mtime_ns == stamp  # reused
    datalist = attach_maps(semiseg_datalist(root, prior_dir=None), folder)
    assert [item["prior"] for item in datalist] == [str(folder / "3.png"), str(folder / "7.png")]
    (folder / "7.png").unlink()
    with pytest.raises(ValueError, match="no file for 1 image"):
        attach_maps(semiseg_datalist(root, prior_dir=None), folder)


@pytest.mark.slow
def test_bundle_patterns_equal_the_cli(weights, tmp_path):  # noqa: F811
    import os
    import subprocess
    import sys

    from tests.conftest import BUNDLE_DIR, REPO_ROOT

    pattern_weights, src = _random_unet_and_phantom(tmp_path, "case.1.nii.gz", seed=2)
    assert main(["segment", str(src), "-o", str(tmp_path / "cli"), "--weights", str(weights), "-q", "--classes",
                 "patterns", "--pattern-weights", str(pattern_weights), "--image-size", "64"]) == 0
    cmd = [
        sys.executable, "-m", "monai.bundle", "run",
        "--config_file", str(BUNDLE_DIR / "configs" / "inference.json"),
        "--meta_file", str(BUNDLE_DIR / "configs" / "metadata.json"),
        "--bundle_root", str(BUNDLE_DIR), "--dataset_dir", str(src), "--output_dir", str(tmp_path / "bundle"),
        "--ckpt_path", str(weights), "--pattern_ckpt_path", str(pattern_weights), "--classes", "patterns",
        "--image_size", "64",
    ]
    proc = subprocess.run(cmd, capture_output=True, encoding="utf-8", errors="replace", timeout=600,
                          env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    a = np.asarray(nib.load(str(tmp_path / "cli" / "case.1_patterns.nii.gz")).dataobj)
    b = np.asarray(nib.load(str(tmp_path / "bundle" / "case.1_patterns.nii.gz")).dataobj)
    np.testing.assert_array_equal(a, b)
    assert set(np.unique(a)) <= {0, 1, 2} and a.any()
    assert (tmp_path / "bundle" / "case.1_patterns.json").read_text() == (tmp_path / "cli" / "case.1_patterns.json").read_text()
