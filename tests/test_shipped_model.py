"""The shipped model: found without flags, stored in fp16 without changing masks, small on
non-COVID lungs, and at the paper's level on the held-out doctor-labelled slices."""

from __future__ import annotations

import hashlib
import json
import re

import nibabel as nib
import numpy as np
import pytest
import torch

from infnet_monai.cli import main
from infnet_monai.data import semiseg_datalist, split_datalist
from infnet_monai.inference import infer_volume
from infnet_monai.inferers import slice_inferer
from infnet_monai.runtime import load_network
from infnet_monai.networks import InfNet
from infnet_monai.shipped import BUNDLE_DIR, default_weights, network_size
from infnet_monai.transforms.chain import ct_postprocessing, ct_preprocessing

from tests.conftest import REPO_ROOT
from infnet_monai.data.phantoms import affine_for, chest_phantom, save_nifti

EXAMPLE_CT = REPO_ROOT / "examples" / "data" / "lung_pet_ct_dx_a0001_chest.nii.gz"


def test_shipped_weights_are_found_and_stored_in_fp16():
    weights = default_weights()
    assert weights == BUNDLE_DIR / "models" / "model.pt" and weights.is_file()
    state = torch.load(weights, weights_only=True)
    halves = [k for k, v in state.items() if v.dtype == torch.float16]
    assert len(halves) > 300 and all(not k.endswith(("running_mean", "running_var")) for k in halves)
    InfNet().load_state_dict(state)  # strict, into the fp32 network
    assert 50e6 < weights.stat().st_size < 80e6
    # the bundle records its size and its hash
    meta = json.loads((BUNDLE_DIR / "configs" / "metadata.json").read_text())
    assert network_size() == meta["network_data_format"]["inputs"]["image"]["spatial_shape"][0] == 256
    listed = (BUNDLE_DIR / "large_files.yml").read_text()
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    assert re.search(rf'path: "models/model.pt"[^-]*hash_val: "{digest}"', listed)


def test_segment_runs_without_weights_on_the_shipped_model(tmp_path, capsys):
    spacing = (2.4, 2.4, 6.0)
    src = save_nifti(tmp_path / "case.nii.gz", chest_phantom((120, 128, 3), spacing), affine_for(spacing, "LPS"))
    assert main(["segment", str(src), "-o", str(tmp_path / "out"), "-q"]) == 0
    mask = nib.load(str(tmp_path / "out" / "case_seg.nii.gz"))
    assert mask.shape == (120, 128, 3) and np.allclose(mask.affine, affine_for(spacing, "LPS"), atol=1e-4)
    assert "case: 3 slices inferred" in capsys.readouterr().out


@pytest.fixture(scope="module")
def example_prediction():
    """The shipped model's probabilities on the example CT (the README's main job)."""
    pre = ct_preprocessing(spatial_size=network_size(), network_input=False)
    post = ct_postprocessing(pre, prob_key="prob")
    item = pre({"image": str(EXAMPLE_CT)})
    network = load_network(None, "cpu", compile=False)
    return infer_volume(item, network, slice_inferer(None, "cpu", precision="fp32"), post)


@pytest.mark.slow
def test_the_non_covid_example_ct_shows_little_infection(example_prediction):
    """A lung-cancer patient without COVID-19: the involvement stays small (figure in the model card)."""
    from infnet_monai.report.burden import infection_burden

    item = example_prediction.item
    report = infection_burden(item["lung"], item["pred"])
    print(f"example CT: infection {example_prediction.infected_ml:.1f} mL, involvement {report['percent_involved']}")
    assert report["percent_involved"]["total"] < 2.0
    assert 4000 < report["lung_ml"]["total"] < 7000


