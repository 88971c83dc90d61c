"""Fast inference pieces give the same results as the plain ones: BatchNorm folding, the
channels-last (and optional TorchScript) network, the compiled network package, per-batch network
input, slice crop to the lungs, the restricted lung dilation and prefetching."""

from __future__ import annotations

import os
import shutil
import threading

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.inferers import SliceInferer
from monai.transforms import Compose, CropForegroundd
from scipy import ndimage
from torch import nn

from infnet_monai.inference import infer_volume
from infnet_monai.inferers import slice_inferer
from infnet_monai.runtime import load_network
from infnet_monai.runtime import COMPILE_MIN_SLICES, compile_choice, compile_pays_off, default_precision
from infnet_monai.networks import InfNet
from infnet_monai.runtime.fuse import fold_batchnorm
from infnet_monai.runtime import packaged
from infnet_monai.runtime.optimize import optimize_for_inference
from infnet_monai.runtime.packaged import PackagedNetwork, package_path, packaged_network
from infnet_monai.segment_run import SegmentOptions, segment_volumes
from infnet_monai.transforms.chain import (
    ct_postprocessing,
    ct_preprocessing,
    network_input_batch,
    network_input_transforms,
)
from infnet_monai.data.inputs import estimated_slices
from infnet_monai.transforms.lung import LungRegion, RestrictToLung, dilate_mm
from infnet_monai.utils.prefetch import prefetch_map

from infnet_monai.data.phantoms import affine_for, chest_phantom, save_nifti
from tests.test_inference import IntensityAsLogit
from tests.test_segment_cli import weights  # noqa: F401 - module fixture: calibrated random InfNet


def _random_batchnorm(net: nn.Module) -> nn.Module:
    """Give every BatchNorm non-trivial statistics, so that folding them matters."""
    gen = torch.Generator().manual_seed(1)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=gen) - 0.5)
            m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=gen) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=gen) * 0.4 - 0.2)
    return net.eval()


@pytest.fixture(scope="module")
def infnet():
    torch.manual_seed(0)
    return _random_batchnorm(InfNet())


def _close(a: torch.Tensor, b: torch.Tensor, rel: float = 1e-4) -> bool:
    """Equal within ``rel`` of the output's range (random weights give logits in the hundreds)."""
    return float((a - b).abs().max()) <= rel * float(b.abs().max())


def test_batchnorm_folding_keeps_the_outputs(infnet):
    folded = fold_batchnorm(infnet)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in infnet.modules()) == 157
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())  # every BN follows a conv
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref, out = infnet(x), folded(x)
    assert _close(out, ref)
    assert torch.sigmoid(out).sub(torch.sigmoid(ref)).abs().max() < 1e-4
    assert any(isinstance(m, nn.BatchNorm2d) for m in infnet.modules())  # the original is untouched


def test_fold_handles_named_pairs_and_sequentials():
    """Sequential pairs and convX/bnX siblings are folded; a BN after a non-conv is kept."""

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 1))
            self.bn1 = nn.BatchNorm2d(4)
            self.pool = nn.Sequential(nn.AvgPool2d(1), nn.BatchNorm2d(4))

        def forward(self, x):
            return self.pool(self.bn1(self.conv1(x)))

    block = _random_batchnorm(Block())
    folded = fold_batchnorm(block)
    assert isinstance(folded.bn1, nn.Identity) and isinstance(folded.conv1[1], nn.Identity)
    assert isinstance(folded.pool[1], nn.BatchNorm2d)
    x = torch.randn(3, 2, 8, 8)
    with torch.no_grad():
        assert _close(folded(x), block(x), 1e-5)


def test_optimised_network_matches_eager_and_traced(infnet):
    fast = optimize_for_inference(infnet, "cpu")
    assert not isinstance(fast, torch.jit.ScriptModule)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fast.modules())
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in fast.parameters() if p.ndim == 4)
    x = torch.randn(3, 3, 96, 64)
    with torch.no_grad():
        assert _close(fast(x), infnet(x))
    traced = optimize_for_inference(infnet, "cpu", example_size=64, script=True)
    assert isinstance(traced, torch.jit.ScriptModule) and not list(traced.parameters())
    with torch.no_grad():  # batch and size differ from the traced example
        assert _close(traced(x), infnet(x))


