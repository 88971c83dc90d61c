"""DICOM outputs (``--output-type dicom-seg|all``): the SEG and the overlay series, checked against
the source slices by position along the slice normal (never file order), read back with highdicom
and pydicom, and read by ``infnet-monai evaluate``."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from pydicom.uid import RLELossless

import infnet_monai.segmenter as segmenter
from infnet_monai.cli import main
from infnet_monai.dicom import DicomOutputsd, write_dicom_outputs
from infnet_monai.dicom.overlay import burden_description, outline, overlay_rgb
from infnet_monai.dicom.seg import load_seg, seg_on_grid
from infnet_monai.labels import PATTERN_LABELS
from infnet_monai.metrics.evaluate import evaluate_folders
from infnet_monai.transforms import LoadCT
from infnet_monai.utils import atomic_folder, remove_stale_temporaries

from tests.test_inference import IntensityAsLogit
from tests.data.test_ct_reader import AXIAL_FLIPPED, _transcode, write_ct_series

# rows rotated 20 degrees about the patient axis and tilted 15 degrees: an oblique acquisition
_A, _B = np.radians(20.0), np.radians(15.0)
OBLIQUE = (np.cos(_A), np.sin(_A), 0.0, -np.sin(_A) * np.cos(_B), np.cos(_A) * np.cos(_B), -np.sin(_B))
FRAME_OF_REFERENCE = "1.2.826.0.1.3680043.8.498.102"
SHAPE = (8, 48, 64)  # slices, rows, columns (rows != columns: a transpose shows)


def lesion_hu(shape=SHAPE, seed=0) -> np.ndarray:
    """(slices, rows, columns) HU: air with noise; soft-tissue blocks (> -500 HU) on slices 2-5 only,
    at other places on each slice, so that slices 0, 1, 6 and 7 hold nothing."""
    rng = np.random.default_rng(seed)
    hu = -1000 + rng.integers(-20, 21, shape)
    for k in range(2, 6):
        hu[k, 5 + 4 * k : 15 + 4 * k, 3 + 6 * k : 11 + 7 * k] = 40
    hu[3, 30:34, 2:50] = 900
    return hu


def write_series(folder: Path, hu: np.ndarray, orientation=AXIAL_FLIPPED, codec="uncompressed", drop=None) -> list[Path]:
    """A CT series as a scanner writes it (frame of reference, patient and study attributes), files
    named in reverse slice order and InstanceNumbers shuffled; ``drop``: (slice, attribute) removed."""
    paths = write_ct_series(folder, hu, orientation=orientation)
    numbers = np.random.default_rng(1).permutation(len(paths)) + 1
    for k, path in enumerate(paths):
        ds = pydicom.dcmread(path)
        ds.FrameOfReferenceUID = FRAME_OF_REFERENCE
        ds.PatientName, ds.PatientID, ds.PatientSex = "Synthetic^Chest", "SYN-001", "O"
        ds.StudyDate, ds.StudyTime, ds.AccessionNumber, ds.SeriesNumber = "20240102", "101500", "ACC1", 3
        ds.InstanceNumber = int(numbers[k])
        if drop and drop[0] == k:
            delattr(ds, drop[1])
        if codec == "rle":
            ds.compress(RLELossless)
        ds.save_as(path, enforce_file_format=True)
        if codec == "jpeg2000":
            _transcode(path, codec)
    return paths


def _weights(tmp_path: Path) -> Path:
    path = tmp_path / "model.pt"
    path.write_bytes(b"stand-in weights")
    return path


def read_strict(path: Path) -> pydicom.Dataset:
    """``pydicom.dcmread`` without ``force`` (pydicom 3 has no ``enforce_file_format`` for reading):
    a part-10 file with preamble, ``DICM`` and the file meta a conformant writer puts there."""
    assert pydicom.misc.is_dicom(path)
    ds = pydicom.dcmread(path)
    for key in ("MediaStorageSOPClassUID", "MediaStorageSOPInstanceUID", "TransferSyntaxUID"):
        assert key in ds.file_meta, key
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    return ds


def _source_headers(folder: Path) -> list[pydicom.Dataset]:
    """The source slices' headers sorted along the slice normal (ascending), as the test sees them."""
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(Path(folder).glob("*.dcm"))]
    iop = np.asarray(headers[0].ImageOrientationPatient, float)
    normal = np.cross(iop[:3], iop[3:])
    return sorted(headers, key=lambda h: float(np.asarray(h.ImagePositionPatient, float) @ normal))


