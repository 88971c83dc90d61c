"""The bundle under a real MONAI Label server.

Runs when the MONAI Label environment exists (``.ci/monailabel.sh`` builds ``.venv-label/``;
or set ``INFNET_MONAILABEL_PYTHON``) and the shared DICOM series is present; skips otherwise.
Servers on 127.0.0.1 serve two short real CT stacks. MONAI Label's own ``monaibundle`` sample
app, unchanged, lists the model with the label ``infection`` and returns the bundle's own mask
on the image grid. The Inf-Net app (``examples/monailabel/app``: the same inference task running
the bundle's inference-optimised ``network``, plus training on CT volumes) stores submitted labels, retrains one epoch into ``models/model.pt``
and segments with the retrained weights.
"""

from __future__ import annotations

import contextlib
import gzip
import importlib.util
import json
import os
import shutil
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.transforms import SaveImaged

from infnet_monai.networks import InfNet
from infnet_monai.transforms.io import LoadCT

from tests.conftest import BUNDLE_DIR, REPO_ROOT

_spec = importlib.util.spec_from_file_location("monailabel_server", REPO_ROOT / "examples" / "monailabel" / "server.py")
server = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(server)

pytestmark = pytest.mark.slow  # a real MONAI Label server, minutes

MODEL = server.BUNDLE_NAME
HOST = "127.0.0.1"
SLICES = {"ct_a": (26, 32), "ct_b": (34, 40)}  # two 6-slice stacks (5 mm) through both lungs
SPHERE_RADIUS_MM = 15.0
STARTUP_S, INFER_S, TRAIN_S = 180.0, 300.0, 600.0
# train_nifti.json values for a short CPU run (one 96x96 scale, two slices per volume)
SMALL_TRAINING = {"image_size": 96, "multiscale_rates": [1.0], "slices_per_volume": 2, "batch_size": 2,
                  "num_workers": 0, "cache_rate": 0.0}
