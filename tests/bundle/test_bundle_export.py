"""TorchScript and ONNX export with the README's ``monai.bundle ckpt_export`` / ``onnx_export``
commands: the exported networks give the eager network's logits within 1e-4."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from monai.data import load_net_with_metadata

from infnet_monai.networks import InfNet
from infnet_monai.shipped import network_size

from tests.bundle_helpers import (
    INFERENCE_FILE,
    META_FILE,
    copy_bundle,
    network_like_input,
    readme_commands,
    run_bundle_cli,
    shared_random_weights,
)

TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """A copy of the bundle with random weights in models/model.pt."""
    bundle = copy_bundle(tmp_path_factory.mktemp("export") / "bundle")
    os.symlink(shared_random_weights(tmp_path_factory), bundle / "models" / "model.pt")
    return bundle


def _run_readme_command(command: str, bundle) -> None:
    """The README's ``python -m monai.bundle COMMAND ...`` line, run from the bundle folder."""
    (argv,) = readme_commands(command)
    cwd = os.getcwd()
    os.chdir(bundle)
    try:
        run_bundle_cli(argv)
    finally:
        os.chdir(cwd)


@pytest.fixture(scope="module")
def torchscript_file(bundle):
    _run_readme_command("ckpt_export", bundle)
    return bundle / "models" / "model.ts"


@pytest.fixture(scope="module")
def onnx_file(bundle):
    pytest.importorskip("onnx", reason="onnx_export needs the onnx package (test extra)")
    _run_readme_command("onnx_export", bundle)
    return bundle / "models" / "model.onnx"


@pytest.fixture(scope="module")
def eager(bundle):
    """Inputs (a batch of two 96x96 slices, one 352x352 slice) and the eager network's logits."""
    net = InfNet()
    net.load_state_dict(torch.load(bundle / "models" / "model.pt", weights_only=True))
    net.eval()
    inputs = [network_like_input(2, 96, seed=1), network_like_input(1, network_size(), seed=2)]
    with torch.no_grad():
        outputs = [net(x) for x in inputs]
    for y in outputs:  # a meaningful comparison: varying logits of order 1-10
        assert 0.5 < float(y.abs().max()) < 100 and float(y.std()) > 0.1
    return inputs, outputs


def test_torchscript_export_matches_eager(torchscript_file, eager):
    scripted, meta, extra = load_net_with_metadata(str(torchscript_file), more_extra_files=("inference.json",))
    # metadata and the config travel inside the TorchScript file
    assert meta["version"] == json.loads(META_FILE.read_text())["version"]
    assert meta["network_data_format"] == json.loads(META_FILE.read_text())["network_data_format"]
    assert json.loads(extra["inference.json"]) == json.loads(INFERENCE_FILE.read_text())
    scripted.eval()
    for x, expected in zip(*eager):
        # the profiling executor's optimisation passes only cost time here (seconds per call)
        with torch.no_grad(), torch.jit.optimized_execution(False):
            y = scripted(x)
        assert y.shape == expected.shape
        assert float((y - expected).abs().max()) <= TOLERANCE


def test_onnx_export_matches_eager(onnx_file, eager):
    ort = pytest.importorskip("onnxruntime", reason="ONNX check needs onnxruntime (test extra)")
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    (image,), (pred,) = session.get_inputs(), session.get_outputs()
    assert (image.name, image.shape) == ("image", ["batch", 3, "height", "width"])
    assert (pred.name, pred.shape) == ("pred", ["batch", 1, "height", "width"])
    for x, expected in zip(*eager):  # batch 2 at 96x96 and batch 1 at 352x352: dynamic axes
        (y,) = session.run(None, {"image": x.numpy()})
        assert y.shape == tuple(expected.shape)
        assert float(np.abs(y - expected.numpy()).max()) <= TOLERANCE