def check_seg_against_mask(seg_path: Path, source: Path, mask: np.ndarray, affine: np.ndarray) -> None:
    """The SEG at ``seg_path`` against the (X, Y, Z) label volume ``mask`` (the CT reader's grid of
    ``source``: (column, row, slice along the normal)): valid DICOM, frames only where the mask is
    not empty, each frame on the source slice at its position, and equal voxel for voxel."""
    read_strict(seg_path)
    seg = hd.seg.segread(seg_path)
    headers = _source_headers(source)
    assert seg.StudyInstanceUID == headers[0].StudyInstanceUID and seg.PatientID == headers[0].PatientID
    assert seg.SeriesInstanceUID != headers[0].SeriesInstanceUID
    assert seg.FrameOfReferenceUID == headers[0].FrameOfReferenceUID
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == headers[0].SeriesInstanceUID
    assert len(seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence) == len(headers)
    iop = np.asarray(headers[0].ImageOrientationPatient, float)
    normal = np.cross(iop[:3], iop[3:])
    along = [float(np.asarray(h.ImagePositionPatient, float) @ normal) for h in headers]
    numbers = [int(d.SegmentNumber) for d in seg.SegmentSequence]
    expected_frames = sum(int(np.count_nonzero((mask[:, :, k] == n).any())) for n in numbers for k in range(mask.shape[2]))
    assert int(seg.NumberOfFrames) == max(expected_frames, 1)  # an empty mask keeps one frame
    shared = seg.SharedFunctionalGroupsSequence[0]
    for n, item in enumerate(seg.PerFrameFunctionalGroupsSequence):
        position = np.asarray(item.PlanePositionSequence[0].ImagePositionPatient, float)
        k = int(np.argmin(np.abs(np.asarray(along) - position @ normal)))
        assert abs(along[k] - position @ normal) < 1e-3
        ref = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        assert ref == headers[k].SOPInstanceUID, f"frame {n + 1} references another slice than the one at its position"
        np.testing.assert_allclose(position, np.asarray(headers[k].ImagePositionPatient, float), atol=1e-4)
        segment_group = item if "SegmentIdentificationSequence" in item else shared
        number = int(segment_group.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        if expected_frames:
            np.testing.assert_array_equal(seg.get_frame(n + 1).T, (mask[:, :, k] == number).astype(np.uint8))
    if expected_frames:  # highdicom's own reading, by source instance, in the grid's slice order
        pixels = seg.get_pixels_by_source_instance(
            [h.SOPInstanceUID for h in headers], combine_segments=True, assert_missing_frames_are_empty=True,
        )
        np.testing.assert_array_equal(np.asarray(pixels).transpose(2, 1, 0), mask)
    np.testing.assert_array_equal(seg_on_grid(seg_path, affine, mask.shape), mask)


def check_overlay(folder: Path, source: Path, mask: np.ndarray, seg_path: Path) -> list[Path]:
    """One overlay image per source slice holding a label, on that slice's geometry."""
    headers = {h.SOPInstanceUID: (k, h) for k, h in enumerate(_source_headers(source))}
    files = sorted(folder.glob("*.dcm"))
    holding = {k for k in range(mask.shape[2]) if mask[:, :, k].any()}
    seen, series = set(), set()
    for path in files:
        ds = read_strict(path)
        k, src = headers[ds.SourceImageSequence[0].ReferencedSOPInstanceUID]
        seen.add(k)
        series.add(ds.SeriesInstanceUID)
        assert ds.pixel_array.shape == (src.Rows, src.Columns, 3) and ds.PhotometricInterpretation == "RGB"
        for key in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"):
            np.testing.assert_allclose(np.asarray(ds[key].value, float), np.asarray(src[key].value, float), atol=1e-6)
        assert ds.StudyInstanceUID == src.StudyInstanceUID and ds.FrameOfReferenceUID == src.FrameOfReferenceUID
        assert ds.PatientID == src.PatientID and "infection" in ds.SeriesDescription and "mL" in ds.SeriesDescription
        assert len(ds.SeriesDescription) <= 64
    assert seen == holding and len(files) == len(holding)
    assert len(series) == 1 and series.isdisjoint({h.SeriesInstanceUID for _, h in headers.values()})
    assert series.isdisjoint({pydicom.dcmread(seg_path, stop_before_pixels=True).SeriesInstanceUID})
    return files


# ----------------------------------------------------------------------------------------------
# SEG and overlay writers on synthetic series
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "orientation, codec",
    [(AXIAL_FLIPPED, "uncompressed"), (OBLIQUE, "uncompressed"), (AXIAL_FLIPPED, "rle"), (OBLIQUE, "jpeg2000")],
    ids=["axial", "oblique", "rle", "oblique-jpeg2000"],
)
def test_seg_and_overlay_round_trip(tmp_path, orientation, codec):
    source = tmp_path / "series"
    write_series(source, lesion_hu(), orientation, codec)
    ct = LoadCT(ensure_channel_first=True)(str(source))
    mask = (ct > -500).to(torch.uint8)
    seg_path, overlay = write_dicom_outputs(source, mask, tmp_path / "out", output_type="all", weights=_weights(tmp_path))
    assert seg_path == tmp_path / "out" / "series_seg.dcm" and overlay == tmp_path / "out" / "series_overlay"
    volume = mask[0].numpy()
    assert volume[:, :, [0, 1, 6, 7]].sum() == 0 and volume.sum() > 0
    check_seg_against_mask(seg_path, source, volume, np.asarray(mask.affine))
    assert len(check_overlay(overlay, source, volume, seg_path)) == 4
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["series_overlay", "series_seg.dcm"]  # no temporaries


