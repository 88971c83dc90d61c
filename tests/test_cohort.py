"""Cohort runs: parts (--num-parts/--part-id), torchrun, restarts, summary and failure tables."""

from __future__ import annotations

import csv
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from infnet_monai.cli import main
from infnet_monai.cohort import RunLedger, pending_datalist, select_part, summarize, summary_row

from tests.bundle_helpers import CONFIGS_DIR, INFERENCE_FILE
from tests.conftest import REPO_ROOT
from infnet_monai.data.phantoms import affine_for, chest_phantom, save_nifti
from tests.test_segment_cli import weights  # noqa: F401 - the module's random-weights fixture

SPACING = (2.4, 2.4, 6.0)
MULTI_GPU_FILE = CONFIGS_DIR / "multi_gpu_inference.json"


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _masks(folder: Path) -> dict[str, np.ndarray]:
    return {p.name: np.asarray(nib.load(str(p)).dataobj) for p in sorted(folder.glob("*_seg.nii.gz"))}


def _cohort(folder: Path, count: int = 5, slices: int = 2) -> Path:
    folder.mkdir(parents=True)
    for i in range(count):
        save_nifti(folder / f"case{i}.nii.gz", chest_phantom((96, 104, slices), SPACING, seed=i), affine_for(SPACING))
    return folder


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    return {**env, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}


def test_parts_are_disjoint_deterministic_and_whole():
    items = [f"v{i:02d}" for i in range(11)]
    parts = [select_part(items, 3, i) for i in range(3)]
    assert sorted(sum(parts, [])) == items and [len(p) for p in parts] == [4, 4, 3]
    assert parts == [select_part(items, 3, i) for i in range(3)]
    assert select_part(items, 1, 0) == items and select_part(items[:2], 3, 2) == []
    with pytest.raises(ValueError, match="--part-id 3 must lie in 0..2"):
        select_part(items, 3, 3)


def test_ledger_rows_failures_and_merge(tmp_path):
    from monai.data import MetaTensor
    import torch

    mask = np.zeros((1, 10, 10, 4), np.uint8)
    mask[0, 2:4, 2:4, 1] = 1  # 4 voxels of 2 x 2 x 5 mm = 0.08 mL
    lung = np.zeros_like(mask)
    lung[0, :5, :, :] = 1
    lung[0, 5:, :, :] = 2
    affine = np.diag([2.0, 2.0, 5.0, 1.0])
    pred = MetaTensor(torch.from_numpy(mask), affine=torch.from_numpy(affine))
    row = summary_row("a.nii.gz", "o/a_seg.nii.gz", pred, MetaTensor(torch.from_numpy(lung), affine=torch.from_numpy(affine)),
                      seconds=1.234, inferred_slices=3)
    assert row["slices"] == 4 and row["inferred_slices"] == 3 and row["seconds"] == "1.23"
    assert row["infected_ml"] == "0.08" and row["lung_ml"] == "8.00" and row["involvement_percent"] == "1.000"
    assert summary_row("a", "o", pred)["lung_ml"] == ""  # no lung labels: no involvement

    part0, part1 = RunLedger(tmp_path, ".part-0-of-2"), RunLedger(tmp_path, ".part-1-of-2")
    part0.done(row)
    part0.failed("c.nii.gz", "c.nii.gz: corrupt; check the file")
    part1.failed("b.nii.gz", "b.nii.gz: corrupt; check the file")
    assert [r["input"] for r in _rows(tmp_path / "failures.part-0-of-2.csv")] == ["c.nii.gz"]
    # a rerun of part 1 that finishes b: its failure goes, its summary row comes
    RunLedger(tmp_path, ".part-1-of-2").done({**row, "input": "b.nii.gz"})
    assert not (tmp_path / "failures.part-1-of-2.csv").exists()
    counts = summarize(tmp_path)
    assert counts == {"volumes": 2, "failed": 1, "infected_ml": 0.16, "parts": [0, 1], "missing": []}
    assert [r["input"] for r in _rows(tmp_path / "summary.csv")] == ["a.nii.gz", "b.nii.gz"]
    assert _rows(tmp_path / "failures.csv") == [{"input": "c.nii.gz", "error": "c.nii.gz: corrupt; check the file"}]
    assert summarize(tmp_path) == counts  # merging again changes nothing
    # a table of other columns where the ledger goes is refused before any work
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "summary.csv").write_text("name,score\n")
    with pytest.raises(ValueError, match="other columns than the run's summary table"):
        RunLedger(tmp_path / "x")