def test_network_input_per_batch_equals_whole_volume():
    x = torch.rand(1, 24, 16, 5)
    volume = Compose(network_input_transforms("image"))({"image": MetaTensor(x.clone())})["image"]
    batch = network_input_batch(x.permute(3, 0, 1, 2).contiguous())
    assert type(batch) is torch.Tensor and batch.shape == (5, 3, 24, 16)
    assert torch.equal(batch, volume.as_tensor().permute(3, 0, 1, 2))
    # channel 0 by hand: (x - 0.485) / 0.229
    np.testing.assert_allclose(batch[2, 0].numpy(), (x[0, :, :, 2].numpy() - 0.485) / 0.229, rtol=1e-6)
    assert network_input_batch(batch) is batch  # network input already
    assert type(network_input_batch(MetaTensor(batch))) is torch.Tensor
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        network_input_batch(torch.zeros(2, 2, 8, 8))


def test_lung_region_keeps_lung_slices_plus_margin():
    lung = np.zeros((1, 20, 18, 30), np.uint8)
    lung[0, 5:9, 4:12, 10:15] = 1  # lung in slices 10-14
    lung[0, 12:14, 2:5, 12] = 2
    spacing = (1.0, 1.0, 2.0)
    mask = MetaTensor(torch.from_numpy(lung), affine=torch.from_numpy(np.diag(spacing + (1.0,))))
    data = {"lung": mask, "image": mask.float()}
    # 5 mm at 2 mm slices: 2 slices either side (a third one lies 6 mm away)
    out = CropForegroundd(keys=["image", "lung"], source_key="lung", select_fn=LungRegion(slice_margin_mm=5.0),
                          margin=(1, 1, 0), allow_smaller=True)(data)
    assert tuple(out["image"].shape) == (1, 11, 12, 9)  # rows 4-14, columns 1-12, slices 8-16
    assert out["lung"].sum() == lung.sum()
    inplane_only = LungRegion(slices=False)(mask)[0]  # lung columns, every slice
    np.testing.assert_array_equal(inplane_only.numpy(), np.broadcast_to(lung[0].any(-1, keepdims=True), lung[0].shape))
    slices_only = LungRegion(inplane=False, slice_margin_mm=0.0)(mask)[0]
    assert slices_only[:, :, 10:15].all() and not slices_only[:, :, 9].any() and not slices_only[:, :, 15].any()
    assert LungRegion()(mask * 0).all()  # no lung found: keep the whole volume (no crop)


def test_restrict_to_lung_equals_brute_force_distance():
    rng = np.random.default_rng(3)
    lung = np.zeros((30, 26, 12), bool)
    lung[8:20, 6:18, 3:8] = True
    mask = (rng.random((1,) + lung.shape) > 0.6).astype(np.uint8)
    spacing = (0.7, 0.9, 2.5)
    affine = torch.from_numpy(np.diag(spacing + (1.0,)))
    out = RestrictToLung(dilation_mm=3.0)(MetaTensor(torch.from_numpy(mask), affine=affine),
                                           MetaTensor(torch.from_numpy(lung[None].astype(np.uint8)), affine=affine))
    # brute force: keep a voxel when some lung voxel centre lies within 3 mm
    idx = np.argwhere(lung) * spacing
    grid = np.indices(lung.shape).reshape(3, -1).T * spacing
    near = np.array([(np.square(idx - p).sum(1) <= 9.0).any() for p in grid]).reshape(lung.shape)
    np.testing.assert_array_equal(out.numpy(), mask * near[None])
    assert out.dtype == torch.uint8 and 0 < out.sum() < mask.sum()
    # a mask inside the lung comes back unchanged
    inside = MetaTensor(torch.from_numpy(lung[None].astype(np.uint8)), affine=affine)
    assert torch.equal(RestrictToLung(3.0)(inside, inside), inside)


