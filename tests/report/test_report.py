"""Infection burden report, QC montage and the ``report`` CLI."""

from __future__ import annotations

import csv
import json
import os
import shutil

import nibabel as nib
import numpy as np
import pytest
import torch
from infnet_monai.data.phantoms import (
    LESION_RADIUS,
    LUNG_AXES,
    SPACING,
    discretisation_bound_ml,
    ellipsoid_volume_ml,
    lung_phantom,
)
from tests.ct_samples import real_ct, real_lung
from monai.data import MetaTensor
from PIL import Image
from scipy import ndimage

from infnet_monai.cli import main
from infnet_monai.report.burden import infection_burden, severity_score, update_report_csv, write_report_json
from infnet_monai.report.qc import qc_montage, write_qc_png
from infnet_monai.transforms.lung import LungMask

VOXEL_ML = float(np.prod(SPACING)) / 1000.0


@pytest.mark.parametrize(
    "percent, score",
    [(0.0, 0), (1e-6, 1), (25.0, 1), (25.001, 2), (50.0, 2), (50.5, 3), (75.0, 3), (75.01, 4), (100.0, 4)],
)
def test_severity_bands(percent, score):
    assert severity_score(percent) == score


def test_severity_rejects_out_of_range():
    with pytest.raises(ValueError, match="percent"):
        severity_score(101.0)


def _hand_case():
    """2 x 2 x 5 mm voxels (0.02 mL), RAS, origin z = -100 mm; see test for the counts."""
    affine = np.diag([2.0, 2.0, 5.0, 1.0])
    affine[2, 3] = -100.0
    lung = np.zeros((20, 10, 6), dtype=np.uint8)
    lung[12:18, 2:8, 1:5] = 1  # right lung (larger x = patient's right): 144 voxels
    lung[2:8, 2:8, 1:5] = 2  # left lung: 144 voxels
    inf = np.zeros_like(lung)
    inf[12:15, 2:8, 1:3] = 1  # 36 voxels inside the right lung
    inf[18, 2:8, 1:5] = 1  # 24 voxels touching the right lung from outside (dense consolidation)
    inf[2:8, 2:8, 4] = 2  # 36 voxels inside the left lung (label 2 = consolidation, still infection)
    inf[10, 0, 0] = 1  # 1 voxel >= 6 mm from both lungs: outside the lung
    return affine, lung, inf


def test_burden_hand_computed():
    affine, lung, inf = _hand_case()
    r = infection_burden(lung[None], inf[None], affine=affine, case="hand")
    assert r["voxel_ml"] == pytest.approx(0.02)
    # right: lung 144 + 24 attached = 168 voxels, infection 36 + 24 = 60 -> 35.7 % -> score 2
    assert r["lung_ml"]["right"] == pytest.approx(168 * 0.02)
    assert r["infection_ml"]["right"] == pytest.approx(60 * 0.02)
    assert r["percent_involved"]["right"] == pytest.approx(100 * 60 / 168)
    # left: 36 / 144 = 25 % exactly -> score 1
    assert r["lung_ml"]["left"] == pytest.approx(144 * 0.02)
    assert r["percent_involved"]["left"] == pytest.approx(25.0)
    assert r["severity_score"] == {"right": 2, "left": 1, "total": 3}
    assert r["lung_ml"]["total"] == pytest.approx(312 * 0.02)
    assert r["infection_ml"]["total"] == pytest.approx(96 * 0.02)
    assert r["infection_ml"]["outside_lung"] == pytest.approx(0.02)
    assert r["percent_involved"]["total"] == pytest.approx(100 * 96 / 312)
    # infection on slices 0 (outside voxel) to 4; z = -100 + 5 k mm
    s = r["infection_slices"]
    assert (s["axis"], s["first_index"], s["last_index"], s["count"]) == (2, 0, 4, 5)
    assert (s["first_z_mm"], s["last_z_mm"]) == pytest.approx((-100.0, -80.0))
    json.dumps(r)  # JSON-ready


