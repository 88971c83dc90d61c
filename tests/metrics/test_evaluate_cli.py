"""Folder evaluation: pairing, errors, report files, the CLI and the bundle's evaluate.json."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from infnet_monai.cli import main
from infnet_monai.metrics.evaluate import case_name, evaluate_folders, pair_files

from tests.conftest import BUNDLE_DIR, REPO_ROOT

AFFINE = np.diag([0.7, 0.9, 2.0, 1.0])


def _save(path: Path, array: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array.astype(np.uint8), affine), str(path))
    return path


def _cube(shape=(20, 20, 8), lo=(4, 4, 2), size=(8, 8, 4)) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    mask[lo[0] : lo[0] + size[0], lo[1] : lo[1] + size[1], lo[2] : lo[2] + size[2]] = 1
    return mask


@pytest.fixture()
def volume_folders(tmp_path):
    """Three cases: exact match (a), a 2-voxel shift (b, Dice 3/4), and a missed lesion (c)."""
    pred, label = tmp_path / "pred", tmp_path / "label"
    _save(pred / "a_pred.nii.gz", _cube())
    _save(label / "a.nii.gz", _cube())
    _save(pred / "b_seg.nii.gz", _cube(lo=(6, 4, 2)))
    _save(label / "b.nii.gz", _cube())
    _save(pred / "c.nii", np.zeros((20, 20, 8)))
    _save(label / "c.nii", _cube())
    (pred / "notes.txt").write_text("ignored")
    return pred, label


def test_case_names():
    assert case_name("x/case_01_pred.nii.gz", "volume", prediction=True) == "case_01"
    assert case_name("case_01_mask.nii", "volume", prediction=True) == "case_01"
    assert case_name("case_01_mask.nii", "volume", prediction=False) == "case_01_mask"
    assert case_name("12.png", "slices", prediction=True) == "12"
    assert case_name("12.png", "volume", prediction=True) is None


def test_folder_report_json_and_csv(volume_folders, tmp_path, capsys):
    pred, label = volume_folders
    out = tmp_path / "report.json"
    assert main(["evaluate", "--pred", str(pred), "--label", str(label), "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "empty-mask policy" in printed and "one empty=1" in printed
    report = json.loads(out.read_text())
    rows = {r["case"]: r for r in report["cases"]}
    assert [r["case"] for r in report["cases"]] == ["a", "b", "c"]
    assert rows["a"]["dice"] == pytest.approx(1.0) and rows["a"]["hd95_mm"] == 0.0
    assert rows["b"]["dice"] == pytest.approx(2 * 6 * 8 * 4 / (2 * 8 * 8 * 4))  # overlap 6 of 8 rows
    assert rows["c"]["empty"] == "pred" and math.isinf(rows["c"]["hd95_mm"]) and rows["c"]["dice"] == 0.0
    summary = report["summary"]["1"]
    assert summary["n"] == 3 and summary["n_one_empty"] == 1
    assert math.isinf(summary["asd_mm"]["mean"]) and summary["asd_mm"]["n_finite"] == 2
    assert summary["asd_mm"]["finite_mean"] == pytest.approx((0.0 + rows["b"]["asd_mm"]) / 2)
    assert summary["dice"]["mean"] == pytest.approx((1.0 + 0.75 + 0.0) / 3)
    assert "exactly one empty" in report["empty_mask_policy"] and report["tolerance_mm"] == 3.0

    out_csv = tmp_path / "report.csv"
    assert main(["evaluate", "--pred", str(pred), "--label", str(label), "--tolerance", "2", "-o", str(out_csv)]) == 0
    lines = out_csv.read_text().splitlines()
    assert lines[0].startswith("# mode: volume") and any("n_one_empty=1" in line for line in lines)
    table = list(csv.DictReader(line for line in lines if not line.startswith("#")))
    by_case = {r["case"]: r for r in table}
    assert float(by_case["b"]["dice"]) == pytest.approx(0.75)
    assert by_case["c"]["hd95_mm"] == "inf" and by_case["mean"]["hd95_mm"] == "inf"
    assert float(by_case["finite_mean"]["hd95_mm"]) == pytest.approx(float(by_case["b"]["hd95_mm"]) / 2)
    # an existing report is kept unless --overwrite
    assert main(["evaluate", "--pred", str(pred), "--label", str(label), "-o", str(out_csv)]) == 2


def test_unpaired_files_exit_2_with_one_line(volume_folders, capsys):
    pred, label = volume_folders
    _save(pred / "extra_pred.nii.gz", _cube())
    code = main(["evaluate", "--pred", str(pred), "--label", str(label)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "unpaired" in err and "extra_pred.nii.gz" in err


def test_geometry_mismatch_and_resample_label(tmp_path, capsys):
    pred_file = _save(tmp_path / "p" / "a.nii.gz", _cube(shape=(32, 32, 8), lo=(8, 8, 2), size=(16, 16, 4)),
                      np.diag([1.0, 1.0, 2.0, 1.0]))
    coarse = np.diag([2.0, 2.0, 2.0, 1.0])
    coarse[:3, 3] = (0.5, 0.5, 0.0)  # label voxel j centred at 0.5 + 2 j mm: no nearest-neighbour ties
    label_file = _save(tmp_path / "l" / "a.nii.gz", _cube(shape=(16, 16, 8), lo=(4, 4, 2), size=(8, 8, 4)), coarse)
    assert main(["evaluate", "--pred", str(pred_file.parent), "--label", str(label_file.parent)]) == 2
    err = capsys.readouterr().err
    assert str(pred_file) in err and str(label_file) in err and "--resample-label" in err
    report = evaluate_folders(pred_file.parent, label_file.parent, resample_label=True)
    (row,) = report["cases"]
    assert row["label_resampled"] and row["dice"] == pytest.approx(1.0) and row["hd95_mm"] == 0.0


def test_non_binary_label_and_per_class(tmp_path):
    label = _cube()
    label[4:8, 4:12, 2:6] = 2
    _save(tmp_path / "p" / "a.nii.gz", label)
    _save(tmp_path / "l" / "a.nii.gz", label)
    with pytest.raises(ValueError, match=r"a\.nii\.gz: .*not binary.*--labels"):
        evaluate_folders(tmp_path / "p", tmp_path / "l")
    report = evaluate_folders(tmp_path / "p", tmp_path / "l", labels=[1, 2])
    assert [(r["class"], r["dice"]) for r in report["cases"]] == [(1, 1.0), (2, 1.0)]
    assert set(report["summary"]) == {"1", "2"}


def test_slices_mode_protocol(tmp_path):
    gt = np.zeros((8, 8), np.uint8)
    gt[2:5, 2:6] = 255  # 12 foreground pixels of 64
    (tmp_path / "gt").mkdir()
    (tmp_path / "pred").mkdir()
    Image.fromarray(gt).save(tmp_path / "gt" / "7.png")
    Image.fromarray(gt[::2, ::2]).save(tmp_path / "pred" / "7.png")  # 4x4, resized to 8x8 (bilinear)
    Image.fromarray(gt).save(tmp_path / "gt" / "8.png")
    Image.fromarray(gt).save(tmp_path / "pred" / "8.png")  # perfect map
    report = evaluate_folders(tmp_path / "pred", tmp_path / "gt", mode="slices", output_file=tmp_path / "r.json")
    rows = {r["case"]: r for r in report["cases"]}
    # perfect binary map: pred >= t is the GT for every t > 0; t = 0 takes all 64 pixels
    assert rows["8"]["dice"] == pytest.approx((255 * 1.0 + 2 * 12 / (12 + 64)) / 256)
    assert rows["8"]["mae"] == 0.0 and rows["8"]["s_measure"] == pytest.approx(1.0)
    assert rows["7"]["resized"] and not rows["8"]["resized"]
    assert report["summary"]["toolbox"]["dice"]["mean"] == pytest.approx((rows["7"]["dice"] + rows["8"]["dice"]) / 2)
    assert json.loads((tmp_path / "r.json").read_text())["mode"] == "slices"
    with pytest.raises(ValueError, match="--mode slices"):
        pair_files(tmp_path / "pred", tmp_path / "gt", mode="volume")


@pytest.mark.slow
def test_bundle_evaluate_config_runs_a_folder_against_itself(tmp_path):
    pytest.importorskip("fire", reason="python -m monai.bundle needs the 'fire' package")
    folder = tmp_path / "masks"
    _save(folder / "a.nii.gz", _cube())
    _save(folder / "b.nii.gz", _cube(lo=(2, 3, 1), size=(5, 9, 3)))
    out = tmp_path / "bundle_report.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", "--config_file", "configs/evaluate.json",
         "--pred_dir", str(folder), "--label_dir", str(folder), "--output_file", str(out)],
        cwd=BUNDLE_DIR, env=env, capture_output=True, encoding="utf-8", errors="replace", timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(out.read_text())
    assert [r["dice"] for r in report["cases"]] == [1.0, 1.0]
    assert report["summary"]["1"]["hd95_mm"]["mean"] == 0.0


def test_truncated_file_is_one_line_naming_it(volume_folders, tmp_path, capsys):
    pred, label = volume_folders
    data = (pred / "b_seg.nii.gz").read_bytes()
    (pred / "b_seg.nii.gz").write_bytes(data[: len(data) // 2])  # a copy cut short
    assert main(["evaluate", "--pred", str(pred), "--label", str(label), "-o", str(tmp_path / "r.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{pred / 'b_seg.nii.gz'}: unreadable" in err and "truncated or corrupt" in err
    assert not (tmp_path / "r.json").exists()
