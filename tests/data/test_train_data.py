"""Datalists (COVID-SemiSeg folders, NIfTI pairs) and the 2D training transforms."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image
from infnet_monai.data.phantoms import affine_for, chest_phantom, save_nifti

from infnet_monai.data import nifti_pairs_datalist, semiseg_datalist, split_datalist, volume_stem
from infnet_monai.transforms.chain import IMAGENET_MEAN, IMAGENET_STD
from infnet_monai.transforms.edge import EdgeTarget
from infnet_monai.transforms.train2d import (
    multiclass_slice_transforms,
    slice_training_transforms,
    slice_validation_transforms,
    volume_slice_transforms,
    volume_validation_transforms,
)


def _png(path: Path, array: np.ndarray, mode: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array.astype(np.uint8), mode=mode).save(path)


def _square(size: int = 32, lo: int = 8, hi: int = 24, value: int = 255) -> np.ndarray:
    a = np.zeros((size, size), np.uint8)
    a[lo:hi, lo:hi] = value
    return a


# ---------------------------------------------------------------- datalists


def test_semiseg_datalist_pairs_by_stem(tmp_path):
    for stem in ["2", "10", "1"]:
        _png(tmp_path / "Imgs" / f"{stem}.png", _square())
        _png(tmp_path / "GT" / f"{stem}.png", _square())
        _png(tmp_path / "Edge" / f"{stem}.png", _square())
    (tmp_path / "Imgs" / "notes.txt").write_text("ignored")
    items = semiseg_datalist(tmp_path)
    assert [Path(i["image"]).name for i in items] == ["1.png", "10.png", "2.png"]
    assert all(Path(i["label"]).parent.name == "GT" and Path(i["edge"]).stem == Path(i["image"]).stem for i in items)
    assert "prior" not in items[0]
    assert "edge" not in semiseg_datalist(tmp_path, edge_dir=None)[0]


def test_semiseg_datalist_errors_name_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="Imgs"):
        semiseg_datalist(tmp_path)
    (tmp_path / "Imgs").mkdir()
    with pytest.raises(ValueError, match="no images"):
        semiseg_datalist(tmp_path)
    for stem in ["a", "b"]:
        _png(tmp_path / "Imgs" / f"{stem}.png", _square())
    with pytest.raises(FileNotFoundError, match="GT"):
        semiseg_datalist(tmp_path)
    assert semiseg_datalist(tmp_path, require_labels=False) == [
        {"image": str(tmp_path / "Imgs" / "a.png")}, {"image": str(tmp_path / "Imgs" / "b.png")}
    ]
    _png(tmp_path / "GT" / "a.png", _square())
    with pytest.raises(ValueError, match=r"GT: no file for 1 image\(s\) \(b\)"):
        semiseg_datalist(tmp_path)
    unlabelled = semiseg_datalist(tmp_path, require_labels=False)  # the unlabelled pool of Semi-Inf-Net
    assert "label" in unlabelled[0] and "label" not in unlabelled[1]
    _png(tmp_path / "GT" / "b.png", _square())
    _png(tmp_path / "GT" / "c.png", _square())
    with pytest.raises(ValueError, match=r"Imgs: no file for 1 mask\(s\) \(c\)"):
        semiseg_datalist(tmp_path)
    (tmp_path / "GT" / "c.png").unlink()
    _png(tmp_path / "Prior" / "a.png", _square())
    with pytest.raises(ValueError, match="Prior: no file for 1"):
        semiseg_datalist(tmp_path)
    _png(tmp_path / "Imgs" / "a.jpg", _square())
    with pytest.raises(ValueError, match="pair as the same name 'a'"):
        semiseg_datalist(tmp_path)


def test_split_datalist_is_seeded_and_disjoint():
    items = [{"image": str(i)} for i in range(20)]
    train, val = split_datalist(items, 0.25, seed=3)
    assert len(train) == 15 and len(val) == 5
    assert sorted(x["image"] for x in train + val) == sorted(x["image"] for x in items)
    assert split_datalist(items, 0.25, seed=3) == (train, val)
    assert len(split_datalist(items[:3], 0.1)[1]) == 1  # at least one validation item
    assert split_datalist(items, 0.0) == (items, [])
    with pytest.raises(ValueError, match="val_fraction"):
        split_datalist(items, 1.0)


def _nifti(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.diag([0.8, 0.8, 5.0, 1.0])), path)


def test_nifti_pairs_datalist_layouts_and_errors(tmp_path):
    vol = np.zeros((4, 4, 2), np.int16)
    _nifti(tmp_path / "imagesTr" / "case_b_0000.nii.gz", vol)
    _nifti(tmp_path / "imagesTr" / "case_a.nii", vol)
    _nifti(tmp_path / "labelsTr" / "case_a.nii.gz", vol)
    _nifti(tmp_path / "labelsTr" / "case_b.nii.gz", vol)
    items = nifti_pairs_datalist(tmp_path)
    assert [(Path(i["image"]).name, Path(i["label"]).name) for i in items] == [
        ("case_a.nii", "case_a.nii.gz"), ("case_b_0000.nii.gz", "case_b.nii.gz")
    ]
    assert nifti_pairs_datalist(images_dir=tmp_path / "imagesTr", labels_dir=tmp_path / "labelsTr") == items
    assert volume_stem("x/ct_0000.nii.gz") == "ct" and volume_stem("x/ct.png") is None
    _nifti(tmp_path / "labelsTr" / "case_c.nii.gz", vol)
    with pytest.raises(ValueError, match=r"imagesTr: no file for 1 label\(s\) \(case_c\)"):
        nifti_pairs_datalist(tmp_path)
    with pytest.raises(FileNotFoundError, match="masks: folder not found"):
        nifti_pairs_datalist(tmp_path, labels_dir="masks")
    with pytest.raises(ValueError, match="imagesTr/ and labelsTr/"):
        nifti_pairs_datalist(images_dir=tmp_path)


# ---------------------------------------------------------------- 2D transforms


def test_slice_training_transforms_values(tmp_path):
    image = np.full((32, 32), 102, np.uint8)  # 0.4 after scaling
    _png(tmp_path / "Imgs" / "0.png", image)
    _png(tmp_path / "GT" / "0.png", _square())
    item = semiseg_datalist(tmp_path)[0]
    out = slice_training_transforms(image_size=32)(item)
    assert out["image"].shape == (3, 32, 32) and out["label"].shape == (2, 32, 32)
    expected = (0.4 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    assert torch.allclose(out["image"][:, 5, 5], expected, atol=1e-5)
    assert torch.equal(out["label"][0], torch.from_numpy(_square() / 255.0).float())
    assert torch.equal(out["label"][1:], EdgeTarget()(out["label"][:1]))  # no Edge folder: computed
    # an Edge image, when given, is used as is (0-255 -> [0, 1]); a soft GT stays soft
    _png(tmp_path / "Edge" / "0.png", _square(value=51))
    _png(tmp_path / "GT" / "0.png", _square(value=128))
    out = slice_training_transforms(image_size=32)(semiseg_datalist(tmp_path)[0])
    assert out["label"][1].max().item() == pytest.approx(0.2) and out["label"][1].sum().item() == pytest.approx(256 * 0.2)
    assert out["label"][0].max().item() == pytest.approx(128 / 255)
    val = slice_validation_transforms(image_size=64)(semiseg_datalist(tmp_path)[0])
    assert val["label"].shape == (1, 64, 64) and set(val) == {"image", "label"}
    assert val["label"].sum().item() == pytest.approx(4 * 256 * 128 / 255, rel=0.02)  # bilinear keeps the area


def test_training_transforms_grayscale_and_augmentation(tmp_path):
    rgb = np.zeros((32, 32, 3), np.uint8)
    rgb[..., 1] = 200
    _png(tmp_path / "Imgs" / "0.png", rgb)
    _png(tmp_path / "GT" / "0.png", _square(lo=0, hi=8))
    item = semiseg_datalist(tmp_path)[0]
    out = slice_training_transforms(image_size=32)(item)
    grey = round(0.587 * 200) / 255  # PIL luma of pure green
    assert out["image"][0, 0, 0].item() == pytest.approx((grey - IMAGENET_MEAN[0]) / IMAGENET_STD[0], abs=1e-2)
    flips = slice_training_transforms(image_size=32, augment=True)
    flips.set_random_state(seed=1)
    labels = [flips(item)["label"] for _ in range(8)]
    assert any(not torch.equal(lab, out["label"]) for lab in labels)  # the corner square moves ...
    assert all(lab[0].sum() == out["label"][0].sum() for lab in labels)  # ... but keeps its area


def test_multiclass_transforms_stack_prior_and_keep_class_indices(tmp_path):
    gt = np.zeros((32, 32), np.uint8)
    gt[4:12, 4:12], gt[20:28, 20:28] = 1, 2
    pal = Image.fromarray(gt, mode="P")
    pal.putpalette([0, 0, 0, 200, 0, 0, 0, 200, 0] + [0] * 759)
    (tmp_path / "GT").mkdir()
    pal.save(tmp_path / "GT" / "0.png")
    _png(tmp_path / "Imgs" / "0.jpg", np.full((32, 32), 51, np.uint8))
    _png(tmp_path / "Prior" / "0.png", (gt > 0) * 255)
    item = semiseg_datalist(tmp_path)[0]
    out = multiclass_slice_transforms(image_size=64)(item)
    assert out["image"].shape == (6, 64, 64) and out["label"].shape == (1, 64, 64)
    assert sorted(out["label"].unique().tolist()) == [0.0, 1.0, 2.0]
    assert (out["label"] == 2).sum().item() == 4 * 64  # nearest resize: 8x8 -> 16x16
    prior_in = (1.0 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    assert torch.allclose(out["image"][3:, 48, 48], prior_in, atol=1e-5)  # prior channels, same normalisation


def test_real_semiseg_slices_load(semiseg_dir):
    items = semiseg_datalist(semiseg_dir / "doctor-label")
    assert len(items) == 50 and all("edge" in i for i in items)
    out = slice_training_transforms(image_size=96)(items[0])
    mask, edge = out["label"]
    assert 0 < mask.mean() < 0.5 and set(torch.unique(mask > 0.5).tolist()) == {False, True}
    # without the Edge image the edge is computed at the original size and resized the same way
    computed = slice_training_transforms(image_size=96)({k: v for k, v in items[0].items() if k != "edge"})
    assert torch.equal(computed["label"][0], mask)
    assert (computed["label"][1] - edge).abs().sum() < 0.01 * edge.sum()
    multi = multiclass_slice_transforms(image_size=96)(semiseg_datalist(semiseg_dir / "multiclass")[0])
    assert multi["image"].shape == (6, 96, 96) and set(multi["label"].unique().tolist()) <= {0.0, 1.0, 2.0}


# ---------------------------------------------------------------- volume slices


def test_volume_slice_transforms_use_the_ct_chain(tmp_path):
    vol = chest_phantom(shape=(96, 96, 12))
    label = (vol == -300).astype(np.uint8) * 3  # a label value other than 1 still counts as infection
    lesion_slices = sorted(set(np.nonzero(label)[2].tolist()))
    affine = affine_for((3.0, 3.0, 6.0))
    save_nifti((tmp_path / "imagesTr").mkdir() or tmp_path / "imagesTr" / "a.nii.gz", vol, affine)
    save_nifti((tmp_path / "labelsTr").mkdir() or tmp_path / "labelsTr" / "a.nii.gz", label, affine)
    item = nifti_pairs_datalist(tmp_path)[0]
    samples = volume_slice_transforms(image_size=64, num_samples=3, pos=1, neg=0)(item)
    assert len(samples) == 3
    for s in samples:  # pos only: every sample is a lesion slice
        assert s["image"].shape == (3, 64, 64) and s["label"].shape == (2, 64, 64)
        assert s["label"][0].sum() > 0 and torch.equal(s["label"][1:], EdgeTarget()(s["label"][:1]))
    val = volume_validation_transforms(image_size=64)(item)
    assert val["image"].shape == (3, 64, 64, 12) and val["label"].shape == (1, 64, 64, 12)
    assert val["label"].sum((0, 1, 2)).nonzero().flatten().tolist() == lesion_slices  # RAS -> PLS keeps z
    assert set(val["label"].unique().tolist()) == {0.0, 1.0}
    none = volume_validation_transforms(image_size=64, infection_labels=[1])(item)
    assert none["label"].sum() == 0  # only value 1 counts as infection here