def test_seg_identifies_the_algorithm_classes_and_colours(tmp_path):
    source = tmp_path / "series"
    write_series(source, lesion_hu())
    ct = LoadCT(ensure_channel_first=True)(str(source))
    labels = ((ct > -500).to(torch.uint8) + (ct > 500).to(torch.uint8))  # 1 "GGO", 2 "consolidation" (the bone bar)
    weights = _weights(tmp_path)
    seg_path, = write_dicom_outputs(source, labels, tmp_path / "out", output_type="dicom-seg", classes="patterns",
                                    weights=weights, pattern_weights=weights, parameters={"threshold": 0.5})
    assert seg_path.name == "series_patterns.dcm"
    seg = hd.seg.segread(seg_path)
    assert seg.SegmentationType == "BINARY" and [int(s.SegmentNumber) for s in seg.SegmentSequence] == [1, 2]
    for item in seg.SegmentSequence:
        name, code, rgb = PATTERN_LABELS[int(item.SegmentNumber)]
        assert item.SegmentLabel == name
        prop = item.SegmentedPropertyTypeCodeSequence[0]
        assert (prop.CodingSchemeDesignator, prop.CodeValue, prop.CodeMeaning) == code
        assert tuple(item.RecommendedDisplayCIELabValue) == hd.color.CIELabColor.from_rgb(*rgb).value
        algorithm = item.SegmentationAlgorithmIdentificationSequence[0]
        assert item.SegmentAlgorithmType == "AUTOMATIC" and algorithm.AlgorithmName.startswith("Inf-Net")
        import hashlib

        digest = hashlib.sha256(weights.read_bytes()).hexdigest()[:12]
        assert digest in algorithm.AlgorithmVersion and "infnet_monai" in algorithm.AlgorithmVersion
    check_seg_against_mask(seg_path, source, labels[0].numpy(), np.asarray(labels.affine))