@pytest.mark.parametrize("spacing, mm", [((0.8, 0.8, 1.25), 5.0), ((0.84, 0.84, 5.0), 5.0),
                                         ((0.7, 0.9, 2.0), 3.3), ((0.6, 0.6, 0.625), 4.0)])
def test_dilation_equals_the_distance_transform(spacing, mm):
    """The row-decomposed ball dilation sets exactly the voxels within ``mm`` of the mask."""
    rng = np.random.default_rng(0)
    mask = rng.random((40, 36, 30)) > 0.995
    mask[0, 0, 0] = mask[-1, 5, -1] = True  # the ball is clipped at the volume's faces
    expected = ndimage.distance_transform_edt(~mask, sampling=spacing) <= mm
    got = dilate_mm(mask, spacing, mm)
    np.testing.assert_array_equal(got, expected)
    assert got.sum() > 10 * mask.sum()


def _phantom_with_lung_free_slices(path, seed=0):
    """Chest phantom whose lungs occupy 4 of 10 slices (6 mm): 3 body-only slices either side."""
    spacing = (2.4, 2.4, 6.0)
    chest = chest_phantom((120, 128, 4), spacing, seed=seed)
    body = np.where(chest[:, :, :1] > -950, 40.0, -1000.0)
    vol = np.concatenate([np.repeat(body, 3, 2), chest, np.repeat(body, 3, 2)], 2).astype(np.float32)
    return save_nifti(path, vol, affine_for(spacing, "LPS")), vol


def test_slice_crop_gives_the_same_mask_and_skips_slices(tmp_path):
    path, vol = _phantom_with_lung_free_slices(tmp_path / "ct.nii.gz")
    masks = {}
    for crop in (False, True):
        for restrict in (False, True):
            pre = ct_preprocessing(slice_crop=crop, keep_lung_mask=restrict, network_input=crop)
            result = infer_volume(pre({"image": str(path)}), IntensityAsLogit(), slice_inferer(4, "cpu"),
                                  ct_postprocessing(pre, restrict_to_lung=restrict))
            masks[crop, restrict] = result.item["pred"][0].numpy()
            # 6 mm slices, 5 mm margin: only the 4 lung slices are inferred
            assert (result.slices, result.input_slices) == (4 if crop else 10, 10)
            assert result.summary("ct").startswith("ct: 4 of 10 slices inferred" if crop else "ct: 10 slices inferred")
    np.testing.assert_array_equal(masks[True, True], masks[False, True])
    assert 0 < masks[True, True].sum()
    # without the lung restriction the skipped slices are background, the others unchanged
    np.testing.assert_array_equal(masks[True, False][:, :, 3:7], masks[False, False][:, :, 3:7])
    assert masks[False, False][:, :, :3].any() and not masks[True, False][:, :, :3].any()


@pytest.mark.slow
def test_fast_defaults_give_the_masks_of_the_plain_fp32_path(weights, tmp_path):  # noqa: F811
    path, _ = _phantom_with_lung_free_slices(tmp_path / "ct.nii.gz", seed=2)
    plain_pre = ct_preprocessing(slice_crop=False)
    plain = infer_volume(plain_pre({"image": str(path)}), load_network(weights, "cpu", optimize=False),
                         slice_inferer(8, "cpu", precision="fp32"), ct_postprocessing(plain_pre))
    fast_pre = ct_preprocessing(network_input=False)  # the fast chain and network, in fp32 (the default on CPUs without bf16)
    fast = infer_volume(fast_pre({"image": str(path)}), load_network(weights, "cpu"),
                        slice_inferer(device="cpu", precision="fp32"), ct_postprocessing(fast_pre))
    assert (plain.slices, fast.slices) == (10, 4)
    a, b = plain.item["pred"].numpy(), fast.item["pred"].numpy()
    assert 0 < a.sum() < a.size
    np.testing.assert_array_equal(b, a)


