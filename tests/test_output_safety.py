"""Nothing lost, nothing run from the cache, no silent nonsense: output names, clashes, output
folders, the compiled-package cache's trust, and inputs that are not a CT in HU."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import warnings

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor

import infnet_monai.runtime.packaged as packaged
import infnet_monai.utils.atomic as atomic
from infnet_monai.cli import main
from infnet_monai.inference import mask_saver
from infnet_monai.naming import CASE_NAME_KEY, OutputClash, case_name, check_output_names, output_file
from infnet_monai.data.ct_reader import CTReader, check_hounsfield
from infnet_monai.data.inputs import CTInputError, expand_inputs
from infnet_monai.utils import OutputDirError, atomic_output, prepare_output_dir, remove_stale_temporaries

import tests.data.test_ct_reader as test_io
from infnet_monai.data.phantoms import affine_for, chest_phantom, save_nifti
from tests.data.test_ct_reader import synthetic_hu, write_ct_series
from tests.test_segment_cli import weights  # noqa: F401 - the module's random-weights fixture

SPACING = (2.4, 2.4, 6.0)
TCIA_NAMES = ["2.000000-5mm-40805", "3.000000-lung 1.25mm-10229", "4.000000-thorax é-1"]


def _phantom_series(folder, seed: int, uid: str, monkeypatch) -> None:
    """A 3-slice chest phantom (HU) as a DICOM CT series at 2.4 x 2.4 x 6 mm."""
    monkeypatch.setattr(test_io, "SPACING", SPACING)
    hu = chest_phantom((120, 128, 3), SPACING, seed=seed).transpose(2, 1, 0)  # (slices, rows, columns)
    write_ct_series(folder, np.round(hu), uid=uid)


def _files(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# ------------------------------------------------------------------------------------------------
# one naming rule
# ------------------------------------------------------------------------------------------------
def test_case_names_keep_the_whole_name(tmp_path):
    for name in TCIA_NAMES:
        assert case_name(f"/data/p1/study/{name}") == name
        assert case_name(f"/data/{name}.nii.gz") == name
    assert case_name("scan.v2.nii") == "scan.v2" and case_name("frames.dcm") == "frames"
    (tmp_path / "2.000000-5mm-40805").mkdir()
    assert case_name(tmp_path / "2.000000-5mm-40805", series_uid="1.2.3") == "2.000000-5mm-40805_series-1.2.3"
    assert case_name(tmp_path / "scan.nii.gz", series_uid="1.2.3") == "scan"  # a file holds one series


def test_saver_writes_the_name_the_check_uses(tmp_path):
    """MONAI's own layout would write '2_seg.nii.gz' for every TCIA-style folder."""
    for name in TCIA_NAMES:
        mask = MetaTensor(torch.zeros(1, 4, 4, 3), meta={"filename_or_obj": str(tmp_path / "in" / name)})
        mask_saver(tmp_path / "out", "seg")(mask)
    chosen = MetaTensor(torch.ones(1, 4, 4, 3), meta={"filename_or_obj": "x/2.000000-5mm-40805", CASE_NAME_KEY: "a_series-9"})
    mask_saver(tmp_path / "out", "seg")(chosen)
    assert _files(tmp_path / "out") == sorted([f"{n}_seg.nii.gz" for n in TCIA_NAMES] + ["a_series-9_seg.nii.gz"])


def test_reader_names_the_case_with_the_chosen_series(tmp_path):
    folder = tmp_path / "2.000000-5mm-40805"
    write_ct_series(folder, synthetic_hu(), uid="1.2.826.0.1.3680043.8.498.7")
    _, meta = CTReader().get_data(CTReader().read(folder))
    assert meta[CASE_NAME_KEY] == "2.000000-5mm-40805"
    reader = CTReader(series_uid="1.2.826.0.1.3680043.8.498.7")
    _, meta = reader.get_data(reader.read(folder))
    assert meta[CASE_NAME_KEY] == "2.000000-5mm-40805_series-1.2.826.0.1.3680043.8.498.7"