def test_empty_mask_gives_a_valid_seg_with_one_frame_and_no_overlay_image(tmp_path):
    source = tmp_path / "series"
    write_series(source, lesion_hu())
    ct = LoadCT(ensure_channel_first=True)(str(source))
    empty = torch.zeros_like(ct, dtype=torch.uint8)
    empty.affine = ct.affine
    seg_path, overlay = write_dicom_outputs(source, empty, tmp_path / "out", output_type="all", weights=_weights(tmp_path))
    check_seg_against_mask(seg_path, source, empty[0].numpy(), np.asarray(ct.affine))
    assert overlay.is_dir() and not any(overlay.iterdir())


def test_overlay_pixels_outline_in_the_lung_window():
    hu = np.full((40, 50), -600.0)
    hu[:, :10] = -1350.0
    hu[:, 40:] = 150.0
    labels = np.zeros((40, 50), np.uint8)
    labels[10:30, 15:35] = 1
    rgb = overlay_rgb(hu, labels)
    assert tuple(rgb[0, 0]) == (0, 0, 0) and tuple(rgb[0, -1]) == (255, 255, 255)  # the window's ends
    assert tuple(rgb[20, 25]) == (127, 127, 127)  # inside the region: the CT, not filled
    edge = outline(labels == 1)
    assert edge[10, 25] and edge[9, 25] and not edge[20, 25] and edge.sum() < labels.sum()
    assert tuple(rgb[10, 25]) == (255, 0, 0)
    text = burden_description(np.ones((10, 10, 10)), np.diag([2.0, 2.0, 2.0, 1.0]), lung=np.ones((10, 10, 10)))
    assert text == "Inf-Net infection 8.0 mL (100.0% of lung)"
    labels = np.zeros((10, 10, 10), np.uint8)
    labels[:5], labels[5:7] = 1, 2
    assert burden_description(labels, np.eye(4) * 10, "patterns") == "Inf-Net 700.0 mL: GGO 500.0, cons. 200.0 mL"
    lung = np.ones((10, 10, 10), np.uint8)
    lung[5:] = 2  # right and left lung: the burden report's count, 70 % of 1000 mL involved
    text = burden_description(labels, np.eye(4) * 10, "patterns", lung)
    assert text == "Inf-Net 700.0 mL (70.0% lung): GGO 500.0, cons. 200.0 mL"


def test_atomic_folder_replaces_whole_or_not_at_all(tmp_path):
    target = tmp_path / "case_overlay"
    with atomic_folder(target) as tmp:
        (tmp / "a.dcm").write_text("1")
    with pytest.raises(RuntimeError), atomic_folder(target) as tmp:
        (tmp / "b.dcm").write_text("2")
        raise RuntimeError("killed")
    assert [p.name for p in target.iterdir()] == ["a.dcm"]
    with atomic_folder(target) as tmp:
        (tmp / "c.dcm").write_text("3")
    assert [p.name for p in target.iterdir()] == ["c.dcm"] and [p.name for p in tmp_path.iterdir()] == ["case_overlay"]
    stale = tmp_path / ".case_overlay.{}.9999999.abcdefgh.infnet-tmp"
    from infnet_monai.utils.atomic import _HOST

    stale = Path(str(stale).format(_HOST))
    stale.mkdir()
    (stale / "x.dcm").write_text("x")
    assert remove_stale_temporaries(tmp_path) == [stale] and not stale.exists()


def test_bundle_transform_writes_the_dicom_outputs(tmp_path):
    source = tmp_path / "series"
    write_series(source, lesion_hu())
    mask = (LoadCT(ensure_channel_first=True)(str(source)) > -500).to(torch.uint8)
    assert mask.meta["filename_or_obj"] == str(source)
    out = tmp_path / "out"
    DicomOutputsd("pred", out, output_type="nifti", weights=_weights(tmp_path))({"pred": mask})
    assert not out.exists()
    DicomOutputsd("pred", out, output_type="all", weights=_weights(tmp_path))({"pred": mask})
    check_seg_against_mask(out / "series_seg.dcm", source, mask[0].numpy(), np.asarray(mask.affine))
    assert len(list((out / "series_overlay").iterdir())) == 4


