"""The Python API: ``infnet_monai.segment`` and ``Segmenter`` in memory, equal to the CLI's files."""

from __future__ import annotations

import subprocess
import sys

import nibabel as nib
import PIL.Image
import numpy as np
import pytest
import torch
from monai.data import MetaTensor

import infnet_monai
from infnet_monai.cli import main
from infnet_monai.segmenter import Segmenter
from infnet_monai.data.inputs import CTInputError

from tests.conftest import REPO_ROOT
from infnet_monai.data.phantoms import affine_for, chest_phantom, save_nifti
from tests.test_segment_cli import weights  # noqa: F401 - the module's random-weights fixture

SPACING = (2.4, 2.4, 6.0)


@pytest.fixture()
def phantom(tmp_path):
    path = tmp_path / "in" / "case.v2.nii.gz"
    path.parent.mkdir()
    save_nifti(path, chest_phantom((120, 128, 4), SPACING, seed=3), affine_for(SPACING, "LPS"))
    return path


def test_import_is_light_and_lazy():
    code = "import sys, infnet_monai; print('monai' in sys.modules, 'torch' in sys.modules, callable(infnet_monai.segment))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, check=True).stdout
    assert out.split() == ["False", "False", "True"]


@pytest.mark.slow
def test_path_nibabel_and_metatensor_inputs_give_the_cli_mask(weights, phantom, tmp_path):  # noqa: F811
    before = sorted(p.name for p in phantom.parent.iterdir())
    segmenter = Segmenter(weights, device="cpu", keep_prob=True)
    from_path = segmenter.segment(phantom)
    image = nib.load(str(phantom))
    from_nibabel = segmenter(image)
    tensor = MetaTensor(torch.as_tensor(np.asarray(image.dataobj, np.float32)), affine=torch.as_tensor(image.affine))
    from_tensor = segmenter(tensor)
    assert sorted(p.name for p in phantom.parent.iterdir()) == before  # nothing written
    for result in (from_path, from_nibabel, from_tensor):
        assert tuple(result.mask.shape) == (1, 120, 128, 4) and result.mask.dtype == torch.uint8
        np.testing.assert_allclose(result.mask.affine.numpy(), image.affine, atol=1e-6)
        assert torch.equal(result.mask.as_tensor(), from_path.mask.as_tensor())
        assert tuple(result.probabilities.shape) == (1, 120, 128, 4) and tuple(result.lung.shape) == (1, 120, 128, 4)
    assert 0 < int(from_path.mask.sum()) < from_path.mask.numel()
    # the CLI writes the same mask
    assert main(["segment", str(phantom), "-o", str(tmp_path / "o"), "--weights", str(weights), "-q", "--device", "cpu"]) == 0
    written = nib.load(str(tmp_path / "o" / "case.v2_seg.nii.gz"))
    np.testing.assert_array_equal(np.asarray(written.dataobj), from_path.mask[0].numpy())
    np.testing.assert_allclose(written.affine, from_path.mask_image().affine, atol=1e-6)
    # the burden figures of the result, from its lung labels on the input grid
    burden = from_path.burden("case")
    voxel_ml = float(np.prod(SPACING)) / 1000.0
    lungs = int(((from_path.lung == 1) | (from_path.lung == 2)).sum())
    # the lungs' labels plus the infection attached to them (the burden's counting rule)
    assert lungs * voxel_ml <= burden["lung_ml"]["total"] <= lungs * voxel_ml + from_path.infected_ml + 1e-6
    assert 0 < burden["infection_ml"]["total"] <= from_path.infected_ml + 1e-6
    # the convenience function: a Segmenter made for one call
    assert torch.equal(infnet_monai.segment(phantom, weights=weights, device="cpu").mask.as_tensor(), from_path.mask.as_tensor())