def test_pending_datalist_leaves_out_finished_volumes(tmp_path):
    (tmp_path / "a_seg.nii.gz").write_bytes(b"")
    items = [{"image": "/data/a.nii.gz"}, {"image": "/data/b"}]
    assert pending_datalist(items, tmp_path) == [{"image": "/data/b"}]


@pytest.mark.slow
def test_parts_together_equal_the_whole_run(weights, tmp_path, capsys):  # noqa: F811
    src = _cohort(tmp_path / "in")
    base = ["segment", str(src / "*.nii.gz"), "--weights", str(weights), "-q"]
    assert main(base + ["-o", str(tmp_path / "whole")]) == 0
    whole = _masks(tmp_path / "whole")
    assert len(whole) == 5 and sorted(r["input"] for r in _rows(tmp_path / "whole" / "summary.csv")) == sorted(
        str(p) for p in src.glob("*.nii.gz")
    )
    out = tmp_path / "parts"
    for part in (1, 0):
        assert main(base + ["-o", str(out), "--num-parts", "2", "--part-id", str(part)]) == 0
    assert {k: v.tobytes() for k, v in _masks(out).items()} == {k: v.tobytes() for k, v in whole.items()}
    assert [len(_rows(out / f"summary.part-{i}-of-2.csv")) for i in (0, 1)] == [3, 2]
    capsys.readouterr()
    assert main(["summarize", str(out)]) == 0
    assert "5 volume(s) in summary.csv, 0 failed" in capsys.readouterr().out
    merged = {r["input"]: r for r in _rows(out / "summary.csv")}
    reference = {r["input"]: r for r in _rows(tmp_path / "whole" / "summary.csv")}
    assert merged.keys() == reference.keys()
    for key in merged:
        assert merged[key]["infected_ml"] == reference[key]["infected_ml"]
        assert merged[key]["involvement_percent"] == reference[key]["involvement_percent"] != ""


@pytest.mark.slow
def test_failures_are_listed_and_counted_in_the_exit_status(weights, tmp_path, capsys):  # noqa: F811
    src = _cohort(tmp_path / "in", count=2)
    for name in ("flat.nii.gz", "broken.nii.gz"):
        (src / name).write_bytes(b"not a volume")
    out = tmp_path / "o"
    assert main(["segment", str(src / "*.nii.gz"), "-o", str(out), "--weights", str(weights), "-q"]) == 2
    failures = _rows(out / "failures.csv")
    assert [Path(r["input"]).name for r in failures] == ["broken.nii.gz", "flat.nii.gz"]
    assert all(r["error"].startswith(r["input"]) and "\n" not in r["error"] for r in failures)
    assert len(_rows(out / "summary.csv")) == 2
    # fixed inputs: a rerun does them alone, keeps the others and clears the failure table
    for name in ("flat.nii.gz", "broken.nii.gz"):
        save_nifti(src / name, chest_phantom((96, 104, 2), SPACING, seed=9), affine_for(SPACING))
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("case*_seg.nii.gz")}
    assert main(["segment", str(src / "*.nii.gz"), "-o", str(out), "--weights", str(weights), "-q"]) == 0
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("case*_seg.nii.gz")} == stamps
    assert not (out / "failures.csv").exists() and len(_rows(out / "summary.csv")) == 4
    assert {r["status"] for r in _rows(out / "summary.csv")} == {"done"}


