"""The bundle under a real MONAI Label server (its ``monaibundle`` sample app, unchanged).

Runs when the MONAI Label environment exists (``.ci/monailabel.sh`` builds ``.venv-label/``;
or set ``INFNET_MONAILABEL_PYTHON``) and the shared DICOM series is present; skips otherwise.
One server on 127.0.0.1 serves two short real CT volumes: ``/info/`` lists the model with the
label ``infection``, ``/infer`` returns the bundle's own mask on the image grid, a submitted
label is stored, and ``/train`` runs one epoch that rewrites ``models/model.pt``.
"""

from __future__ import annotations

import gzip
import importlib.util
import os
import shutil
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from infnet_monai.networks import InfNet
from infnet_monai.transforms.io import LoadCT

REPO_ROOT = Path(__file__).resolve().parents[1]
BUNDLE_DIR = REPO_ROOT / "bundles" / "covid19_lung_infection_ct_segmentation"
_spec = importlib.util.spec_from_file_location("monailabel_server", REPO_ROOT / "examples" / "monailabel" / "server.py")
server = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(server)

MODEL = server.BUNDLE_NAME
HOST = "127.0.0.1"
SLICES = {"ct_a": (26, 32), "ct_b": (34, 40)}  # two 6-slice stacks (5 mm) through both lungs
SPHERE_RADIUS_MM = 15.0
STARTUP_S, INFER_S, TRAIN_S = 180.0, 300.0, 600.0


@pytest.fixture(scope="module")
def label_python() -> Path:
    try:
        return server.monailabel_python()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))


def _save_nifti(array: np.ndarray, affine: np.ndarray, path: Path) -> Path:
    nib.save(nib.Nifti1Image(array, affine), str(path))
    return path


