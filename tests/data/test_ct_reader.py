"""CT volume reading: DICOM series (plain and compressed) and NIfTI into MONAI, and input errors."""

from __future__ import annotations

import locale
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from monai.transforms import LoadImage, LoadImaged, Orientationd, SaveImage
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, RLELossless, generate_uid

from infnet_monai.data import CTInputError, CTReader, SeriesInfo, expand_inputs, input_kind, list_dicom_series
from infnet_monai.transforms import LoadCT, LoadCTd

AXIAL_FLIPPED = (1.0, 0.0, 0.0, 0.0, -1.0, 0.0)  # rows run posterior->anterior, slices inferior-going
SAGITTAL = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)  # slice normal = -x (LPS)
SPACING = (0.7, 0.9, 2.5)  # mm: columns (x), rows (y), slices
ORIGIN = (10.0, -20.0, 30.0)  # LPS mm
SHAPE = (6, 32, 32)  # slices, rows, columns
TRANSFER_SYNTAX = {
    "uncompressed": "1.2.840.10008.1.2.1",
    "rle": "1.2.840.10008.1.2.5",
    "jpeg2000": "1.2.840.10008.1.2.4.90",
    "jpeg_lossless": "1.2.840.10008.1.2.4.70",
}
SITK_COMPRESSOR = {"jpeg2000": "JPEG2000", "jpeg_lossless": "JPEG"}


def synthetic_hu(shape=SHAPE, seed=0) -> np.ndarray:
    """(slices, rows, columns) int HU: air -1000, lung around -850, a soft-tissue block, a bone bar."""
    rng = np.random.default_rng(seed)
    hu = np.full(shape, -1000) + rng.integers(-20, 21, shape)
    hu[:, 4:28, 4:14] = -850 + rng.integers(-60, 61, (shape[0], 24, 10))
    hu[:, 8:24, 18:28] = 40 + rng.integers(-30, 31, (shape[0], 16, 10))
    hu[:, 14:18, 2:30] = 1200
    return hu


def write_ct_series(
    folder: Path,
    hu: np.ndarray,
    *,
    orientation=AXIAL_FLIPPED,
    codec: str = "uncompressed",
    modality: str = "CT",
    uid: str = "1.2.826.0.1.3680043.8.498.101",
    description: str = "synthetic chest",
    slope: float = 1.0,
    intercepts=None,
    positions=None,
) -> list[Path]:
    """Write ``hu`` (slices, rows, columns) as one DICOM series; slice k at ORIGIN + k*dz*normal
    unless ``positions`` (n, 3) LPS mm are given. Files are named in reverse slice order."""
    folder.mkdir(parents=True, exist_ok=True)
    n = hu.shape[0]
    normal = np.cross(orientation[:3], orientation[3:])
    if positions is None:
        positions = [np.asarray(ORIGIN) + k * SPACING[2] * normal for k in range(n)]
    intercepts = [-1024.0] * n if intercepts is None else intercepts
    paths = []
    for k in range(n):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.SeriesInstanceUID, ds.StudyInstanceUID = modality, uid, "1.2.826.0.1.3680043.8.498.100"
        ds.SeriesDescription, ds.InstanceNumber = description, k + 1
        ds.ImagePositionPatient = [float(v) for v in positions[k]]
        ds.ImageOrientationPatient = list(orientation)
        ds.PixelSpacing = [SPACING[1], SPACING[0]]  # row spacing, column spacing
        ds.SliceThickness = SPACING[2]
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercepts[k]
        ds.Rows, ds.Columns = hu.shape[1:]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        stored = np.round((hu[k] - intercepts[k]) / slope)
        assert 0 <= stored.min() and stored.max() < 2**16, "stored values must fit uint16"
        ds.PixelData = stored.astype("<u2").tobytes()
        if codec == "rle":
            ds.compress(RLELossless)
        path = folder / f"slice_{n - k:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        if codec in SITK_COMPRESSOR:  # transcode with GDCM, keeping every tag
            _transcode(path, codec)
        paths.append(path)
    return paths