@pytest.mark.slow
def test_killed_part_rerun_completes_the_set_without_rewriting(weights, tmp_path):  # noqa: F811
    src = _cohort(tmp_path / "in", count=6, slices=6)
    out = tmp_path / "o"
    command = [sys.executable, "-m", "infnet_monai.cli", "segment", str(src / "*.nii.gz"), "-o", str(out),
               "--weights", str(weights), "-q", "--report", "--num-parts", "2", "--part-id", "1"]
    proc = subprocess.Popen(command, env=_env(), cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while not list(out.glob("*_seg.nii.gz")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = {p.name: p.stat().st_mtime_ns for p in out.glob("*_seg.nii.gz")}
    assert 1 <= len(finished) < 3, "the part was not killed midway"
    # an interrupted volume may have left its report without its mask; the rerun redoes it
    rerun = subprocess.run(command, env=_env(), cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    masks = {p.name: p.stat().st_mtime_ns for p in out.glob("*_seg.nii.gz")}
    assert sorted(masks) == [f"case{i}_seg.nii.gz" for i in (1, 3, 5)]
    assert all(masks[name] == stamp for name, stamp in finished.items())
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporaries left
    rows = _rows(out / "summary.part-1-of-2.csv")
    assert sorted(Path(r["input"]).name for r in rows) == ["case1.nii.gz", "case3.nii.gz", "case5.nii.gz"]
    assert len(_rows(out / "burden.part-1-of-2.csv")) == 3
    assert main(["summarize", str(out)]) == 1  # part 0 has not run


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_torchrun_bundle_writes_each_volume_once_as_one_process(weights, tmp_path):  # noqa: F811
    src = _cohort(tmp_path / "in")
    configs = f"['{INFERENCE_FILE}','{MULTI_GPU_FILE}']"
    common = ["--dataset_dir", str(src), "--ckpt_path", str(weights)]
    single = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(INFERENCE_FILE), *common,
         "--output_dir", str(tmp_path / "single")],
        env=_env(), cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
    )
    assert single.returncode == 0, single.stderr[-2000:]
    out = tmp_path / "ranks"
    torchrun = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port", str(_free_port()),
         "-m", "monai.bundle", "run", "--config_file", configs, *common, "--output_dir", str(out)],
        env=_env(), cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
    )
    assert torchrun.returncode == 0, torchrun.stderr[-3000:]
    single_masks, masks = _masks(tmp_path / "single"), _masks(out)
    assert len(masks) == 5 and {k: v.tobytes() for k, v in masks.items()} == {k: v.tobytes() for k, v in single_masks.items()}
    parts = [_rows(out / f"summary.part-{r}-of-2.csv") for r in (0, 1)]
    assert [len(p) for p in parts] == [3, 2]  # each volume on one rank only
    assert sorted(Path(r["input"]).name for r in _rows(out / "summary.csv")) == [f"case{i}.nii.gz" for i in range(5)]
    assert "5 volume(s) in summary.csv, 0 failed" in torchrun.stdout
    # a rerun finds nothing left to do and writes nothing
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("*_seg.nii.gz")}
    again = subprocess.run(torchrun.args, env=_env(), cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*_seg.nii.gz")} == stamps


@pytest.mark.slow
def test_torchrun_cli_shards_by_rank_and_rank0_merges(weights, tmp_path):  # noqa: F811
    src = _cohort(tmp_path / "in")
    out = tmp_path / "o"
    run = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port", str(_free_port()),
         "-m", "infnet_monai.cli", "segment", str(src / "*.nii.gz"), "-o", str(out), "--weights", str(weights), "-q"],
        env=_env(), cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert sorted(_masks(out)) == [f"case{i}_seg.nii.gz" for i in range(5)]
    assert [len(_rows(out / f"summary.part-{r}-of-2.csv")) for r in (0, 1)] == [3, 2]
    assert len(_rows(out / "summary.csv")) == 5 and "5 volume(s) in summary.csv, 0 failed" in run.stdout


def test_summarize_starts_without_torch_or_monai(tmp_path):
    """Merging a run's tables is file work: ``summarize`` imports neither torch nor MONAI."""
    (tmp_path / "summary.part-0-of-1.csv").write_text("")
    code = ("import sys; from infnet_monai.cli import main; code = main(['summarize', sys.argv[1]]); "
            "print(code, 'torch' in sys.modules, 'monai' in sys.modules)")
    run = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, cwd=REPO_ROOT,
                         check=True)
    assert run.stdout.split()[-2:] == ["False", "False"], run.stdout + run.stderr
    assert "0 volume(s)" in run.stdout