def _sphere_label(hu: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """uint8 ball of ``SPHERE_RADIUS_MM`` at the centroid of the patient-right lung voxels
    (-950..-500 HU in the first array half along x, which runs to the patient's left in RAS)."""
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    half = hu.shape[0] // 2
    lung = np.argwhere((hu[:half] > -950) & (hu[:half] < -500))
    centre = lung.mean(axis=0)
    grid = np.indices(hu.shape, dtype=np.float64)
    dist = np.sqrt(sum(((g - c) * s) ** 2 for g, c, s in zip(grid, centre, spacing)))
    return (dist <= SPHERE_RADIUS_MM).astype(np.uint8)


@pytest.fixture(scope="module")
def studies(tmp_path_factory, dicom_series_dir) -> dict:
    """Two NIfTI CT stacks cut from the shared series (int16 HU, geometry kept) and a sphere
    label for each: {id: (image path, label path)}."""
    folder = tmp_path_factory.mktemp("studies")
    labels = tmp_path_factory.mktemp("labels")
    volume = LoadCT()(dicom_series_dir)
    hu, affine = volume.numpy(), volume.affine.numpy()
    out = {}
    for name, (start, stop) in SLICES.items():
        shift = np.eye(4)
        shift[2, 3] = start
        sub_affine = affine @ shift
        sub = np.round(hu[:, :, start:stop]).astype(np.int16)
        image = _save_nifti(sub, sub_affine, folder / f"{name}.nii.gz")
        label = _save_nifti(_sphere_label(sub, sub_affine), sub_affine, labels / f"{name}.nii.gz")
        out[name] = (image, label)
    return out


@pytest.fixture(scope="module")
def bundle_copy(tmp_path_factory) -> Path:
    """The bundle's configs in tmp with seeded random InfNet weights in ``models/model.pt``."""
    bundle = tmp_path_factory.mktemp("bundle") / MODEL
    shutil.copytree(BUNDLE_DIR / "configs", bundle / "configs")
    (bundle / "models").mkdir()
    torch.manual_seed(0)
    torch.save(InfNet().state_dict(), bundle / "models" / "model.pt")
    return bundle


def _bundle_mask(bundle: Path, image: Path) -> np.ndarray:
    """The bundle's own inference (configs/inference.json, in this process) for ``image``."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(bundle / "configs" / "inference.json")
    parser["bundle_root"] = str(bundle)
    parser["device"] = "$torch.device('cpu')"
    network = parser.get_parsed_content("network_def")
    network.load_state_dict(torch.load(bundle / "models" / "model.pt", map_location="cpu"))
    network.eval()
    item = parser.get_parsed_content("preprocessing")({"image": str(image)})
    with torch.no_grad():
        item["pred"] = parser.get_parsed_content("inferer")(item["image"][None], network)[0]
    post = [t for t in parser.get_parsed_content("postprocessing").transforms if type(t).__name__ != "SaveImaged"]
    for transform in post:
        item = transform(item)
    return item["pred"].numpy()[0]


def _wait_for_training(url: str, timeout: float) -> dict:
    """Poll ``GET /train/`` until the last training task is no longer running."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = server.http(f"{url}/train/", timeout=30)
        if status.get("status") not in ("SUBMITTED", "RUNNING"):
            return status
        time.sleep(2.0)
    raise AssertionError(f"training still running after {timeout:.0f} s: {status}")


@pytest.fixture(scope="module")
def served(tmp_path_factory, label_python, studies, bundle_copy):
    """A MONAI Label server (monaibundle sample app + the bundle copy) on a free loopback port;
    yields its URL and is stopped (process group killed) whatever the tests do."""
    tmp = tmp_path_factory.mktemp("monailabel")
    app = server.prepare_app(tmp / "app", label_python, bundle_copy, link_bundle=True)
    port = server.free_port(HOST)
    url = f"http://{HOST}:{port}"
    log = tmp / "server.log"
    env = {**os.environ, "OMP_NUM_THREADS": "2", "CUDA_VISIBLE_DEVICES": ""}
    studies_dir = studies["ct_a"][0].parent
    process = server.start_server(server.server_command(label_python, app, studies_dir, HOST, port), log, env)
    try:
        server.wait_until_ready(url, process, STARTUP_S, log)
        yield url
    finally:
        server.stop_server(process)
        assert process.poll() is not None


@pytest.fixture(scope="module")
def submitted(served, studies) -> list:
    """Both sphere labels submitted as final labels (Slicer's "Submit Label"); the training datalist."""
    for name, (_, label) in studies.items():
        saved = server.http(
            f"{served}/datastore/label?image={name}&tag=final", "PUT",
            fields={"params": "{}"}, files={"label": (label.name, label.read_bytes())},
        )
        assert saved["image"] == name
    return server.http(f"{served}/datastore/?output=train")


def test_info_lists_the_bundle_with_the_infection_label(served, bundle_copy):
    info = server.http(f"{served}/info/")
    model = info["models"][MODEL]
    assert model["type"] == "segmentation"
    assert model["labels"] == {"infection": 1}
    assert model["dimension"] == 2  # slice network: metadata spatial_shape [352, 352]
    assert info["datastore"]["total"] == 2
    assert (MODEL in info["trainers"]) == (bundle_copy / "configs" / "train.json").is_file()


def test_infer_returns_the_bundle_mask_on_the_image_grid(served, studies, bundle_copy):
    image_path = studies["ct_a"][0]
    answer = server.http(f"{served}/infer/{MODEL}?image=ct_a&output=image", "POST", timeout=INFER_S, raw=True)
    mask_img = nib.Nifti1Image.from_bytes(gzip.decompress(answer) if answer[:2] == b"\x1f\x8b" else answer)
    image = nib.load(str(image_path))
    assert mask_img.shape == image.shape
    np.testing.assert_allclose(mask_img.affine, image.affine, atol=1e-4)
    mask = np.asarray(mask_img.dataobj)
    assert set(np.unique(mask)) <= {0, 1}
    expected = _bundle_mask(bundle_copy, image_path)
    assert expected.sum() > 0  # the seeded weights mark some voxels: the comparison is not 0 == 0
    assert np.mean(mask != expected) <= 1e-3


def test_submitted_labels_become_training_data(submitted, studies):
    assert sorted(Path(d["label"]).name for d in submitted) == ["ct_a.nii.gz", "ct_b.nii.gz"]
    for item in submitted:
        sent = studies[Path(item["image"]).name.removesuffix(".nii.gz")][1]
        np.testing.assert_array_equal(np.asarray(nib.load(item["label"]).dataobj), np.asarray(nib.load(str(sent)).dataobj))


def test_train_one_epoch_rewrites_the_checkpoint(served, submitted, bundle_copy):
    if not (bundle_copy / "configs" / "train.json").is_file():
        pytest.skip("the bundle has no configs/train.json yet")
    weights = bundle_copy / "models" / "model.pt"
    before = torch.load(weights, map_location="cpu")
    stamp = weights.stat().st_mtime_ns
    # one epoch on one volume, validation on the other
    request = {"max_epochs": 1, "val_split": 0.5, "device": "cpu", "tracking": "None", "multi_gpu": False}
    server.http(f"{served}/train/{MODEL}", "POST", json_body=request, timeout=60)
    status = _wait_for_training(served, TRAIN_S)
    assert status["status"] == "DONE", "\n".join(status.get("details", []))
    assert weights.stat().st_mtime_ns > stamp
    after = torch.load(weights, map_location="cpu")
    after = after.get("model", after)
    InfNet().load_state_dict(after)  # strict: a complete InfNet state dict
    changed = [k for k, v in after.items() if v.is_floating_point() and not torch.equal(v, before[k])]
    assert changed, "training left every weight unchanged"