@pytest.mark.slow
def test_fp16_storage_changes_no_mask(example_prediction):
    """Every fp32 model that rounds to the shipped fp16 weights gives the same mask: a random one
    (each weight moved by up to half an fp16 step) against the shipped one, on the example CT."""
    state = torch.load(default_weights(), weights_only=True)
    generator = torch.Generator().manual_seed(0)
    perturbed = {}
    for key, value in state.items():
        if value.dtype == torch.float16:
            half_step = (torch.nextafter(value, torch.tensor(float("inf"), dtype=value.dtype)) - value).float() / 2
            noise = (torch.rand(value.shape, generator=generator) * 2 - 1) * half_step
            value = value.float() + noise
        perturbed[key] = value
    network = InfNet()
    network.load_state_dict(perturbed)
    pre = ct_preprocessing(spatial_size=network_size(), network_input=False)
    from infnet_monai.runtime.optimize import optimize_for_inference

    item = pre({"image": str(EXAMPLE_CT)})
    inferer = slice_inferer(None, "cpu", precision="fp32")  # the weights' rounding alone, not bf16's
    result = infer_volume(item, optimize_for_inference(network.eval(), "cpu"), inferer, ct_postprocessing(pre))
    a = example_prediction.item["pred"].numpy() > 0
    b = result.item["pred"].numpy() > 0
    both = int(a.sum()) + int(b.sum())
    dice = 2 * int(np.count_nonzero(a & b)) / both if both else 1.0
    print(f"fp32-within-rounding vs shipped fp16: Dice {dice:.5f}, {int(np.count_nonzero(a ^ b))} voxels differ")
    assert dice >= 0.999


@pytest.mark.slow
def test_held_out_doctor_slices_reach_the_papers_inf_net(semiseg_dir, tmp_path):
    """The 10 doctor-labelled slices kept out of training (train_shipped.json: val_fraction 0.2,
    seed 0), scored by the paper's protocol from predict-slices maps."""
    _, held_out = split_datalist(semiseg_datalist(semiseg_dir / "doctor-label"), 0.2, 0)
    assert len(held_out) == 10
    imgs, gts = tmp_path / "Imgs", tmp_path / "GT"
    imgs.mkdir()
    gts.mkdir()
    for item in held_out:
        for key, folder in (("image", imgs), ("label", gts)):
            src = __import__("pathlib").Path(item[key])
            (folder / src.name).symlink_to(src)
    assert main(["predict-slices", str(imgs), "-o", str(tmp_path / "maps")]) == 0
    report = tmp_path / "report.json"
    assert main(["evaluate", "--mode", "slices", "--pred", str(tmp_path / "maps"), "--label", str(gts), "-o", str(report)]) == 0
    summary = json.loads(report.read_text())["summary"]
    dice = summary["toolbox"]["dice"]["mean"]
    print(f"held-out doctor slices: mean Dice {dice:.3f}, Dice at 0.5 {summary['per_image']['dice_at_0.5']['mean']:.3f}")
    assert dice >= 0.682  # the paper's Inf-Net (its test set; ours is the held-out tenth)