def _transcode(path: Path, codec: str) -> None:
    """Rewrite the DICOM file ``path`` compressed with ``codec`` by GDCM. GDCM's JPEG-2000 writer
    sets the process locale to "C" (ASCII text I/O for everything after it); it is put back."""
    saved = locale.setlocale(locale.LC_ALL)
    try:
        src = sitk.ReadImage(str(path))
        image = sitk.Cast(src, sitk.sitkInt16)
        for key in src.GetMetaDataKeys():
            image.SetMetaData(key, src.GetMetaData(key))
        writer = sitk.ImageFileWriter()
        writer.KeepOriginalImageUIDOn()
        writer.SetUseCompression(True)
        writer.SetCompressor(SITK_COMPRESSOR[codec])
        writer.SetFileName(str(path))
        writer.Execute(image)
    finally:
        locale.setlocale(locale.LC_ALL, saved)


def affine_from_dicom_tags(folder: Path) -> np.ndarray:
    """RAS affine of a series folder built from its tags alone (pydicom)."""
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(folder.glob("*.dcm"))]
    row, col = np.asarray(headers[0].ImageOrientationPatient[:3]), np.asarray(headers[0].ImageOrientationPatient[3:])
    normal = np.cross(row, col)
    positions = sorted((np.asarray(h.ImagePositionPatient, float) for h in headers), key=lambda p: p @ normal)
    row_spacing, col_spacing = (float(v) for v in headers[0].PixelSpacing)
    lps = np.eye(4)
    lps[:3, 0] = row * col_spacing  # i: along a row, between columns
    lps[:3, 1] = col * row_spacing  # j: down a column, between rows
    lps[:3, 2] = (positions[-1] - positions[0]) / (len(positions) - 1)
    lps[:3, 3] = positions[0]
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


def expected_array(hu: np.ndarray) -> np.ndarray:
    """(i, j, k) = (column, row, slice) array of ``hu`` (slices, rows, columns) written along +normal."""
    return hu.transpose(2, 1, 0).astype(np.float32)


def load(path, **kwargs):
    reader = CTReader(**kwargs)
    return reader.get_data(reader.read(path))


# ----------------------------------------------------------------------------------------------
# DICOM geometry and values
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "orientation, codec",
    [
        (AXIAL_FLIPPED, "uncompressed"),
        (SAGITTAL, "uncompressed"),
        (AXIAL_FLIPPED, "rle"),
        (AXIAL_FLIPPED, "jpeg2000"),
        (SAGITTAL, "jpeg2000"),
        (AXIAL_FLIPPED, "jpeg_lossless"),
    ],
)
def test_dicom_series_values_and_affine_match_tags(tmp_path, orientation, codec):
    hu = synthetic_hu()
    write_ct_series(tmp_path / "series", hu, orientation=orientation, codec=codec)
    written = pydicom.dcmread(next((tmp_path / "series").glob("*.dcm")), stop_before_pixels=True)
    assert written.file_meta.TransferSyntaxUID == TRANSFER_SYNTAX[codec]

    data, meta = load(tmp_path / "series")

    assert data.dtype == np.float32 and data.shape == (32, 32, 6)
    np.testing.assert_array_equal(data, expected_array(hu))  # lossless, rescale applied
    np.testing.assert_allclose(meta["affine"], affine_from_dicom_tags(tmp_path / "series"), atol=1e-4)
    np.testing.assert_allclose(meta["original_affine"], meta["affine"])
    np.testing.assert_allclose(meta["spacing"], SPACING)
    np.testing.assert_array_equal(meta["spatial_shape"], (32, 32, 6))
    assert meta["space"] == "RAS" and np.isnan(meta["original_channel_dim"])
    assert meta["filename_or_obj"] == str(tmp_path / "series")
    assert meta["0008|0060"] == "CT" and meta["0008|103e"] == "synthetic chest"