@pytest.mark.parametrize("output_type", ["all", "dicom-seg"])
def test_bundle_inference_output_type(tmp_path, output_type):
    """configs/inference.json with ``output_type`` (stand-in network): all writes the mask, the SEG
    and the overlay; dicom-seg the SEG alone (SaveImaged and the label sidecar disabled)."""
    from monai.bundle import ConfigParser

    from tests.conftest import BUNDLE_DIR

    source = tmp_path / "series"
    write_series(source, lesion_hu(shape=(8, 64, 64)), OBLIQUE)
    parser = ConfigParser()
    parser.read_config(BUNDLE_DIR / "configs" / "inference.json")
    parser.update({
        "bundle_root": str(BUNDLE_DIR), "dataset_dir": str(source), "output_dir": str(tmp_path / "out"),
        "ckpt_path": str(_weights(tmp_path)), "output_type": output_type, "image_size": 64,
        "device": "$torch.device('cpu')", "precision": "fp32", "lung_crop": False, "slice_crop": False,
        "restrict_to_lung": False,
    })
    parser["network"] = IntensityAsLogit()
    parser.get_parsed_content("evaluator").run()
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    if output_type == "dicom-seg":
        assert written == ["series_seg.dcm"]
        return
    assert written == ["series_overlay", "series_seg.dcm", "series_seg.nii.gz"]
    image = nib.load(str(tmp_path / "out" / "series_seg.nii.gz"))
    mask = np.asarray(image.dataobj)
    check_seg_against_mask(tmp_path / "out" / "series_seg.dcm", source, mask, image.affine)
    check_overlay(tmp_path / "out" / "series_overlay", source, mask, tmp_path / "out" / "series_seg.dcm")


# ----------------------------------------------------------------------------------------------
# infnet-monai segment --output-type, and evaluate with SEG files
# ----------------------------------------------------------------------------------------------
@pytest.fixture()
def stand_in_network(monkeypatch):
    """``segment`` runs the test double (mask = HU > -500 on an unresized slice); records inferences."""
    inferred = []

    def infer(*args, **kwargs):
        inferred.append(args[0])
        return real_infer(*args, **kwargs)

    real_infer = segmenter.infer_volume
    monkeypatch.setattr(segmenter, "load_network", lambda *a, **k: IntensityAsLogit())
    monkeypatch.setattr(segmenter, "infer_volume", infer)
    return inferred


def _segment(source, out, weights, *extra) -> int:
    return main(["segment", str(source), "-o", str(out), "--weights", str(weights), "--image-size", "64", "--precision",
                 "fp32", "--no-lung-crop", "--no-slice-crop", "--no-lung-restrict", "-q", *extra])