def _paint_disease(ct, aerated: np.ndarray, seed: int = 0) -> tuple[np.ndarray, dict]:
    """The real series with synthetic COVID-19-like disease: consolidation (+25 ± 15 HU) over the
    posterior third of the left lung in its middle slices, and three balls of ground-glass
    opacity (+300 HU on the lung's voxels, vessels kept) in the right lung. RAS arrays."""
    rng = np.random.default_rng(seed)
    hu = ct[0].numpy().astype(np.float32).copy()
    left, right = aerated == 2, aerated == 1
    z_lung = np.flatnonzero(left.any(axis=(0, 1)))
    middle = z_lung[len(z_lung) // 4 : 3 * len(z_lung) // 4]
    consolidation = np.zeros_like(left)
    for z in middle:
        ys = np.flatnonzero(left[:, :, z].any(axis=0))
        cut = ys[0] + (ys[-1] - ys[0]) // 3  # RAS: +y anterior, the posterior third has the low y
        consolidation[:, : cut + 1, z] = left[:, : cut + 1, z]
    hu[consolidation] = 25.0 + rng.normal(0, 15, int(consolidation.sum()))
    ggo = np.zeros_like(right)
    idx = np.argwhere(right)
    spacing = np.linalg.norm(ct.affine.numpy()[:3, :3], axis=0)
    grid = np.indices(hu.shape, dtype=np.float32)
    for centre in idx[rng.choice(len(idx), 3, replace=False)]:
        d2 = sum(((grid[k] - centre[k]) * spacing[k]) ** 2 for k in range(3))
        ggo |= (d2 <= 25.0**2) & right
    hu[ggo & (hu < -500)] += 300.0
    return hu, {"consolidation": consolidation, "ggo": ggo}


@pytest.mark.slow
def test_default_path_keeps_the_infection_the_network_finds(dicom_series_dir, tmp_path):
    """Synthetic disease painted into the shared series: the default path (lung crop, slice crop,
    restriction to the thorax) reports at least 90 % of what the network finds inside the body
    without them, and the thoracic cavity of the lung mask (labels 1-3) holds the painted
    consolidation. (At +25 HU it is denser than the lung labels' fills take, -20 HU, so that a
    pleural effusion stays out of the lungs: it is kept by the cavity and counted in the burden
    through the infection attached to the lung.)"""
    from tests.ct_samples import real_ct
    from infnet_monai.transforms.lung import LungMask

    ct = real_ct(dicom_series_dir)
    aerated = LungMask(fill_pathology=False)(ct)[0].numpy()
    hu, painted = _paint_disease(ct, aerated)
    path = tmp_path / "diseased.nii.gz"
    nib.save(nib.Nifti1Image(np.round(hu).astype(np.int16), ct.affine.numpy()), str(path))
    runs = {"default": [], "everything": ["--no-lung-restrict", "--no-lung-crop", "--no-slice-crop"]}
    masks = {}
    for name, flags in runs.items():
        assert main(["segment", str(path), "-o", str(tmp_path / name), "-q", *flags]) == 0
        masks[name] = np.asarray(nib.load(str(tmp_path / name / "diseased_seg.nii.gz")).dataobj) > 0
    from scipy import ndimage

    body = np.zeros(hu.shape, dtype=bool)
    for z in range(hu.shape[2]):
        regions, _ = ndimage.label(hu[:, :, z] > -500)
        sizes = np.bincount(regions.ravel())
        sizes[0] = 0
        body[:, :, z] = ndimage.binary_fill_holes(regions == sizes.argmax())
    found = masks["everything"] & body
    kept = masks["default"] & body
    labels = LungMask()(nib.load(str(path)).get_fdata(dtype=np.float32)[None], affine=ct.affine.numpy())[0]
    lungs = np.isin(labels, (1, 2))
    cavity = labels > 0
    voxel_ml = float(abs(np.linalg.det(ct.affine.numpy()[:3, :3]))) / 1000
    print(f"network inside the body: {found.sum() * voxel_ml:.1f} mL; default path {kept.sum() * voxel_ml:.1f} mL "
          f"({kept.sum() / max(found.sum(), 1):.3f}); in the lung mask {np.count_nonzero(found & lungs) / max(found.sum(), 1):.3f}; "
          f"painted consolidation in the lung labels {np.count_nonzero(painted['consolidation'] & lungs) / painted['consolidation'].sum():.3f}, "
          f"in the cavity {np.count_nonzero(painted['consolidation'] & cavity) / painted['consolidation'].sum():.3f}, "
          f"found by the default path {np.count_nonzero(painted['consolidation'] & kept) / painted['consolidation'].sum():.3f}")
    assert found.sum() > 0 and kept.sum() >= 0.9 * found.sum()
    assert np.count_nonzero(painted["consolidation"] & cavity) >= 0.95 * painted["consolidation"].sum()


@pytest.mark.slow
@pytest.mark.parametrize("compile", ["off", "on"])
def test_default_precision_agrees_with_fp32_on_the_shared_series(dicom_series_dir, tmp_path, monkeypatch, compile):
    """bf16 by default on CPUs with native bf16, eager or from its compiled package (``on``,
    built into a fresh cache): masks within Dice 0.995 and involvement within 0.5 percentage
    points of eager fp32 with the shipped weights (fp32 elsewhere)."""
    import shutil

    if compile == "on" and not (shutil.which("c++") or shutil.which("g++")):
        pytest.skip("no C++ compiler: compiled packages cannot be built here")
    monkeypatch.setenv("INFNET_MONAI_CACHE", str(tmp_path / "cache"))
    reports = {}
    for run, extra in (("fp32", ["--precision", "fp32", "--compile", "off"]), ("default", ["--compile", compile])):
        assert main(["segment", str(dicom_series_dir), "-o", str(tmp_path / run), "-q", "--report", *extra]) == 0
        (mask_file,) = (tmp_path / run).glob("*_seg.nii.gz")
        reports[run] = (np.asarray(nib.load(str(mask_file)).dataobj) > 0,
                        json.loads(next((tmp_path / run).glob("*_burden.json")).read_text()))
    (a, ra), (b, rb) = reports["fp32"], reports["default"]
    assert a.sum() > 1000
    assert 2 * np.count_nonzero(a & b) / (a.sum() + b.sum()) >= 0.995
    assert abs(ra["percent_involved"]["total"] - rb["percent_involved"]["total"]) <= 0.5