def _masks(*postfixes):
    """``outputs_of`` for :func:`check_output_names`: ``<case>_<postfix>.nii.gz`` in ``o``."""
    return lambda out: lambda path: [output_file(case_name(path), out, p) for p in postfixes]


def test_clashing_outputs_are_refused_naming_both(tmp_path):
    a, b = tmp_path / "p1" / "CT.nii.gz", tmp_path / "p2" / "CT.nii.gz"
    with pytest.raises(OutputClash, match=f"{a} and {b} would both be written to {tmp_path / 'o' / 'CT_seg.nii.gz'}"):
        check_output_names([a, b], _masks("seg")(tmp_path / "o"))
    with pytest.raises(OutputClash, match="CT_prob.nii.gz"):  # every output is checked, not only the mask
        check_output_names([a, b], _masks("prob", "seg")(tmp_path / "o"))
    with pytest.raises(OutputClash, match="would replace or enter the input"):  # an earlier mask matched by a glob
        check_output_names([tmp_path / "a.nii.gz", tmp_path / "a_seg.nii.gz"], _masks("seg")(tmp_path))
    (tmp_path / "series").mkdir()
    with pytest.raises(OutputClash, match="choose an output folder outside the inputs"):
        check_output_names([tmp_path / "series"], _masks("seg")(tmp_path / "series"))
    names = check_output_names([a, tmp_path / "p2" / "CT.v2.nii.gz"], _masks("seg", "prob")(tmp_path / "o"))
    assert [[p.name for p in files] for files in names.values()] == [
        ["CT_seg.nii.gz", "CT_prob.nii.gz"], ["CT.v2_seg.nii.gz", "CT.v2_prob.nii.gz"]
    ]
    # one volume written three ways is one input, named as first written
    write_ct_series(tmp_path / "s.1", synthetic_hu())
    ways = [str(tmp_path / "s.1"), f"{tmp_path}/series/../s.1/", str(tmp_path / "s.1") + "/"]
    assert expand_inputs(ways) == [tmp_path / "s.1"]