def test_burden_binary_lung_mask_is_split_by_side():
    affine, lung, inf = _hand_case()
    split = infection_burden((lung > 0).astype(np.uint8), inf, affine=affine)
    assert split["lung_ml"] == infection_burden(lung, inf, affine=affine)["lung_ml"]


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.float32, bool])
def test_burden_lung_mask_values_of_any_dtype(dtype):
    """Labels 0-3 (3: the rest of the thorax, not lung) or a binary mask, of any dtype; other
    values are named in the error."""
    affine, lung, inf = _hand_case()
    expected = infection_burden(lung, inf, affine=affine)["lung_ml"]
    mask = (lung > 0) if dtype is bool else lung.astype(dtype)
    if dtype is not bool:
        mask[0:2] = 3  # the rest of the thorax, away from both lungs
    assert infection_burden(mask, inf, affine=affine)["lung_ml"] == pytest.approx(expected)
    if dtype is not bool:
        for bad in (5, -1) if np.dtype(dtype).kind != "u" else (5,):
            wrong = lung.astype(dtype)
            wrong[0, 0, 0] = bad
            values = ", ".join(str(np.array(v, dtype).item()) for v in sorted([0, 1, 2, bad]))
            with pytest.raises(ValueError, match=rf"found values \[{values}\]"):
                infection_burden(wrong, inf, affine=affine)


def test_burden_no_infection():
    affine, lung, _ = _hand_case()
    r = infection_burden(lung, np.zeros_like(lung), affine=affine)
    assert r["severity_score"]["total"] == 0 and r["percent_involved"]["total"] == 0.0
    assert r["infection_slices"]["first_index"] is None and r["infection_slices"]["count"] == 0


@pytest.mark.parametrize("orientation", ["RAS", "LPS"])
def test_phantom_burden_matches_analytic_volumes(orientation):
    ph = lung_phantom(orientation)
    lung = LungMask(min_component_ml=10)(ph["ct"])
    lesion = MetaTensor(torch.from_numpy(ph["lesion"][None].astype(np.uint8)), affine=ph["ct"].affine)
    r = infection_burden(lung, lesion, case=f"phantom-{orientation}")
    lung_ml, lesion_ml = ellipsoid_volume_ml(LUNG_AXES), ellipsoid_volume_ml([LESION_RADIUS] * 3)
    print(f"\n{orientation}: lung R/L {r['lung_ml']['right']:.2f}/{r['lung_ml']['left']:.2f} mL (analytic {lung_ml:.2f}"
          f" +- {discretisation_bound_ml(LUNG_AXES):.2f}), lesion {r['infection_ml']['right']:.3f} mL (analytic "
          f"{lesion_ml:.3f} +- {discretisation_bound_ml([LESION_RADIUS] * 3):.3f}), "
          f"{r['percent_involved']['right']:.2f} % -> severity {r['severity_score']}")
    assert r["infection_ml"]["right"] == pytest.approx(ph["lesion"].sum() * VOXEL_ML)
    assert abs(r["infection_ml"]["right"] - lesion_ml) <= discretisation_bound_ml([LESION_RADIUS] * 3)
    for side in ("right", "left"):
        assert abs(r["lung_ml"][side] - lung_ml) <= discretisation_bound_ml(LUNG_AXES)
    assert r["infection_ml"]["left"] == 0.0 and r["infection_ml"]["outside_lung"] == 0.0
    assert r["percent_involved"]["right"] == pytest.approx(100 * r["infection_ml"]["right"] / r["lung_ml"]["right"])
    assert 0 < r["percent_involved"]["right"] <= 25
    assert r["severity_score"] == {"right": 1, "left": 0, "total": 1}
    # lesion |z| <= 10 mm on the centred grid z = (k - 15.5) x 2.5 mm: slices 12-19
    s = r["infection_slices"]
    assert (s["first_index"], s["last_index"]) == (12, 19)
    assert (s["first_z_mm"], s["last_z_mm"]) == pytest.approx((-8.75, 8.75))