def test_flipped_axial_affine_by_hand(tmp_path):
    """Rows along -y (LPS) and slices along -z: RAS affine diag(-0.7, +0.9, -2.5), origin (-10, 20, 30)."""
    write_ct_series(tmp_path / "s", synthetic_hu())
    _, meta = load(tmp_path / "s")
    expected = np.array([[-0.7, 0, 0, -10.0], [0, 0.9, 0, 20.0], [0, 0, -2.5, 30.0], [0, 0, 0, 1]])
    np.testing.assert_allclose(meta["affine"], expected, atol=1e-6)
    _, lps_meta = load(tmp_path / "s", affine_lps_to_ras=False)
    np.testing.assert_allclose(lps_meta["affine"], np.diag([-1, -1, 1, 1]) @ expected, atol=1e-6)
    assert lps_meta["space"] == "LPS"


def test_rescale_slope_and_per_slice_intercept(tmp_path):
    hu = synthetic_hu().astype(float) + 0.5 * (np.arange(32) % 2)  # half-HU steps need slope 0.5
    intercepts = [-1024.0, -1100.0, -1024.0, -1050.0, -2048.0, -1024.0]
    write_ct_series(tmp_path / "s", hu, slope=0.5, intercepts=intercepts)
    data, _ = load(tmp_path / "s")
    np.testing.assert_array_equal(data, expected_array(hu))


# ----------------------------------------------------------------------------------------------
# MONAI LoadImage / SaveImage / Orientation
# ----------------------------------------------------------------------------------------------
def test_loadimaged_dicom_to_nifti_round_trip(tmp_path):
    hu = synthetic_hu()
    write_ct_series(tmp_path / "s", hu, codec="jpeg2000")
    loader = LoadImaged(keys="image", reader=CTReader(), image_only=True, ensure_channel_first=True)
    image = loader({"image": tmp_path / "s"})["image"]
    assert tuple(image.shape) == (1, 32, 32, 6)
    np.testing.assert_array_equal(image[0].numpy(), expected_array(hu))

    SaveImage(output_dir=tmp_path / "out", output_postfix="ct", separate_folder=False, resample=False)(image)
    saved = tmp_path / "out" / "s_ct.nii.gz"
    nifti = nib.load(saved)
    assert nifti.shape == (32, 32, 6)
    np.testing.assert_allclose(nifti.affine, image.affine.numpy(), atol=1e-4)

    again = loader({"image": saved})["image"]
    np.testing.assert_allclose(again.affine.numpy(), image.affine.numpy(), atol=1e-4)
    np.testing.assert_array_equal(again.numpy(), image.numpy())
    assert again.meta["filename_or_obj"] == str(saved)


def test_orientation_ras_keeps_world_positions(tmp_path):
    """After Orientationd(RAS) the bone bar's world coordinates are unchanged."""
    write_ct_series(tmp_path / "s", synthetic_hu())
    image = LoadCTd(keys="image", ensure_channel_first=True)({"image": str(tmp_path / "s")})["image"]
    ras = Orientationd(keys="image", axcodes="RAS", labels=None)({"image": image})["image"]
    assert np.all(np.diag(ras.affine.numpy())[:3] > 0)

    def bone_world(img):
        ijk = np.argwhere(img[0].numpy() > 1000)
        return np.sort((img.affine.numpy()[:3, :3] @ ijk.T).T + img.affine.numpy()[:3, 3], axis=0)

    np.testing.assert_allclose(bone_world(ras), bone_world(image), atol=1e-4)


def test_load_ct_rejects_where_load_image_would_fall_back(tmp_path):
    write_ct_series(tmp_path / "mr", synthetic_hu(), modality="MR")
    with pytest.raises(CTInputError, match="modality 'MR'"):
        LoadCT()(tmp_path / "mr")
    with pytest.raises(CTInputError, match="modality 'MR'"):
        LoadCTd(keys="image")({"image": tmp_path / "mr"})