def test_prefetch_map_keeps_order_reports_errors_and_runs_one_ahead():
    started, lock = [], threading.Lock()

    def work(i):
        with lock:
            started.append(i)
        if i == 2:
            raise ValueError("bad item 2")
        return i * 10

    seen = []
    for i, result in prefetch_map(work, list(range(5))):
        with lock:
            assert max(started) <= i + 1  # never more than one item ahead
        seen.append((i, str(result) if isinstance(result, Exception) else result))
    assert seen == [(0, 0), (1, 10), (2, "bad item 2"), (3, 30), (4, 40)]
    assert list(prefetch_map(work, [3, 4], enabled=False)) == [(3, 30), (4, 40)]
    assert list(prefetch_map(work, [])) == []


def test_segment_with_and_without_prefetch_writes_the_same_masks(weights, tmp_path):  # noqa: F811
    src = tmp_path / "in"
    src.mkdir()
    for seed in (1, 2):
        _phantom_with_lung_free_slices(src / f"case{seed}.nii.gz", seed=seed)
    (src / "broken.nii.gz").write_bytes(b"not a nifti")
    outputs = {}
    for prefetch in (False, True):
        opts = SegmentOptions(output_dir=tmp_path / str(prefetch), weights=str(weights), device="cpu",
                              prefetch=prefetch, progress=False)
        assert segment_volumes([str(src / "*.nii.gz")], opts) == 1  # the broken file
        outputs[prefetch] = {p.name: np.asarray(nib.load(str(p)).dataobj) for p in opts.output_dir.glob("*_seg.nii.gz")}
    assert sorted(outputs[True]) == ["case1_seg.nii.gz", "case2_seg.nii.gz"]
    for name, mask in outputs[False].items():
        np.testing.assert_array_equal(outputs[True][name], mask)


class _Scale(nn.Module):
    """1x1 convolution summing the channels times ``gain``: logits beyond fp16's range (65504)
    for gain 1e5 on network input of order 1."""

    def __init__(self, gain: float) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 1, 1, bias=False)
        nn.init.constant_(self.conv.weight, gain)

    def forward(self, x):
        return self.conv(x)


def test_precision_defaults_and_reduced_precision_logits():
    from infnet_monai.utils.cpuinfo import native_bf16

    assert slice_inferer(device="cpu").precision == default_precision("cpu") == ("bf16" if native_bf16() else "fp32")
    assert default_precision("cuda") == "fp32"
    with pytest.raises(ValueError, match="precision must be one of"):
        slice_inferer(device="cpu", precision="int8")
    volume = torch.rand(1, 1, 16, 16, 3)
    net = _Scale(1.0).eval()
    with torch.inference_mode():
        full = slice_inferer(2, "cpu", precision="fp32")(volume, net)
        for name in ("bf16", "fp16"):
            reduced = slice_inferer(2, "cpu", precision=name)(volume, net)
            assert reduced.dtype == torch.float32
            # 16-bit operands: close to fp32, but not bit-equal
            torch.testing.assert_close(reduced, full, rtol=1e-2, atol=1e-2)
            assert not torch.equal(reduced, full)


def test_fp16_overflow_falls_back_to_fp32():
    volume = torch.rand(1, 1, 8, 8, 2) + 0.5
    net = _Scale(1e5).eval()
    with torch.inference_mode():
        full = slice_inferer(2, "cpu", precision="fp32")(volume, net)
        with torch.autocast("cpu", dtype=torch.float16):
            assert not torch.isfinite(net(network_input_batch(volume[..., 0]))).all()  # fp16 overflows
        half = slice_inferer(2, "cpu", precision="fp16")(volume, net)
    assert float(full.abs().max()) > 65504
    torch.testing.assert_close(half, full)


class _Maker:
    """``make_network`` for :func:`packaged_network` that counts its calls."""

    def __init__(self, network: nn.Module) -> None:
        self.network, self.calls = network, 0

    def __call__(self) -> nn.Module:
        self.calls += 1
        return self.network


PACKAGE_SIZE = 64  # slice size of the test packages (compiling takes as long as at 352)