def test_json_and_csv_outputs(tmp_path):
    affine, lung, inf = _hand_case()
    report = infection_burden(lung, inf, affine=affine, case="a")
    write_report_json(report, tmp_path / "a.json")
    assert json.loads((tmp_path / "a.json").read_text())["severity_score"]["total"] == 3
    with pytest.raises(FileExistsError):
        write_report_json(report, tmp_path / "a.json")

    table = tmp_path / "all.csv"
    update_report_csv(report, table)
    update_report_csv({**report, "case": "b"}, table)
    update_report_csv(report, table)  # same case again: replaced, not duplicated
    rows = list(csv.DictReader(table.open()))
    assert [row["case"] for row in rows] == ["b", "a"]
    assert float(rows[1]["lung_ml_total"]) == pytest.approx(6.24)
    assert rows[1]["severity_score_total"] == "3" and rows[1]["infection_slice_last_index"] == "4"

    other = tmp_path / "other.csv"
    other.write_text("x,y\n1,2\n")
    with pytest.raises(ValueError, match="other.csv"):
        update_report_csv(report, other)
    assert other.read_text() == "x,y\n1,2\n"


def _red(rgb: np.ndarray) -> np.ndarray:
    r, g, b = (rgb[..., i].astype(int) for i in range(3))
    return (r > g + 60) & (r > b + 60)


@pytest.mark.slow
def test_qc_montage_real_ct_with_lesion(dicom_series_dir, tmp_path):
    ct, lung = real_ct(dicom_series_dir), real_lung(dicom_series_dir)
    labels = lung[0].numpy()
    # synthetic 25 mm lesion around the point of the right lung farthest from its surface
    spacing = np.linalg.norm(ct.affine.numpy()[:3, :3], axis=0)
    depth = ndimage.distance_transform_edt(labels == 1, sampling=spacing)
    centre = np.unravel_index(np.argmax(depth), depth.shape)
    grid = np.indices(labels.shape, sparse=True)
    lesion = sum(((g - c) * s) ** 2 for g, c, s in zip(grid, centre, spacing)) <= 25.0**2
    infection = MetaTensor(torch.from_numpy(lesion[None].astype(np.uint8)), affine=ct.affine)
    report = infection_burden(lung, infection, case="A0001-synthetic-lesion")
    path = tmp_path / "qc.png"
    layout = write_qc_png(path, ct, infection, lung, title="A0001 synthetic lesion", lines=["test"], n_slices=12)
    image = np.asarray(Image.open(path).convert("RGB"))
    assert image.shape == (layout.header_px + 3 * 256, 4 * 256, 3)
    if os.environ.get("INFNET_QC_DIR"):  # keep the montage for a look
        shutil.copy(path, os.path.join(os.environ["INFNET_QC_DIR"], "qc_real_ct_synthetic_lesion.png"))
    assert len(layout.tiles) == 12
    assert [t.z_mm for t in layout.tiles] == sorted((t.z_mm for t in layout.tiles), reverse=True)
    print(f"\nlesion {report['infection_ml']['right']:.1f} mL at voxel {centre}; tiles at slices "
          f"{[t.index for t in layout.tiles]}; header {layout.header_px} px")

    lesion_tiles = 0
    for tile in layout.tiles:
        left, top, right, bottom = tile.box
        red = _red(image[top:bottom, left:right])
        # radiological view of a RAS array: rows = y descending (anterior up), columns = x
        # descending (patient's right on the left)
        expected = lesion[:, :, tile.index][::-1, ::-1].T.astype(np.uint8)
        expected = np.asarray(Image.fromarray(expected).resize((right - left, bottom - top), Image.NEAREST)) > 0
        assert not (red & ~expected).any()
        if expected.any():
            lesion_tiles += 1
            assert red[expected].mean() > 0.95
        # the right lung (green outline) lies in the tile's left half
        rgb = image[top:bottom, left:right].astype(int)
        green = (rgb[..., 1] == 255) & (rgb[..., 0] == 0) & (rgb[..., 2] == 0)
        if green.any():
            assert np.argwhere(green)[:, 1].mean() < (right - left) / 2
    assert lesion_tiles >= 1