# ----------------------------------------------------------------------------------------------
# Several series in one folder
# ----------------------------------------------------------------------------------------------
def test_multi_series_folder(tmp_path):
    hu = synthetic_hu()
    write_ct_series(tmp_path / "study", hu, uid="1.2.3.1", description="lung 5mm")
    write_ct_series(tmp_path / "study" / "tmp", hu[:4], uid="1.2.3.2", description="bone 1mm")
    for path in (tmp_path / "study" / "tmp").iterdir():
        path.rename(tmp_path / "study" / f"b_{path.name}")

    series = list_dicom_series(tmp_path / "study")
    assert [(s.uid, s.description, s.modality, s.n_slices) for s in series] == [
        ("1.2.3.1", "lung 5mm", "CT", 6),
        ("1.2.3.2", "bone 1mm", "CT", 4),
    ]
    assert isinstance(series[0], SeriesInfo)
    assert [p.name for p in series[0].files] == [f"slice_{6 - k:03d}.dcm" for k in range(6)]  # by position

    with pytest.raises(CTInputError) as err:
        load(tmp_path / "study")
    message = str(err.value)
    assert "\n" not in message and "series_uid" in message
    assert "1.2.3.1 'lung 5mm' (CT, 6 slices)" in message and "1.2.3.2 'bone 1mm' (CT, 4 slices)" in message

    data, meta = load(tmp_path / "study", series_uid="1.2.3.2")
    np.testing.assert_array_equal(data, expected_array(hu[:4]))
    assert meta["0020|000e"] == "1.2.3.2"
    with pytest.raises(CTInputError, match="no series with SeriesInstanceUID 9.9"):
        load(tmp_path / "study", series_uid="9.9")


# ----------------------------------------------------------------------------------------------
# Bad input: one-line CTInputError naming the path
# ----------------------------------------------------------------------------------------------
def _nifti(path: Path, array) -> Path:
    nib.Nifti1Image(np.asarray(array, dtype=np.float32), np.diag([0.8, 0.8, 2.0, 1.0])).to_filename(path)
    return path


def _mr_series(tmp):
    write_ct_series(tmp / "x", synthetic_hu(), modality="MR")
    return tmp / "x"


def _single_slice(tmp):
    write_ct_series(tmp / "x", synthetic_hu()[:1])
    return tmp / "x"