@pytest.mark.slow
def test_in_memory_input_that_is_not_a_ct_is_refused(weights):  # noqa: F811
    segmenter = Segmenter(weights, device="cpu")
    labels = MetaTensor(torch.randint(0, 3, (32, 32, 4)).float(), affine=torch.eye(4))
    with pytest.raises(CTInputError, match="the image in memory: holds only 3 distinct value"):
        segmenter(labels)
    air = torch.full((32, 32, 4), -1000.0)
    air[3, 4, 1] = float("nan")
    with pytest.raises(CTInputError, match=r"the image in memory: 1 voxel\(s\) are NaN or infinite; replace them \(e.g. with -1024 HU\)$"):
        segmenter(MetaTensor(air, affine=torch.eye(4)))
    with pytest.raises(ValueError, match=r"expected a CT volume \(X, Y, Z\) or \(1, X, Y, Z\)"):
        segmenter(MetaTensor(torch.zeros(2, 8, 8, 4)))
    with pytest.raises(TypeError, match="expected a path, a nibabel image or a MetaTensor"):
        segmenter(np.zeros((8, 8, 4)))


@pytest.mark.slow
def test_lung_labels_are_exact_and_the_report_measures_the_same_lungs(weights, phantom, tmp_path):  # noqa: F811
    """The lung labels of a run are computed on the input grid (no resize round trip): they equal
    ``ct_lung_labels`` of the CT, and ``report`` on the written mask gives the run's burden."""
    import json

    from infnet_monai.report.run import load_volume
    from infnet_monai.transforms import LoadCT
    from infnet_monai.transforms.chain import ct_lung_labels

    result = Segmenter(weights, device="cpu", keep_ct=True).segment(phantom)
    ct = LoadCT(image_only=True, ensure_channel_first=True)(str(phantom))
    # the CT kept for the report is the CT as read, on its own grid
    assert torch.equal(result.ct.as_tensor(), ct.as_tensor()) and torch.equal(result.ct.affine, ct.affine)
    expected = ct_lung_labels(ct)
    assert torch.equal(result.lung.as_tensor(), expected.as_tensor()) and set(np.unique(expected.numpy())) >= {1, 2}
    np.testing.assert_allclose(result.lung.affine.numpy(), ct.affine.numpy())
    assert main(["segment", str(phantom), "-o", str(tmp_path / "s"), "--weights", str(weights), "-q", "--report"]) == 0
    assert main(["report", "--image", str(phantom), "--mask", str(tmp_path / "s" / "case.v2_seg.nii.gz"),
                 "-o", str(tmp_path / "r")]) == 0
    run, report = (json.loads((tmp_path / d / "case.v2_burden.json").read_text()) for d in ("s", "r"))
    assert run["lung_ml"] == report["lung_ml"] and run["percent_involved"] == report["percent_involved"]
    # --report draws the CT it segmented (not read again): the same QC image as report's
    qc = [np.asarray(PIL.Image.open(tmp_path / d / "case.v2_qc.png")) for d in ("s", "r")]
    assert qc[0].shape == qc[1].shape and np.array_equal(qc[0], qc[1])
    assert load_volume(tmp_path / "s" / "case.v2_seg.nii.gz", check_hu=False).shape == (1, 120, 128, 4)


def test_loading_in_the_background_leaves_the_global_random_generator_alone(weights):  # noqa: F811
    """The network is built without random initialisation (the weights overwrite it): a thread
    loading it never draws from torch's global generator while the caller uses it."""
    torch.manual_seed(0)
    state = torch.random.get_rng_state()
    segmenter = Segmenter(weights, device="cpu", compile=False)
    assert segmenter.network is not None  # waits for the background load
    assert torch.equal(torch.random.get_rng_state(), state)


def test_the_unfilled_network_is_built_without_initialisers_or_torch_dynamo():
    """The meta-device build skips the value initialisers instead of running them through
    torch's Python reference kernels, which import ``torch._dynamo`` (0.6 s of a CLI start);
    the CPU network it gives has InfNet's parameters and buffers, shapes and dtypes."""
    code = (
        "import sys, torch\n"
        "from infnet_monai.networks import InfNet\n"
        "from infnet_monai.runtime.loading import _unfilled\n"
        "net = _unfilled(InfNet)\n"
        "reference = {k: (tuple(v.shape), v.dtype) for k, v in InfNet().state_dict().items()}\n"
        "assert {k: (tuple(v.shape), v.dtype) for k, v in net.state_dict().items()} == reference\n"
        "assert all(t.device.type == 'cpu' for t in net.state_dict().values())\n"
        "print('torch._dynamo' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