def test_qc_montage_same_view_for_ras_and_lps():
    views = []
    for orientation in ("RAS", "LPS"):
        ph = lung_phantom(orientation)
        lesion = ph["lesion"][None].astype(np.uint8)
        lung = LungMask(min_component_ml=10)(ph["ct"])
        views.append(np.asarray(qc_montage(ph["ct"], lesion, lung, n_slices=6, columns=3, tile_px=128)[0]))
    assert np.array_equal(views[0], views[1])
    assert _red(views[0]).any()


def _save_nifti(path, array, affine):
    nib.save(nib.Nifti1Image(np.asarray(array), affine), str(path))
    return str(path)


def test_cli_report_writes_json_csv_png(tmp_path, capsys):
    ph = lung_phantom("RAS")
    image = _save_nifti(tmp_path / "phantom.nii.gz", ph["ct"][0].numpy(), ph["affine"])
    mask = _save_nifti(tmp_path / "phantom_mask.nii.gz", ph["lesion"].astype(np.uint8), ph["affine"])
    out = tmp_path / "out"
    assert main(["report", "--image", image, "--mask", mask, "-o", str(out)]) == 0
    report = json.loads((out / "phantom_burden.json").read_text())
    assert report["case"] == "phantom"
    assert report["infection_ml"]["right"] == pytest.approx(ph["lesion"].sum() * VOXEL_ML)
    assert abs(report["lung_ml"]["left"] - ellipsoid_volume_ml(LUNG_AXES)) <= discretisation_bound_ml(LUNG_AXES)
    assert report["severity_score"]["total"] == 1
    rows = list(csv.DictReader((out / "burden.csv").open()))
    assert len(rows) == 1 and rows[0]["case"] == "phantom"
    png = Image.open(out / "phantom_qc.png")
    assert png.format == "PNG" and png.mode == "RGB" and png.size[0] == 4 * 256
    assert "phantom" in capsys.readouterr().out

    # a second run must not replace the outputs silently
    assert main(["report", "--image", image, "--mask", mask, "-o", str(out)]) == 2
    assert "exists" in capsys.readouterr().err
    # another case name goes to the same CSV
    lung = _save_nifti(tmp_path / "lung.nii.gz", (ph["right"] * 1 + ph["left"] * 2).astype(np.uint8), ph["affine"])
    assert main(["report", "--image", image, "--mask", mask, "--lung-mask", lung, "-o", str(out), "--case", "b"]) == 0
    assert [row["case"] for row in csv.DictReader((out / "burden.csv").open())] == ["phantom", "b"]
    assert json.loads((out / "b_burden.json").read_text())["lung_ml"]["right"] == pytest.approx(
        ph["right"].sum() * VOXEL_ML
    )


@pytest.mark.parametrize("change", ["origin", "shape"])
def test_cli_report_rejects_geometry_mismatch(tmp_path, capsys, change):
    ph = lung_phantom("RAS")
    image = _save_nifti(tmp_path / "ct.nii.gz", ph["ct"][0].numpy(), ph["affine"])
    affine, lesion = ph["affine"].copy(), ph["lesion"].astype(np.uint8)
    if change == "origin":
        affine[0, 3] += 4.0
    else:
        lesion = lesion[:, :, :-1]
    mask = _save_nifti(tmp_path / "bad_mask.nii.gz", lesion, affine)
    assert main(["report", "--image", image, "--mask", mask, "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "bad_mask.nii.gz" in err and "resample" in err
    assert not (tmp_path / "out").exists()