@pytest.fixture(scope="module")
def package_weights(infnet, tmp_path_factory):
    """The weights file of ``infnet`` and its package for (2, 3, 64, 64) slices, built once."""
    if not shutil.which("c++") and not shutil.which("g++"):
        pytest.skip("no C++ compiler: compiled packages cannot be built here")
    weights_file = tmp_path_factory.mktemp("package") / "infnet.pt"
    torch.save(infnet.state_dict(), weights_file)
    fast = optimize_for_inference(infnet, "cpu")
    maker = _Maker(fast)
    built = packaged_network(weights_file, maker, 2, PACKAGE_SIZE, build=True)
    assert isinstance(built, PackagedNetwork) and maker.calls == 1  # the network to compile
    assert package_path(weights_file, 2, PACKAGE_SIZE).is_file()
    return weights_file, fast


@pytest.mark.slow
def test_package_matches_the_eager_network_without_loading_it(package_weights):
    weights_file, fast = package_weights
    maker = _Maker(fast)
    net = packaged_network(weights_file, maker, 2, PACKAGE_SIZE, build=False)  # the package built before
    assert isinstance(net, PackagedNetwork) and maker.calls == 0  # the eager network is not even made
    assert list(net.parameters()) == []  # the package holds its weights_file
    x = torch.randn(5, 3, PACKAGE_SIZE, PACKAGE_SIZE)
    with torch.inference_mode():
        ref = fast(x)
        pair, single, split = net(x[:2]), net(x[2:3]), net(x)  # 2, 1 padded to 2, 2 + 2 + 1
        nchw = net(x[:2].contiguous())  # the layout does not matter
    assert maker.calls == 0
    assert pair.shape == (2, 1, PACKAGE_SIZE, PACKAGE_SIZE) and single.shape == (1, 1, PACKAGE_SIZE, PACKAGE_SIZE)
    assert split.shape == (5, 1, PACKAGE_SIZE, PACKAGE_SIZE)
    assert _close(pair, ref[:2]) and _close(single, ref[2:3]) and _close(split, ref) and _close(nchw, ref[:2])
    assert not torch.equal(split, torch.zeros_like(split))
    with torch.no_grad():  # outside inference mode the output is a normal tensor, as the eager one
        plain = net(x[:2])
    assert not plain.is_inference() and _close(plain.add_(0), ref[:2])


def test_package_leaves_other_inputs_to_the_eager_network(package_weights):
    weights_file, fast = package_weights
    maker = _Maker(fast)
    net = packaged_network(weights_file, maker, 2, PACKAGE_SIZE, build=False)
    with torch.inference_mode():
        other_size = torch.randn(1, 3, 96, 96)
        assert _close(net(other_size), fast(other_size))  # not the package's slice size
        assert maker.calls == 1
        with pytest.raises(ValueError, match="divisible by 32"):  # bad input: the network's own error
            net(torch.randn(1, 3, 40, 40))
        x = torch.randn(2, 3, PACKAGE_SIZE, PACKAGE_SIZE)
        with torch.autocast("cpu", dtype=torch.bfloat16):  # reduced precision runs the eager network
            half = net(x)
        assert half.dtype == torch.bfloat16
    assert maker.calls == 1  # made once, then kept


def test_package_is_keyed_by_weights_batch_and_size(package_weights, tmp_path):
    weights_file, fast = package_weights
    path = package_path(weights_file, 2, PACKAGE_SIZE)
    assert path.parent == packaged.package_dir() and path.suffix == ".pt2"
    assert package_path(weights_file, 4, PACKAGE_SIZE) != path and package_path(weights_file, 2, 352) != path
    other = tmp_path / "other.pt"
    state = fast.state_dict()
    state[next(iter(state))] = state[next(iter(state))] + 1
    torch.save(state, other)
    assert package_path(other, 2, PACKAGE_SIZE) != path
    maker = _Maker(fast)
    assert packaged_network(other, maker, 2, PACKAGE_SIZE, build=False) is fast  # none built for them
    assert maker.calls == 1