def test_cli_refuses_a_clash_before_writing_anything(weights, tmp_path, capsys):  # noqa: F811
    src = tmp_path / "in"
    src.mkdir()
    save_nifti(src / "a.nii.gz", chest_phantom((64, 64, 2), SPACING), affine_for(SPACING))
    shutil.copy(src / "a.nii.gz", src / "a_seg.nii.gz")  # an input named like another input's mask
    before = (src / "a_seg.nii.gz").read_bytes()
    rc = main(["segment", str(src / "*.nii.gz"), "-o", str(src), "--weights", str(weights), "-q", "--overwrite"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "a_seg.nii.gz" in err
    assert (src / "a_seg.nii.gz").read_bytes() == before and _files(src) == ["a.nii.gz", "a_seg.nii.gz"]


@pytest.mark.slow
def test_tcia_style_series_folders_each_get_their_own_mask(weights, tmp_path, capsys, monkeypatch):  # noqa: F811
    root = tmp_path / "Lung-PET-CT-Dx"
    for k, name in enumerate(TCIA_NAMES[:2]):
        _phantom_series(root / f"A000{k}" / "study" / name, seed=k, uid=f"1.2.826.0.1.3680043.8.498.{k + 10}", monkeypatch=monkeypatch)
    out = tmp_path / "o"
    args = ["segment", str(root / "*" / "*" / "*"), "-o", str(out), "--weights", str(weights), "-q"]
    assert main(args) == 0
    assert _files(out) == sorted(f"{n}_seg.nii.gz" for n in TCIA_NAMES[:2]) + ["summary.csv"]
    printed = capsys.readouterr().out
    assert all(f"{n}: " in printed for n in TCIA_NAMES[:2])
    first = nib.load(str(out / f"{TCIA_NAMES[0]}_seg.nii.gz"))
    assert first.shape == (120, 128, 3) and np.asarray(first.dataobj).any()
    # a rerun keeps both and says so under the names it checked
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert main(args) == 0
    assert "exists, kept" in capsys.readouterr().err and {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == stamps
    # --series: the mask names the series
    series_dir = root / "A0000" / "study" / TCIA_NAMES[0]
    assert main(["segment", str(series_dir), "-o", str(out), "--weights", str(weights), "-q",
                 "--series", "1.2.826.0.1.3680043.8.498.10"]) == 0
    assert f"{TCIA_NAMES[0]}_series-1.2.826.0.1.3680043.8.498.10_seg.nii.gz" in _files(out)
    # the nested study folder: one line listing its series and a glob that works
    capsys.readouterr()
    assert main(["segment", str(root), "-o", str(tmp_path / "o2"), "--weights", str(weights), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "2 series folder(s) below it" in err and f"'{root}/**/'" in err
    assert main(["segment", f"{root}/**/", "-o", str(tmp_path / "o2"), "--weights", str(weights), "-q"]) == 0
    assert len(_files(tmp_path / "o2")) == 3  # the masks and summary.csv


# ------------------------------------------------------------------------------------------------
# the output folder
# ------------------------------------------------------------------------------------------------
def test_output_folder_checked_before_any_work(tmp_path, monkeypatch):
    assert prepare_output_dir(tmp_path / "new" / "deeper").is_dir()
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputDirError, match="exists and is not a folder"):
        prepare_output_dir(tmp_path / "file")
    with pytest.raises(OutputDirError, match=r"about 5000 MB of outputs expected but only 1 MB free"):
        with monkeypatch.context() as m:
            m.setattr(atomic.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9 - 10**6, 10**6))
            prepare_output_dir(tmp_path, needed_bytes=5 * 10**9)

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(atomic.tempfile, "mkstemp", read_only)
    with pytest.raises(OutputDirError, match=r"cannot write into the output folder \(Read-only file system\)"):
        prepare_output_dir(tmp_path)


def test_temporaries_of_killed_runs_are_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    stale = tmp_path / f".a_seg.nii.gz.{atomic._HOST}.{dead_pid}.k2j3_x9z.infnet-tmp.nii.gz"
    live = tmp_path / f".b_seg.nii.gz.{atomic._HOST}.{os.getpid()}.x9y8abcd.infnet-tmp.nii.gz"
    other_host = tmp_path / f".c_seg.nii.gz.otherhost.{dead_pid}.abcd1234.infnet-tmp.nii.gz"
    unrelated = tmp_path / ".hidden.tmp"
    users = tmp_path / f".notes.{atomic._HOST}.20240101.v2.tmp"  # a user's file that only looks alike
    for path in (stale, live, other_host, unrelated, users):
        path.write_bytes(b"partial")
    assert remove_stale_temporaries(tmp_path) == [stale]
    assert _files(tmp_path) == sorted(p.name for p in (live, other_host, unrelated, users))
    with atomic_output(tmp_path / "2.000000-5mm-40805_seg.nii.gz") as tmp:  # its own temporary has the pattern
        assert atomic._TEMPORARY.match(tmp.name) and tmp.name.endswith(".infnet-tmp.nii.gz")
        tmp.write_bytes(b"x")
    assert (tmp_path / "2.000000-5mm-40805_seg.nii.gz").read_bytes() == b"x"


@pytest.mark.slow
def test_write_error_is_one_line_and_leaves_no_partial_file(weights, tmp_path, capsys, monkeypatch):  # noqa: F811
    src = tmp_path / "in"
    src.mkdir()
    for k in range(2):
        save_nifti(src / f"c{k}.nii.gz", chest_phantom((96, 96, 2), SPACING, seed=k), affine_for(SPACING))
    from infnet_monai.utils.writer import AtomicNibabelWriter

    def full_disk(self, filename_or_obj, verbose=False, **kwargs):
        with atomic_output(filename_or_obj) as tmp:
            tmp.write_bytes(b"half a file")
            raise OSError(errno.ENOSPC, "No space left on device", str(tmp))

    monkeypatch.setattr(AtomicNibabelWriter, "write", full_disk)
    out = tmp_path / "o"
    rc = main(["segment", str(src), "-o", str(out), "--weights", str(weights), "-q"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2  # both volumes failed
    line = f"{out / 'c0_seg.nii.gz'}: cannot write the output (No space left on device); free disk space or choose another -o"
    assert err[0] == f"error: {line}"
    assert err[1] == "error: 1 more volume(s) not segmented after the write error" and len(err) == 2
    assert _files(out) == ["failures.csv"]  # no partial mask; the failure is listed
    assert (out / "failures.csv").read_text().splitlines() == [
        "input,error", f"{src / 'c0.nii.gz'},{line}",
        f"{src / 'c1.nii.gz'},{src / 'c1.nii.gz'}: not segmented after the write error on {out / 'c0_seg.nii.gz'}",
    ]


# ------------------------------------------------------------------------------------------------
# the compiled-package cache
# ------------------------------------------------------------------------------------------------
class _Eager(torch.nn.Module):
    def forward(self, x):
        return x[:, :1]


def _planted(tmp_path, monkeypatch, value: float):
    """A weights file (its own package name through ``value``), the package name the cache
    would use for it, and a loader that records every package it is asked to run (a planted
    package would run its code right there)."""
    weights_file = tmp_path / "w.pt"
    torch.save({"x": torch.full((1,), value)}, weights_file)
    loaded = []
    monkeypatch.setattr(packaged, "_load_runner", lambda path: loaded.append(path) or (lambda x: x[:, :1]))
    return weights_file, packaged.package_path(weights_file, 2, 64), loaded


def test_cache_folder_not_private_is_not_used(tmp_path, monkeypatch):
    weights_file, path, loaded = _planted(tmp_path, monkeypatch, 1.0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"planted code")
    (path.parent / (path.name + ".blake2b")).write_text(packaged._package_digest(path))
    os.chmod(path.parent, 0o777)  # a shared lab cache
    try:
        with pytest.warns(UserWarning, match=r"is not private to you \(owner uid \d+, mode 777\).*chmod 700"):
            net = packaged.packaged_network(weights_file, _Eager, 2, 64, build=True)
    finally:
        os.chmod(path.parent, 0o700)
    assert isinstance(net, _Eager) and loaded == [] and path.read_bytes() == b"planted code"  # left alone


def test_planted_or_changed_package_is_never_loaded(tmp_path, monkeypatch):
    weights_file, path, loaded = _planted(tmp_path, monkeypatch, 2.0)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    record = path.parent / (path.name + ".blake2b")
    for plant in ("no record", "wrong record", "group-writable"):
        path.write_bytes(b"planted code")
        if plant != "no record":
            record.write_text("0" * 64 if plant == "wrong record" else packaged._package_digest(path))
        if plant == "group-writable":
            os.chmod(path, 0o664)
        with pytest.warns(UserWarning, match="not built by you here or changed since.*not loaded, removed"):
            net = packaged.packaged_network(weights_file, _Eager, 2, 64, build=False)
        assert isinstance(net, _Eager) and loaded == [] and not path.exists() and not record.exists()
    # a package with its build record, owned by the user, is loaded
    path.write_bytes(b"built here")
    os.chmod(path, 0o644)
    record.write_text(packaged._package_digest(path) + "\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        net = packaged.packaged_network(weights_file, _Eager, 2, 64, build=False)
    assert isinstance(net, packaged.PackagedNetwork) and loaded == [path]


# ------------------------------------------------------------------------------------------------
# inputs that are not a CT in HU
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "case, make, message",
    [
        ("scaled", lambda hu: (hu + 1024) / 4095, "lowest value 0.005861, so no air"),
        ("offset", lambda hu: (hu + 1024).astype(np.uint16), "subtract 1024"),
        ("int8", lambda hu: np.clip(hu / 10, -128, 127).astype(np.int8), "lowest value -100, so no air"),
        ("labels", lambda hu: (hu > -500).astype(np.uint8) + (hu > 100), r"3 distinct value\(s\) \(0, 1, 2\), a label map"),
        ("own mask", lambda hu: (hu > 0).astype(np.uint8), "a label map or mask"),
    ],
)
def test_volume_not_in_hu_is_refused(tmp_path, case, make, message):
    hu = chest_phantom((64, 64, 2), SPACING)
    hu = np.maximum(hu + np.random.default_rng(0).normal(0, 10, hu.shape), -1000)
    path = tmp_path / f"{case}.nii.gz"
    nib.save(nib.Nifti1Image(make(hu), affine_for(SPACING)), str(path))
    with pytest.raises(CTInputError, match=message) as err:
        CTReader().get_data(CTReader().read(path))
    assert str(err.value).startswith(str(path)) and "\n" not in str(err.value)
    data, _ = CTReader(check_hu=False).get_data(CTReader(check_hu=False).read(path))  # labels read as such
    assert data.shape == (64, 64, 2)


def test_array_with_no_finite_value_is_refused_by_check_hounsfield():
    with pytest.raises(CTInputError, match=r"^scan: holds no finite value \(empty, or NaN/inf only\), not a CT"):
        check_hounsfield("scan", np.full((4, 4, 2), np.nan, np.float32))
    with pytest.raises(CTInputError, match=r"^scan: holds no finite value"):
        check_hounsfield("scan", np.zeros((0, 4, 2), np.int16))
    check_hounsfield("scan", np.where(np.arange(32).reshape(4, 4, 2) % 2, np.nan, -1000.0))  # finite ones: air


@pytest.mark.slow
def test_no_lung_found_is_a_warning_and_the_exit_status(weights, tmp_path, capsys):  # noqa: F811
    hu = np.full((96, 96, 2), -1000.0)
    yy, xx = np.mgrid[:96, :96]
    hu[(yy - 48) ** 2 + (xx - 48) ** 2 < 40**2] = 40.0  # a water cylinder: a body without lungs
    save_nifti(tmp_path / "abdomen.nii.gz", hu, affine_for(SPACING))
    args = ["segment", str(tmp_path / "abdomen.nii.gz"), "-o", str(tmp_path / "o"), "--weights", str(weights), "-q"]
    for _ in range(2):  # nothing written, so a rerun says it again (no "exists, kept" with exit 0)
        rc = main(args)
        err = capsys.readouterr().err.strip()
        assert rc == 1 and err.startswith("warning: ") and "abdomen.nii.gz: no lung found" in err
        assert "nothing was written" in err and len(err.splitlines()) == 1
        assert _files(tmp_path / "o") == ["failures.csv"]  # no output of the volume; the run's failure table
        assert "abdomen.nii.gz: no lung found" in (tmp_path / "o" / "failures.csv").read_text()


# ------------------------------------------------------------------------------------------------
# DICOM series problems name the files; globs pass over what is not a volume
# ------------------------------------------------------------------------------------------------
def _one_slice_changed(folder, index: int, **tags) -> str:
    path = sorted(folder.iterdir())[index]
    import pydicom

    ds = pydicom.dcmread(path)
    for key, value in tags.items():
        setattr(ds, key, value)
    if "Rows" in tags:
        ds.PixelData = np.zeros((ds.Rows, ds.Columns), "<u2").tobytes()
    ds.save_as(path)
    return path.name


@pytest.mark.parametrize(
    "tags, message",
    [
        ({"Rows": 16, "Columns": 16}, r"differ from the other 5 slices in image size \(Rows x Columns\) \(16 x 16 instead of 32 x 32\)"),
        ({"ImageOrientationPatient": [0, 1, 0, 0, 0, -1]}, "differ from the other 5 slices in orientation"),
        ({"Modality": "PT"}, r"differ from the other 5 slices in modality \(PT instead of CT\)"),
    ],
)
def test_odd_slice_is_named(tmp_path, tags, message):
    write_ct_series(tmp_path / "s", synthetic_hu())
    name = _one_slice_changed(tmp_path / "s", 2, **tags)
    with pytest.raises(CTInputError, match=f"{name} {message}.*; move them out of the folder"):
        CTReader().read(tmp_path / "s")


def test_duplicated_slice_file_is_named(tmp_path):
    write_ct_series(tmp_path / "s", synthetic_hu())
    shutil.copy(tmp_path / "s" / "slice_003.dcm", tmp_path / "s" / "slice_003 copy.dcm")
    with pytest.raises(CTInputError, match=r"slice_003 copy.dcm, slice_003.dcm lie at the same position.*remove the copies"):
        CTReader().read(tmp_path / "s")


def test_glob_passes_over_non_volumes_and_reports_them(tmp_path):
    write_ct_series(tmp_path / "study" / "ct", synthetic_hu())
    (tmp_path / "study" / "notes").mkdir()
    (tmp_path / "study" / "notes" / "read.txt").write_text("x")
    skipped: list[str] = []
    assert expand_inputs([str(tmp_path / "study" / "*")], skipped) == [tmp_path / "study" / "ct"]
    assert len(skipped) == 1 and skipped[0].startswith(str(tmp_path / "study" / "notes"))
    with pytest.raises(CTInputError, match="notes: folder holds no DICOM"):  # without a list, as before
        expand_inputs([str(tmp_path / "study" / "*")])
    assert expand_inputs([f"{tmp_path}/**/"], []) == [tmp_path / "study" / "ct"]  # study folders are passed over


@pytest.mark.slow
def test_partial_or_blocked_outputs_are_not_taken_as_done(weights, tmp_path, capsys):  # noqa: F811
    src, out = tmp_path / "in", tmp_path / "o"
    src.mkdir()
    out.mkdir()
    save_nifti(src / "ct.nii.gz", chest_phantom((96, 96, 2), SPACING), affine_for(SPACING))
    base = ["segment", str(src / "ct.nii.gz"), "-o", str(out), "--weights", str(weights), "-q"]
    assert main(base) == 0
    stamp = (out / "ct_seg.nii.gz").stat().st_mtime_ns
    # the mask exists but the report asked for now does not: not "kept" with exit 0
    assert main(base + ["--report"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == f"error: {out / 'ct_seg.nii.gz'}: exists but ct_burden.json does not; pass --overwrite to redo the volume"
    assert (out / "ct_seg.nii.gz").stat().st_mtime_ns == stamp and not (out / "ct_burden.json").exists()
    # --series names only folders' series: a NIfTI keeps its name and its existing mask
    assert main(base + ["--series", "1.2.3"]) == 0
    assert "exists, kept" in capsys.readouterr().err and (out / "ct_seg.nii.gz").stat().st_mtime_ns == stamp
    assert _files(out) == ["ct_seg.nii.gz", "failures.csv", "summary.csv"]
    # a folder where the mask goes
    (out / "ct_seg.nii.gz").unlink()
    (out / "ct_seg.nii.gz").mkdir()
    assert main(base) == 1
    err = capsys.readouterr().err.strip()
    assert err == f"error: {out / 'ct_seg.nii.gz'}: exists and is not a file; remove it or choose another -o"


def test_foreign_burden_table_is_refused_before_any_work(weights, tmp_path, capsys):  # noqa: F811
    src, out = tmp_path / "in", tmp_path / "o"
    src.mkdir()
    out.mkdir()
    save_nifti(src / "ct.nii.gz", chest_phantom((64, 64, 2), SPACING), affine_for(SPACING))
    (out / "burden.csv").write_text("name,score\nalice,3\n")  # the user's own table
    rc = main(["segment", str(src / "ct.nii.gz"), "-o", str(out), "--weights", str(weights), "-q", "--report"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.endswith(f"{out / 'burden.csv'}: exists and is not a burden table of this kind (other columns); "
                                     "move it or choose another -o")
    assert _files(out) == ["burden.csv"] and (out / "burden.csv").read_text() == "name,score\nalice,3\n"