# server vs in-process bundle inference (same weights, different torch builds): voxel fraction
MAX_MISMATCH = 1e-4


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
    """uint8 ball of ``SPHERE_RADIUS_MM`` at the centroid of the lung-like voxels (-950..-500 HU)
    in the first half of the first array axis (one lung)."""
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
def bundle_copy(tmp_path_factory, studies) -> Path:
    """The bundle's configs in tmp, training made small (:data:`SMALL_TRAINING` merged into
    ``train_nifti.json``), seeded random InfNet weights in ``models/model.pt`` whose final bias
    puts the median logit of a ``ct_a`` slice at 0 (so that masks are neither empty nor full)."""
    bundle = tmp_path_factory.mktemp("bundle") / MODEL
    shutil.copytree(BUNDLE_DIR / "configs", bundle / "configs")
    nifti = bundle / "configs" / "train_nifti.json"
    nifti.write_text(json.dumps({**json.loads(nifti.read_text()), **SMALL_TRAINING}, indent=4))
    (bundle / "models").mkdir()
    torch.manual_seed(0)
    network = InfNet().eval()
    parser = ConfigParser()
    parser.read_config(bundle / "configs" / "inference.json")
    parser["bundle_root"] = str(bundle)
    image = parser.get_parsed_content("preprocessing")({"image": str(studies["ct_a"][0])})["image"]
    from infnet_monai.transforms.chain import network_input_batch

    with torch.no_grad():
        logits = network(network_input_batch(image[..., image.shape[-1] // 2][None].as_tensor()))
        network.reverse_attention2.predict.bn.bias.sub_(logits.median())
    torch.save(network.state_dict(), bundle / "models" / "model.pt")
    return bundle


@contextlib.contextmanager
def _running_server(app: Path, python: Path, studies_dir: Path, log: Path):
    """A MONAI Label server for ``app`` on a free loopback port; yields its URL and stops it
    (the whole process group) whatever happens."""
    port = server.free_port(HOST)
    url = f"http://{HOST}:{port}"
    env = {**os.environ, "OMP_NUM_THREADS": "2", "CUDA_VISIBLE_DEVICES": ""}
    process = server.start_server(server.server_command(python, app, studies_dir, HOST, port), log, env)
    try:
        server.wait_until_ready(url, process, STARTUP_S, log)
        yield url
    finally:
        server.stop_server(process)
        assert process.poll() is not None


def _infer(url: str, image_id: str) -> nib.Nifti1Image:
    """``POST /infer/<model>?image=<id>&output=image``: the mask file MONAI Label returns."""
    answer = server.http(f"{url}/infer/{MODEL}?image={image_id}&output=image", "POST", timeout=INFER_S, raw=True)
    return nib.Nifti1Image.from_bytes(gzip.decompress(answer) if answer[:2] == b"\x1f\x8b" else answer)


def _bundle_mask(bundle: Path, image: Path, plain: bool = False) -> np.ndarray:
    """The bundle's own inference (configs/inference.json, in this process) for ``image``: its
    ``network`` (what ``monai.bundle run`` and the CLI run), or with ``plain`` the eval
    ``network_def`` holding the weights (what MONAI Label's unchanged sample app runs)."""
    parser = ConfigParser()
    parser.read_config(bundle / "configs" / "inference.json")
    parser["bundle_root"] = str(bundle)
    parser["device"] = "$torch.device('cpu')"
    parser["compile"] = False
    if plain:
        network = parser.get_parsed_content("network_def")
        network.load_state_dict(torch.load(bundle / "models" / "model.pt", map_location="cpu"))
        network.eval()
    else:
        network = parser.get_parsed_content("network")
    item = parser.get_parsed_content("preprocessing")({"image": str(image)})
    with torch.no_grad():
        item["pred"] = parser.get_parsed_content("inferer")(item["image"][None], network)[0]
    for transform in parser.get_parsed_content("postprocessing").transforms:
        if not isinstance(transform, SaveImaged):  # as MONAI Label does: the mask, no file
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
def expected_mask(studies, bundle_copy) -> np.ndarray:
    """The bundle's own mask for ``ct_a`` with the seeded weights (before any training)."""
    mask = _bundle_mask(bundle_copy, studies["ct_a"][0])
    assert mask.sum() > 0  # the seeded weights mark some voxels: comparisons are not 0 == 0
    return mask


@pytest.fixture(scope="module")
def plain_network_mask(studies, bundle_copy) -> np.ndarray:
    """The mask of the plain ``network_def`` with the seeded weights (MONAI Label's sample app)."""
    return _bundle_mask(bundle_copy, studies["ct_a"][0], plain=True)


def test_inference_task_runs_the_bundles_optimised_network(
    label_python, bundle_copy, studies, expected_mask, tmp_path
):
    """The app's infer task calls the bundle's ``network`` (BatchNorm folded, channels-last), not a
    plain ``network_def`` copy, once per model file, and gives the bundle's mask; so do the CLI
    and the Python API on the same CT with the same weights (the four entry points, one mask)."""
    import subprocess

    import infnet_monai
    from infnet_monai.cli import main

    image, weights = studies["ct_a"][0], bundle_copy / "models" / "model.pt"
    api_mask = infnet_monai.segment(image, weights=weights, device="cpu", compile=False).mask[0].numpy()
    assert main(["segment", str(image), "-o", str(tmp_path / "cli"), "--weights", str(weights), "--device", "cpu",
                 "--compile", "off", "-q"]) == 0
    cli_mask = np.asarray(nib.load(str(tmp_path / "cli" / "ct_a_seg.nii.gz")).dataobj)
    np.testing.assert_array_equal(api_mask, expected_mask)
    np.testing.assert_array_equal(cli_mask, expected_mask)

    script = f"""
import sys, torch, numpy
sys.path.insert(0, {str(REPO_ROOT / "examples" / "monailabel" / "app")!r})
from lib.infer_task import InfNetBundleInferTask
task = InfNetBundleInferTask({str(bundle_copy)!r}, {{}})
net = task._get_network("cpu", None)
print(type(net).__name__, any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules()),
      next(net.parameters()).is_contiguous(memory_format=torch.channels_last), net is task._get_network("cpu", None))
result = task({{"image": {str(studies["ct_a"][0])!r}, "device": "cpu"}})
numpy.save({str(bundle_copy / "task_mask.npy")!r}, __import__("nibabel").load(result[0]).get_fdata())
"""
    run = subprocess.run([str(label_python), "-c", script], capture_output=True, text=True, timeout=600, cwd=REPO_ROOT)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.split()[-4:] == ["InfNet", "False", "True", "True"]
    mask = np.load(bundle_copy / "task_mask.npy")
    assert mask.shape == expected_mask.shape and np.mean(mask != expected_mask) <= MAX_MISMATCH


def test_sample_app_serves_the_bundle_for_auto_segmentation(
    tmp_path, label_python, studies, bundle_copy, plain_network_mask
):
    app = server.prepare_app(tmp_path / "app", bundle_copy, sample_app_python=label_python)
    with _running_server(app, label_python, studies["ct_a"][0].parent, tmp_path / "server.log") as url:
        info = server.http(f"{url}/info/")
        model = info["models"][MODEL]
        assert model["type"] == "segmentation"
        assert model["labels"] == {"infection": 1}
        assert model["dimension"] == 2  # slice network: metadata spatial_shape [352, 352]
        assert info["datastore"]["total"] == 2
        mask_img = _infer(url, "ct_a")
    image = nib.load(str(studies["ct_a"][0]))
    assert mask_img.shape == image.shape
    np.testing.assert_allclose(mask_img.affine, image.affine, atol=1e-4)
    mask = np.asarray(mask_img.dataobj)
    assert set(np.unique(mask)) <= {0, 1}
    assert np.mean(mask != plain_network_mask) <= MAX_MISMATCH


@pytest.fixture(scope="module")
def served(tmp_path_factory, label_python, studies, bundle_copy):
    """The Inf-Net app with the bundle copy (linked, so training rewrites its model.pt)."""
    tmp = tmp_path_factory.mktemp("infnet_app")
    app = server.prepare_app(tmp / "app", bundle_copy)
    with _running_server(app, label_python, studies["ct_a"][0].parent, tmp / "server.log") as url:
        yield url


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


def test_app_lists_the_model_and_its_trainer(served):
    info = server.http(f"{served}/info/")
    assert info["models"][MODEL]["labels"] == {"infection": 1}
    assert MODEL in info["trainers"]
    assert {"random", "first"} <= set(info["strategies"])


def test_app_infers_the_bundle_mask(served, studies, expected_mask):
    mask_img = _infer(served, "ct_a")
    np.testing.assert_allclose(mask_img.affine, nib.load(str(studies["ct_a"][0])).affine, atol=1e-4)
    assert np.mean(np.asarray(mask_img.dataobj) != expected_mask) <= MAX_MISMATCH


def test_submitted_labels_become_training_data(submitted, studies):
    assert sorted(Path(d["label"]).name for d in submitted) == ["ct_a.nii.gz", "ct_b.nii.gz"]
    for item in submitted:
        sent = studies[Path(item["image"]).name.removesuffix(".nii.gz")][1]
        stored = np.asarray(nib.load(item["label"]).dataobj)
        np.testing.assert_array_equal(stored, np.asarray(nib.load(str(sent)).dataobj))


def test_train_one_epoch_rewrites_the_checkpoint_and_inference_uses_it(
    served, submitted, studies, bundle_copy, expected_mask
):
    weights = bundle_copy / "models" / "model.pt"
    before = torch.load(weights, map_location="cpu")
    stamp = weights.stat().st_mtime_ns
    # one epoch on one volume, validation on the other
    request = {"max_epochs": 1, "val_split": 0.5, "device": "cpu", "tracking": "None", "run_id": ""}
    server.http(f"{served}/train/{MODEL}", "POST", json_body=request, timeout=60)
    status = _wait_for_training(served, TRAIN_S)
    assert status["status"] == "DONE", "\n".join(status.get("details", []))
    assert weights.stat().st_mtime_ns > stamp
    after = torch.load(weights, map_location="cpu")
    after = after.get("model", after)
    InfNet().load_state_dict(after)  # strict: a complete InfNet state dict
    changed = [k for k, v in after.items() if v.is_floating_point() and not torch.equal(v, before[k])]
    assert changed, "training left every weight unchanged"
    assert not list((bundle_copy / "models").glob("checkpoint*.pt"))  # interval checkpoints kept out
    # the server reloads the retrained model.pt for the next auto-segmentation
    retrained = _bundle_mask(bundle_copy, studies["ct_a"][0])
    assert np.mean(retrained != expected_mask) > 10 * MAX_MISMATCH  # a stale model would not pass below
    mask = np.asarray(_infer(served, "ct_a").dataobj)
    assert np.mean(mask != retrained) <= MAX_MISMATCH