def test_failed_build_or_load_falls_back_to_the_eager_network(infnet, tmp_path, monkeypatch):
    weights_file = tmp_path / "w.pt"
    torch.save(infnet.state_dict(), weights_file)
    fast = optimize_for_inference(infnet, "cpu")

    def no_compiler(*args, **kwargs):
        raise RuntimeError("C++ compiler not found\ndetails")

    with monkeypatch.context() as m:
        m.setattr(packaged, "build_package", no_compiler)
        with pytest.warns(UserWarning, match=r"building the compiled network failed \(RuntimeError: C\+\+ compiler not found\)"):
            assert packaged_network(weights_file, _Maker(fast), 2, PACKAGE_SIZE, build=True) is fast
    path = package_path(weights_file, 2, PACKAGE_SIZE)
    assert not path.exists()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"not a package")  # with its build record: trusted, but not loadable
    (path.parent / (path.name + ".blake2b")).write_text(packaged._package_digest(path))
    with pytest.warns(UserWarning, match="compiled network could not be loaded.*delete the file to rebuild it"):
        assert packaged_network(weights_file, _Maker(fast), 2, PACKAGE_SIZE, build=False) is fast


def test_load_network_compiles_only_on_the_cpu(weights):  # noqa: F811
    with pytest.raises(ValueError, match="built for the CPU"):
        load_network(weights, "cuda", compile=True)
    with pytest.raises(ValueError, match="built for the CPU"):
        load_network(weights, "cpu", optimize=False, compile=True)
    assert not isinstance(load_network(weights, "cpu"), PackagedNetwork)  # none built: the eager network


def _blank_volume(path, slices: int, slice_axis: int = 2) -> None:
    """int16 NIfTI of 4x4 voxels per slice, ``slices`` axial slices along ``slice_axis``."""
    shape = [4, 4, 4]
    shape[slice_axis] = slices
    spacing = [0.8, 0.8, 0.8]
    spacing[slice_axis] = 5.0
    columns = np.roll(np.eye(3), slice_axis - 2, axis=1)  # world z along the array's slice axis
    affine = np.eye(4)
    affine[:3, :3] = columns * spacing
    nib.save(nib.Nifti1Image(np.zeros(shape, np.int16), affine), str(path))


def test_compile_pays_off_only_for_long_cpu_runs(tmp_path):
    _blank_volume(tmp_path / "a.nii.gz", COMPILE_MIN_SLICES - 600)
    _blank_volume(tmp_path / "b.nii.gz", 600, slice_axis=0)
    assert estimated_slices(tmp_path / "a.nii.gz") == COMPILE_MIN_SLICES - 600
    assert estimated_slices(tmp_path / "b.nii.gz") == 600
    assert estimated_slices(tmp_path / "missing.nii.gz") == 0
    assert not compile_pays_off(tmp_path / "a.nii.gz", "cpu")
    assert compile_pays_off(tmp_path, "cpu")  # the folder: both volumes
    assert compile_pays_off([{"image": str(tmp_path / "a.nii.gz")}, {"image": str(tmp_path / "b.nii.gz")}], "cpu")
    assert not compile_pays_off(tmp_path, "cuda")  # packages are CPU-only
    assert not compile_pays_off(tmp_path / "nothing_here", "cpu")  # bad inputs are reported later
    assert compile_choice(tmp_path, "cpu") is True  # build the package if missing
    assert compile_choice(tmp_path / "a.nii.gz", "cpu") is None  # only use one built before
    assert compile_choice(tmp_path, "cpu", "bf16") is True  # packages run fp32 or bf16
    assert compile_choice(tmp_path, "cpu", "fp16") is False


def test_dicom_series_slices_estimated_from_the_file_count(dicom_series_dir):
    assert estimated_slices(dicom_series_dir) == 64


def test_slice_estimates_are_remembered_until_the_file_changes(tmp_path):
    path = tmp_path / "a.nii.gz"
    _blank_volume(path, 7)
    assert estimated_slices(path) == 7 and estimated_slices(path) == 7
    _blank_volume(path, 9)
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))  # a later modification time
    assert estimated_slices(path) == 9