def test_segment_output_types_and_evaluate(tmp_path, stand_in_network, capsys):
    source = tmp_path / "series"
    write_series(source, lesion_hu(shape=(8, 64, 64)), OBLIQUE, "rle")
    weights, out = _weights(tmp_path), tmp_path / "out"
    assert _segment(source, out, weights, "--output-type", "all") == 0
    mask_file, seg_file, overlay = out / "series_seg.nii.gz", out / "series_seg.dcm", out / "series_overlay"
    image = nib.load(str(mask_file))
    mask = np.asarray(image.dataobj)
    assert mask.sum() > 0
    check_seg_against_mask(seg_file, source, mask, image.affine)
    check_overlay(overlay, source, mask, seg_file)
    capsys.readouterr()
    assert _segment(source, out, weights, "--output-type", "all") == 0  # done: kept, nothing run again
    assert "exists, kept" in capsys.readouterr().err and len(stand_in_network) == 1
    # dicom-seg alone: the SEG, no NIfTI mask
    assert _segment(source, tmp_path / "seg_only", weights, "--output-type", "dicom-seg") == 0
    assert {p.name for p in (tmp_path / "seg_only").iterdir() if not p.name.endswith(".csv")} == {"series_seg.dcm"}
    for table in (tmp_path / "seg_only").glob("*.csv"):
        table.unlink()  # a rerun without the run's tables reads the SEG back for its summary row
    assert _segment(source, tmp_path / "seg_only", weights, "--output-type", "dicom-seg") == 0
    assert "exists, kept" in capsys.readouterr().err and len(stand_in_network) == 2
    # evaluate: the SEG as prediction against the NIfTI, on its grid or on the source series' grid
    for kwargs in ({}, {"dicom_source": tmp_path}):
        report = evaluate_folders(seg_file, mask_file, **kwargs)
        assert report["cases"][0]["dice"] == 1.0
    labels = tmp_path / "labels"
    labels.mkdir()
    (labels / "series.nii.gz").write_bytes(mask_file.read_bytes())
    report = evaluate_folders(tmp_path / "seg_only", labels, dicom_source=source)  # series_seg.dcm pairs as "series"
    assert report["cases"][0]["dice"] == 1.0 and report["cases"][0]["pred_file"].endswith("series_seg.dcm")
    report = evaluate_folders(out, labels)  # an --output-type all folder: the NIfTI of the case, not its SEG
    assert report["cases"][0]["dice"] == 1.0 and report["cases"][0]["pred_file"].endswith("series_seg.nii.gz")
    placed = load_seg(seg_file, dicom_source=tmp_path)
    np.testing.assert_allclose(np.asarray(placed.affine), image.affine, atol=1e-4)
    # both sides SEG: the referenced series must be found
    assert main(["evaluate", "--pred", str(seg_file), "--label", str(tmp_path / "seg_only" / "series_seg.dcm")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--dicom-source" in err and str(seg_file) in err
    assert main(["evaluate", "--pred", str(seg_file), "--label", str(tmp_path / "seg_only" / "series_seg.dcm"),
                 "--dicom-source", str(tmp_path / "elsewhere")]) == 2
    assert "no such folder" in capsys.readouterr().err
    assert main(["evaluate", "--pred", str(seg_file), "--label", str(tmp_path / "seg_only" / "series_seg.dcm"),
                 "--dicom-source", str(source)]) == 0


class ThreeClassLogits(torch.nn.Module):
    """Test double of the pattern network: logits from the normalised input intensity, so that
    air is background, the soft-tissue blocks class 1 and the bone bar class 2."""

    def __init__(self) -> None:
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = x[:, :1]
        return torch.cat([-v, v - 0.5, 3 * (v - 1.5)], 1)


def test_each_header_is_read_once_per_run(tmp_path, stand_in_network, monkeypatch):
    """The check before the inference, the CT reader and the SEG and overlay writers share one
    reading of the series' headers (pydicom); the pixels are decoded by SimpleITK."""
    import infnet_monai.data.dicom_series as dicom_series
    import infnet_monai.data.inputs as inputs

    source = tmp_path / "series"
    files = write_series(source, lesion_hu(shape=(8, 64, 64)))
    reads: list[str] = []
    real_dcmread = pydicom.dcmread

    def counted(path, *args, **kwargs):
        reads.append(Path(path).name)
        return real_dcmread(path, *args, **kwargs)

    monkeypatch.setattr(inputs.pydicom, "dcmread", counted)
    monkeypatch.setattr(dicom_series, "_listed", type(dicom_series._listed)())  # nothing kept from other tests
    assert _segment(source, tmp_path / "out", _weights(tmp_path), "--output-type", "all") == 0
    assert len(stand_in_network) == 1 and (tmp_path / "out" / "series_seg.dcm").is_file()
    assert sorted(reads) == sorted(f.name for f in files)  # five times each before they were shared


def test_segment_patterns_writes_a_two_segment_seg(tmp_path, monkeypatch):
    monkeypatch.setattr(segmenter, "load_pattern_network", lambda *a, **k: ThreeClassLogits())
    source, weights, out = tmp_path / "series", _weights(tmp_path), tmp_path / "out"
    write_series(source, lesion_hu(shape=(8, 64, 64)), OBLIQUE)
    assert _segment(source, out, weights, "--output-type", "all", "--classes", "patterns", "--pattern-weights",
                    str(weights)) == 0
    assert _outputs_of(out) == {"series_patterns.nii.gz", "series_patterns.json", "series_patterns.dcm",
                                "series_patterns_overlay"}
    image = nib.load(str(out / "series_patterns.nii.gz"))
    mask = np.asarray(image.dataobj)
    assert set(np.unique(mask)) == {0, 1, 2}
    check_seg_against_mask(out / "series_patterns.dcm", source, mask, image.affine)
    overlay = sorted((out / "series_patterns_overlay").iterdir())
    assert len(overlay) == 4 and "GGO" in pydicom.dcmread(overlay[0]).SeriesDescription


def _outputs_of(out: Path) -> set[str]:
    """What a run left in ``out`` besides its ledgers (summary/failures tables)."""
    return {p.name for p in out.iterdir() if not p.name.endswith(".csv")} if out.exists() else set()


def test_nifti_input_with_dicom_seg_is_a_one_line_error(tmp_path, stand_in_network, capsys):
    from infnet_monai.data.phantoms import affine_for, chest_phantom, save_nifti

    path = save_nifti(tmp_path / "case.nii.gz", chest_phantom((64, 64, 4)), affine_for((3.0, 3.0, 6.0)))
    assert _segment(path, tmp_path / "out", _weights(tmp_path), "--output-type", "dicom-seg") != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(path) in err[0] and "NIfTI" in err[0] and "--output-type nifti" in err[0]
    assert _outputs_of(tmp_path / "out") == set() and not stand_in_network


@pytest.mark.parametrize("attribute", ["StudyInstanceUID", "FrameOfReferenceUID"])
def test_series_without_seg_attributes_is_refused_before_the_inference(tmp_path, stand_in_network, capsys, attribute):
    source = tmp_path / "series"
    paths = write_series(source, lesion_hu(shape=(8, 64, 64)), drop=(5, attribute))
    assert _segment(source, tmp_path / "out", _weights(tmp_path), "--output-type", "all") != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(paths[5]) in err[0] and attribute in err[0], err
    assert _outputs_of(tmp_path / "out") == set() and not stand_in_network  # refused before any inference


# ----------------------------------------------------------------------------------------------
# The real series
# ----------------------------------------------------------------------------------------------
def test_real_series_round_trip(dicom_series_dir, tmp_path):
    """The shared 64-slice series (512 x 512, files 1-01.dcm ... in reverse position order) with a
    mask of ground-glass-like HU on slices 20-39: SEG and overlay against the mask."""
    ct = LoadCT(ensure_channel_first=True)(str(dicom_series_dir))
    mask = ((ct > -700) & (ct < -300)).to(torch.uint8)
    mask[..., :20] = 0
    mask[..., 40:] = 0
    out = tmp_path / "out"
    seg_path, overlay = write_dicom_outputs(dicom_series_dir, mask, out, output_type="all", weights=_weights(tmp_path))
    volume = mask[0].numpy()
    check_seg_against_mask(seg_path, dicom_series_dir, volume, np.asarray(mask.affine))
    assert len(check_overlay(overlay, dicom_series_dir, volume, seg_path)) == 20


@pytest.mark.slow
def test_real_series_seg_and_overlay(dicom_series_dir, tmp_path, stand_in_network):
    """The shared 64-slice series through ``segment --output-type all`` (stand-in network at 512 px,
    lungs found and restricted as in a real run): SEG and overlay against the NIfTI mask."""
    out = tmp_path / "out"
    assert main(["segment", str(dicom_series_dir), "-o", str(out), "--weights", str(_weights(tmp_path)), "--image-size",
                 "512", "--precision", "fp32", "--output-type", "all", "-q"]) == 0
    case = dicom_series_dir.name
    image = nib.load(str(out / f"{case}_seg.nii.gz"))
    mask = np.asarray(image.dataobj)
    assert mask.shape == (512, 512, 64) and 0 < mask.sum() < mask.size
    check_seg_against_mask(out / f"{case}_seg.dcm", dicom_series_dir, mask, image.affine)
    files = check_overlay(out / f"{case}_overlay", dicom_series_dir, mask, out / f"{case}_seg.dcm")
    assert 0 < len(files) < 64
    assert evaluate_folders(out / f"{case}_seg.dcm", out / f"{case}_seg.nii.gz", dicom_source=dicom_series_dir.parent,
                            )["cases"][0]["dice"] == 1.0