def _four_d_series(tmp):
    positions = [np.asarray(ORIGIN) - (k // 2) * SPACING[2] * np.array([0, 0, 1]) for k in range(6)]
    write_ct_series(tmp / "x", synthetic_hu(), positions=positions)
    return tmp / "x"


def _missing_slice(tmp):
    write_ct_series(tmp / "x", synthetic_hu())
    (tmp / "x" / "slice_003.dcm").unlink()
    return tmp / "x"


def _gantry_tilt(tmp):
    positions = [np.asarray(ORIGIN) + k * np.array([0, 0.4, -SPACING[2]]) for k in range(6)]
    write_ct_series(tmp / "x", synthetic_hu(), positions=positions)
    return tmp / "x"


def _no_position_tags(tmp):
    for path in write_ct_series(tmp / "x", synthetic_hu()):
        ds = pydicom.dcmread(path)
        del ds.ImagePositionPatient
        ds.save_as(path)
    return tmp / "x"


def _garbage_dicom(tmp):
    write_ct_series(tmp / "x", synthetic_hu())
    (tmp / "x" / "slice_007.dcm").write_bytes(b"not a dicom file " * 20)
    return tmp / "x"


def _truncated_pixels(tmp):
    paths = write_ct_series(tmp / "x", synthetic_hu())
    raw = paths[2].read_bytes()
    paths[2].write_bytes(raw[:-700])
    return tmp / "x"


def _empty_folder(tmp):
    (tmp / "x").mkdir()
    return tmp / "x"


def _text_folder(tmp):
    (tmp / "x").mkdir()
    (tmp / "x" / "notes.txt").write_text("no images here")
    return tmp / "x"


def _nan_nifti(tmp):
    volume = np.full((8, 8, 4), -1000.0)
    volume[2, 3, 1] = np.nan
    return _nifti(tmp / "x.nii.gz", volume)


def _inf_nifti(tmp):
    volume = np.full((8, 8, 4), -1000.0)
    volume[0, 0, 0] = np.inf
    return _nifti(tmp / "x.nii", volume)


def _corrupt_nifti(tmp):
    (tmp / "x.nii.gz").write_bytes(b"\x1f\x8b garbage" * 10)
    return tmp / "x.nii.gz"


def _truncated_nifti(tmp):
    path = _nifti(tmp / "x.nii", np.zeros((16, 16, 8)))
    path.write_bytes(path.read_bytes()[:600])
    return path


BAD_INPUTS = {
    "mr_modality": (_mr_series, "modality 'MR', not CT"),
    "single_slice": (_single_slice, "2D image"),
    "4d_series": (_four_d_series, "6 slices at only 3 distinct positions"),
    "missing_slice": (_missing_slice, "not evenly spaced"),
    "gantry_tilt": (_gantry_tilt, "sheared"),
    "no_position_tags": (_no_position_tags, "lack ImagePositionPatient"),
    "garbage_dicom": (_garbage_dicom, r"not readable DICOM \(slice_007.dcm\)"),
    "truncated_pixels": (_truncated_pixels, "slice_004.dcm cannot be decoded"),
    "empty_folder": (_empty_folder, "no DICOM or NIfTI files"),
    "text_folder": (_text_folder, "no DICOM or NIfTI files"),
    "2d_nifti": (lambda t: _nifti(t / "x.nii.gz", np.zeros((16, 16))), r"shape \(16, 16\), a 2D image"),
    "one_slice_nifti": (lambda t: _nifti(t / "x.nii.gz", np.zeros((16, 16, 1))), "2D image"),
    "4d_nifti": (lambda t: _nifti(t / "x.nii.gz", np.zeros((16, 16, 4, 2))), r"\(16, 16, 4, 2\) \(4D"),
    "nan_nifti": (_nan_nifti, r"1 voxel\(s\) are NaN or infinite"),
    "inf_nifti": (_inf_nifti, r"1 voxel\(s\) are NaN or infinite"),
    "corrupt_nifti": (_corrupt_nifti, "unreadable NIfTI"),
    "truncated_nifti": (_truncated_nifti, "unreadable NIfTI .*could the file be damaged"),
    "missing_path": (lambda t: t / "nowhere.nii.gz", "no such file or folder"),
    "unknown_file": (lambda t: (t / "x.png").write_bytes(b"png") and t / "x.png", "not a NIfTI or DICOM file"),
    "nifti_folder": (lambda t: _nifti(t / "x.nii", np.zeros((4, 4, 4))).parent, "folder of NIfTI files"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_one_line_error(tmp_path, case):
    make, pattern = BAD_INPUTS[case]
    path = make(tmp_path)
    with pytest.raises(CTInputError, match=pattern) as err:
        LoadCT()(path)
    message = str(err.value)
    assert "\n" not in message and message.startswith(str(path))
    assert isinstance(err.value, ValueError)


def test_nifti_trailing_singleton_is_3d(tmp_path):
    volume = np.arange(8 * 8 * 4, dtype=np.float32).reshape(8, 8, 4, 1) - 1000
    data, meta = load(_nifti(tmp_path / "v.nii.gz", volume))
    np.testing.assert_array_equal(data, volume[..., 0])
    np.testing.assert_allclose(meta["affine"], np.diag([0.8, 0.8, 2.0, 1.0]))


# ----------------------------------------------------------------------------------------------
# CLI input expansion
# ----------------------------------------------------------------------------------------------
def test_input_kind_and_expand_inputs(tmp_path):
    paths = write_ct_series(tmp_path / "dicom", synthetic_hu())
    _nifti(tmp_path / "a.nii.gz", np.zeros((4, 4, 4)))
    (tmp_path / "niftis").mkdir()
    _nifti(tmp_path / "niftis" / "c.nii", np.zeros((4, 4, 4)))
    _nifti(tmp_path / "niftis" / "b.nii.gz", np.zeros((4, 4, 4)))
    (tmp_path / "empty").mkdir()
    (tmp_path / "readme.txt").write_text("x")

    assert input_kind(tmp_path / "dicom") == "dicom_folder"
    assert input_kind(paths[0]) == "dicom_slice"
    assert input_kind(tmp_path / "a.nii.gz") == "nifti"
    assert input_kind(tmp_path / "niftis") == "nifti_folder"
    assert input_kind(tmp_path / "empty") == "unknown"
    assert input_kind(tmp_path / "readme.txt") == "unknown"
    assert input_kind(tmp_path / "gone") == "missing"
    assert CTReader().verify_suffix(tmp_path / "dicom") and CTReader().verify_suffix(str(tmp_path / "a.nii.gz"))
    assert not CTReader().verify_suffix(tmp_path / "readme.txt")

    got = expand_inputs([tmp_path / "dicom", str(tmp_path / "niftis"), str(tmp_path / "*.nii.gz"), paths[1]])
    niftis = [tmp_path / "niftis" / "b.nii.gz", tmp_path / "niftis" / "c.nii"]
    assert got == [tmp_path / "dicom", *niftis, tmp_path / "a.nii.gz"]
    assert expand_inputs([str(tmp_path / "dicom" / "*.dcm")]) == [tmp_path / "dicom"]

    for bad, pattern in [
        (tmp_path / "gone.nii", "no such file or folder"),
        (str(tmp_path / "*.nrrd"), "matches no file or folder"),
        (tmp_path / "empty", "no DICOM or NIfTI files"),
        (tmp_path / "readme.txt", "not a NIfTI or DICOM file"),
    ]:
        with pytest.raises(CTInputError, match=pattern):
            expand_inputs([bad])


# ----------------------------------------------------------------------------------------------
# Real chest CT series
# ----------------------------------------------------------------------------------------------
def test_real_dicom_series(dicom_series_dir):
    image = LoadCTd(keys="image", ensure_channel_first=True)({"image": dicom_series_dir})["image"]
    assert tuple(image.shape) == (1, 512, 512, 64)
    np.testing.assert_allclose(image.meta["spacing"], (0.841796875, 0.841796875, 5.0), atol=1e-6)
    np.testing.assert_allclose(image.affine.numpy(), affine_from_dicom_tags(dicom_series_dir), atol=1e-4)
    assert image.meta["0008|0060"] == "CT"
    # MONAI's PydicomReader stacks the slices in the opposite order: same voxels at the same world points
    other = LoadImage(reader="PydicomReader")(dicom_series_dir)
    flip_k = np.eye(4)
    flip_k[2, 2], flip_k[2, 3] = -1.0, 63.0
    np.testing.assert_allclose(other.affine.numpy() @ flip_k, image.affine.numpy(), atol=1e-4)
    np.testing.assert_array_equal(other.numpy()[..., ::-1], image.numpy()[0])
    hu = image.numpy()
    assert hu.min() >= -1100 and hu.max() > 500
    body_air = np.median(hu[0, :20, :20, :])  # corner outside the patient
    assert -1050 < body_air < -950
    lung_or_air = np.mean(hu < -500)
    assert 0.2 < lung_or_air < 0.9