def test_segment_compiles_only_when_it_pays_off(weights, tmp_path, monkeypatch):  # noqa: F811
    import infnet_monai.segmenter as segmenter

    asked = []

    def recording_load_network(*args, compile=None, **kwargs):
        asked.append(compile)
        return load_network(*args, **kwargs)

    monkeypatch.setattr(segmenter, "load_network", recording_load_network)
    _phantom_with_lung_free_slices(tmp_path / "case.nii.gz", seed=1)
    for choice in (None, False):
        opts = SegmentOptions(output_dir=tmp_path / f"out_{choice}", weights=str(weights), device="cpu",
                              compile=choice, progress=False, precision="fp32")
        assert segment_volumes([str(tmp_path / "case.nii.gz")], opts) == 0
    assert asked == [None, False]  # one short volume: auto builds no package (it uses one built before)
    opts = SegmentOptions(output_dir=tmp_path / "default", weights=str(weights), device="cpu", progress=False)
    assert segment_volumes([str(tmp_path / "case.nii.gz")], opts) == 0
    assert asked[-1] is None  # the default precision too: a package built before, none built for a short run
    opts = SegmentOptions(output_dir=tmp_path / "fp16", weights=str(weights), device="cpu", compile=True,
                          precision="fp16", progress=False)
    with pytest.raises(ValueError, match="runs fp32 or bf16"):
        segment_volumes([str(tmp_path / "case.nii.gz")], opts)


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_segment_builds_the_package_once_and_writes_the_eager_masks(weights, tmp_path, monkeypatch, precision):  # noqa: F811
    if not shutil.which("c++") and not shutil.which("g++"):
        pytest.skip("no C++ compiler: compiled packages cannot be built here")
    from infnet_monai.utils.cpuinfo import native_bf16

    if precision == "bf16" and not native_bf16():
        pytest.skip("bf16 packages are for CPUs with native bf16")
    import infnet_monai.segmenter as segmenter

    monkeypatch.setenv(packaged.CACHE_ENV, str(tmp_path / "cache"))
    path, _ = _phantom_with_lung_free_slices(tmp_path / "case.nii.gz", seed=3)
    loaded = []

    def recording_load_network(*args, **kwargs):
        loaded.append(load_network(*args, **kwargs))
        return loaded[-1]

    monkeypatch.setattr(segmenter, "load_network", recording_load_network)
    masks = {}
    for run, choice in (("eager", False), ("build", True), ("auto", None)):
        opts = SegmentOptions(output_dir=tmp_path / run, weights=str(weights), device="cpu", compile=choice, progress=False,
                              precision=precision)
        assert segment_volumes([str(path)], opts) == 0
        masks[run] = np.asarray(nib.load(str(tmp_path / run / "case_seg.nii.gz")).dataobj)
    assert [type(n).__name__ for n in loaded] == ["InfNet", "PackagedNetwork", "PackagedNetwork"]  # auto: the one built
    assert [n.precision for n in loaded[1:]] == [precision, precision]
    assert len(list((tmp_path / "cache" / "compiled").glob("*.pt2"))) == 1
    assert masks["eager"].sum() > 0
    for run in ("build", "auto"):
        differ = int((masks[run] != masks["eager"]).sum())
        if precision == "fp32":
            assert differ <= 2, f"{run}: {differ} voxels differ from the eager network's mask"
        else:  # bf16 rounds at other points once fused (random weights: many voxels near 0.5)
            dice = 2 * int((masks[run] & masks["eager"]).sum()) / int(masks[run].sum() + masks["eager"].sum())
            assert dice >= 0.99, f"{run}: Dice {dice:.4f} with the eager bf16 network's mask ({differ} voxels differ)"


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_slice_batches_equal_the_sliding_window(precision):
    """The direct slice-batch path of the inferer gives what MONAI's sliding window gives."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 1)).eval()
    affine = torch.diag(torch.tensor([0.8, 0.8, 5.0, 1.0], dtype=torch.float64))
    volume = MetaTensor(torch.rand(1, 1, 32, 32, 7), affine=affine)
    inferer = slice_inferer(3, "cpu", precision=precision)
    inferer.roi_size = inferer.orig_roi_size = (32, 32)
    with torch.inference_mode():
        direct = inferer(volume, net)
        windows = SliceInferer.__call__(inferer, volume, net)  # MONAI's sliding window path
        smaller = inferer(volume[..., :24, :24, :], net)  # not the window size: sliding window (padded)
    assert type(direct) is type(windows) is MetaTensor
    assert direct.shape == windows.shape == (1, 2, 32, 32, 7) and direct.dtype == windows.dtype == torch.float32
    assert torch.equal(direct.as_tensor(), windows.as_tensor())
    assert torch.equal(direct.affine, windows.affine)
    assert smaller.shape == (1, 2, 24, 24, 7)
    with torch.inference_mode():
        expected = net(network_input_batch(volume[0].permute(3, 0, 1, 2).as_tensor()))
    if precision == "fp32":
        torch.testing.assert_close(direct[0].permute(3, 0, 1, 2).as_tensor(), expected)


@pytest.mark.slow
def test_prepare_builds_the_package_segment_then_uses(weights, tmp_path, monkeypatch, capsys):  # noqa: F811
    """``infnet-monai prepare`` builds the package of the default precision once; a later run
    loads it without flags and writes where its time went (``--timings``)."""
    if not shutil.which("c++") and not shutil.which("g++"):
        pytest.skip("no C++ compiler: compiled packages cannot be built here")
    import json

    from infnet_monai.cli import main

    monkeypatch.setenv(packaged.CACHE_ENV, str(tmp_path / "cache"))
    assert main(["prepare", "--weights", str(weights), "--image-size", "64"]) == 0
    line = capsys.readouterr().out.strip()
    (built,) = (tmp_path / "cache" / "compiled").glob("*.pt2")
    assert line.startswith(f"{built}: compiled network ready ({default_precision('cpu')}, 2 slices of 64x64")
    with pytest.raises(SystemExit):  # packages are fp32 or bf16
        main(["prepare", "--weights", str(weights), "--image-size", "64", "--precision", "fp16"])
    path, _ = _phantom_with_lung_free_slices(tmp_path / "case.nii.gz", seed=2)
    timings = tmp_path / "timings.json"
    assert main(["segment", str(path), "-o", str(tmp_path / "o"), "--weights", str(weights), "--image-size", "64",
                 "-q", "--timings", str(timings), "--device", "cpu"]) == 0
    data = json.loads(timings.read_text())
    (volume,) = data["volumes"]
    assert 0 < data["process_to_first_slice_s"] < data["process_to_end_s"]
    assert volume["inferred_slices"] == 4 and volume["slices"] == 10
    assert all(volume[key] > 0 for key in ("read_s", "network_s", "post_s", "write_s"))
    assert len(list((tmp_path / "cache" / "compiled").glob("*.pt2"))) == 1  # used, not built again


def test_a_new_build_removes_the_builds_of_earlier_code_only(tmp_path, monkeypatch):
    """Packages left by an upgrade (same weights, shapes, precision and machine; other code, or
    the naming before weights and code digests were apart) are removed after a build; packages
    of other weights, shapes or precisions stay."""
    monkeypatch.setenv("INFNET_MONAI_CACHE", str(tmp_path / "cache"))
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"weights")
    current = package_path(weights, 2, 256, "bf16")
    name_weights, name_code, rest = current.name.removeprefix("infnet-").split("-", 2)
    folder = current.parent
    folder.mkdir(parents=True)
    earlier = [folder / f"infnet-{name_weights}-0123abcd-{rest}", folder / f"infnet-{'b' * 24}-{rest}"]
    kept = [
        current,
        folder / f"infnet-aaaaaaaaaaaa-{name_code}-{rest}",  # other weights
        package_path(weights, 2, 256, "fp32"),  # other precision
        package_path(weights, 4, 256, "bf16"),  # other batch
        folder / f"infnet-{'c' * 24}-{rest.replace('b2-', 'b4-')}",  # the earlier naming, another batch
    ]
    for path in [*earlier, *kept]:
        path.write_bytes(b"package")
        packaged._digest_path(path).write_text("digest\n")
    assert sorted(packaged.remove_earlier_builds(current)) == sorted(earlier)
    assert not any(path.exists() or packaged._digest_path(path).exists() for path in earlier)
    assert all(path.exists() and packaged._digest_path(path).exists() for path in kept)
