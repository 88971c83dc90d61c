"""Inf-Net family: parity with the authors' outputs, shapes, parameters, training, TorchScript."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from infnet_monai.networks import InfNet, InfNetUNet, Res2Net50, get_network
from infnet_monai.networks.complexity import count_macs
from infnet_monai.networks.convert import infnet_keys_from_authors, unet_keys_from_authors


def _reference(parity_file):
    spec = importlib.util.spec_from_file_location("reference_weights", parity_file.with_name("reference_weights.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return torch.load(parity_file, weights_only=False), module.reference_state_dict


@pytest.fixture(scope="module")
def reference(parity_file):
    return _reference(parity_file)


def test_infnet_parity_with_authors_outputs(reference):
    fixture, rebuild = reference
    case = fixture["inf_net"]
    authors_state = rebuild(case["spec"], case["seed"])
    assert "resnet.fc.weight" in authors_state  # the authors' unused classifier is in the file
    net = InfNet().eval()
    net.load_state_dict(infnet_keys_from_authors(authors_state), strict=True)
    with torch.no_grad():
        ours = net(case["input"], return_all=True)
    assert len(ours) == 5
    for name, mine, theirs in zip(("map5", "map4", "map3", "map2", "edge"), ours, case["outputs"]):
        torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-3, msg=lambda m: f"{name}: {m}")
    with torch.no_grad():
        final = net(case["input"])
    torch.testing.assert_close(final, case["outputs"][3], rtol=1e-4, atol=1e-3)


def test_unet_parity_with_authors_outputs(reference):
    fixture, rebuild = reference
    case = fixture["inf_net_unet"]
    net = InfNetUNet(in_channels=6, out_channels=3).eval()
    net.load_state_dict(unet_keys_from_authors(rebuild(case["spec"], case["seed"])), strict=True)
    with torch.no_grad():
        out = net(case["input"])
    torch.testing.assert_close(out, case["outputs"][0], rtol=1e-4, atol=1e-3)


def test_parameter_count_and_macs():
    net = InfNet()
    assert sum(p.numel() for p in net.parameters()) == 31_072_721
    macs = count_macs(net, (1, 3, 352, 352))
    assert macs == 13_843_298_304  # 13.84 G per 352x352 slice: convolutions only (no linear layers)
    assert sum(p.numel() for p in InfNetUNet().parameters()) == 17_269_251


def test_backbone_stage_shapes():
    feats = Res2Net50().eval()(torch.zeros(1, 3, 64, 96))
    assert [tuple(f.shape) for f in feats] == [(1, 256, 16, 24), (1, 512, 8, 12), (1, 1024, 4, 6), (1, 2048, 2, 3)]


def test_modes_shapes_and_one_channel_input():
    torch.manual_seed(0)
    net = InfNet().eval()
    x = torch.randn(2, 1, 64, 96)
    with torch.no_grad():
        out = net(x)
        out3 = net(x.repeat(1, 3, 1, 1))
        all_maps = net(x, return_all=True)
    assert out.shape == (2, 1, 64, 96)
    torch.testing.assert_close(out, out3)
    assert [tuple(m.shape) for m in all_maps] == [(2, 1, 64, 96)] * 5
    net.train()
    assert isinstance(net(torch.randn(2, 3, 64, 64)), tuple)


@pytest.mark.parametrize(
    "shape, match",
    [((1, 3, 60, 64), "divisible by 32"), ((1, 2, 64, 64), r"1 or 3"), ((3, 64, 64), r"1 or 3")],
)
def test_bad_input_raises(shape, match):
    with pytest.raises(ValueError, match=match):
        InfNet().eval()(torch.zeros(*shape))


def test_training_step_all_outputs_finite_gradients():
    torch.manual_seed(0)
    net = InfNet().train()
    x = torch.randn(2, 3, 64, 64)
    target = (torch.rand(2, 1, 64, 64) > 0.5).float()
    outputs = net(x)
    loss = sum(torch.nn.functional.binary_cross_entropy_with_logits(o, target) for o in outputs)
    loss.backward()
    grads = {n: p.grad for n, p in net.named_parameters()}
    assert all(g is not None for g in grads.values()), [n for n, g in grads.items() if g is None]
    assert all(torch.isfinite(g).all() for g in grads.values())
    # every output head received gradient
    for head in ("partial_decoder.conv5", "reverse_attention4.predict", "reverse_attention3.predict",
                 "reverse_attention2.predict", "edge_attention.predict"):
        assert any(grads[n].abs().sum() > 0 for n in grads if n.startswith(head))


@pytest.mark.slow
def test_torchscript_matches_eager():
    torch.manual_seed(0)
    net = InfNet().eval()
    x = torch.randn(1, 3, 64, 64)
    scripted = torch.jit.script(net)
    traced = torch.jit.trace(net, x)
    with torch.no_grad():
        eager = net(x)
        torch.testing.assert_close(scripted(x), eager, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(traced(x), eager, rtol=1e-5, atol=1e-5)
        all_scripted = scripted(x, True)
    assert len(all_scripted) == 5


def test_registry():
    assert isinstance(get_network("inf_net"), InfNet)
    unet = get_network("inf_net_unet", in_channels=6, out_channels=3)
    assert unet(torch.zeros(1, 6, 32, 32)).shape == (1, 3, 32, 32)
    with pytest.raises(ValueError, match="registered"):
        get_network("nope")
