"""Weight conversion: authors' checkpoints, Res2Net ImageNet checkpoint, CLI convert-weights."""

from __future__ import annotations

import hashlib

import pytest
import torch

from infnet_monai.cli import main
from infnet_monai.networks import (
    CheckpointMismatchError,
    InfNet,
    InfNetUNet,
    Res2Net50,
    load_authors_checkpoint,
    load_res2net_imagenet,
)
from infnet_monai.networks.convert import detect_source

_INV_RULES = [  # ours -> authors', to fabricate authors' checkpoints from a random network
    ("backbone.", "resnet."), ("rfb2.", "rfb2_1."), ("rfb3.", "rfb3_1."), ("rfb4.", "rfb4_1."),
    ("partial_decoder.", "ParDec."),
    ("reverse_attention4.reduce.", "ra4_conv1."), ("reverse_attention4.refine.0.", "ra4_conv2."),
    ("reverse_attention4.refine.1.", "ra4_conv3."), ("reverse_attention4.refine.2.", "ra4_conv4."),
    ("reverse_attention4.predict.", "ra4_conv5."),
    ("reverse_attention3.reduce.", "ra3_conv1."), ("reverse_attention3.refine.0.", "ra3_conv2."),
    ("reverse_attention3.refine.1.", "ra3_conv3."), ("reverse_attention3.predict.", "ra3_conv4."),
    ("reverse_attention2.reduce.", "ra2_conv1."), ("reverse_attention2.refine.0.", "ra2_conv2."),
    ("reverse_attention2.refine.1.", "ra2_conv3."), ("reverse_attention2.predict.", "ra2_conv4."),
    ("edge_attention.reduce.", "edge_conv1."), ("edge_attention.refine.0.", "edge_conv2."),
    ("edge_attention.refine.1.", "edge_conv3."), ("edge_attention.predict.", "edge_conv4."),
]


def _authors_infnet_state(net: InfNet, prefix: str = "module.") -> dict:
    out = {}
    for key, value in net.state_dict().items():
        for ours, theirs in _INV_RULES:
            if key.startswith(ours):
                key = theirs + key[len(ours):]
                break
        out[prefix + key] = value.clone()
    out[prefix + "resnet.fc.weight"] = torch.zeros(1000, 2048)
    out[prefix + "resnet.fc.bias"] = torch.zeros(1000)
    return out


@pytest.fixture(scope="module")
def random_infnet():
    torch.manual_seed(3)
    net = InfNet()
    with torch.no_grad():
        for key, p in net.state_dict().items():
            if key.endswith("running_var"):
                p.copy_(0.5 + torch.rand_like(p))
            elif p.is_floating_point():
                p.copy_(torch.randn_like(p) * 0.05)
    return net.eval()


@pytest.mark.slow
def test_authors_infnet_checkpoint_loads_with_module_prefix(tmp_path, random_infnet):
    path = tmp_path / "Inf-Net-100.pth"
    torch.save(_authors_infnet_state(random_infnet), path)
    loaded = load_authors_checkpoint(InfNet(), path).eval()
    for key, value in random_infnet.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_convert_weights_cli_and_output_loads_strictly(tmp_path, random_infnet):
    src = tmp_path / "Semi-Inf-Net-100.pth"
    torch.save({"state_dict": _authors_infnet_state(random_infnet)}, src)
    dst = tmp_path / "models" / "model.pt"
    assert main(["convert-weights", str(src), str(dst)]) == 0
    state = torch.load(dst, weights_only=True)
    fresh = InfNet()
    fresh.load_state_dict(state, strict=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval()(x), random_infnet(x))
    # existing output is kept unless --overwrite
    before = dst.read_bytes()
    assert main(["convert-weights", str(src), str(dst)]) == 2
    assert dst.read_bytes() == before
    assert main(["convert-weights", str(src), str(dst), "--overwrite"]) == 0


def test_mismatch_lists_missing_and_unexpected_keys(tmp_path, random_infnet, capsys):
    state = _authors_infnet_state(random_infnet, prefix="")
    del state["ParDec.conv5.weight"]
    state["extra_head.weight"] = torch.zeros(3)
    src = tmp_path / "broken.pth"
    torch.save(state, src)
    with pytest.raises(CheckpointMismatchError, match=r"missing keys: partial_decoder\.conv5\.weight.*unexpected keys: extra_head\.weight"):
        load_authors_checkpoint(InfNet(), src)
    assert main(["convert-weights", str(src), str(tmp_path / "out.pt")]) == 2
    err = capsys.readouterr().err
    assert "missing keys" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out.pt").exists()


def test_unet_checkpoint_roundtrip(tmp_path):
    torch.manual_seed(4)
    net = InfNetUNet().eval()
    authors = {}
    for key, value in net.state_dict().items():
        head, rest = key.split(".", 1)
        if head == "inc":
            key = f"inc.double_conv.{rest}"
        elif head.startswith("down"):
            key = f"{head}.maxpool_conv.1.double_conv.{rest.split('.', 1)[1]}"
        elif head.startswith("up"):
            key = f"{head}.conv.double_conv.{rest.split('.', 1)[1]}"
        elif head == "outc":
            key = f"outc.conv.{rest}"
        authors[key] = value
    src = tmp_path / "Inf-Net_UNet-100.pth"
    torch.save(authors, src)
    assert detect_source(authors) == "inf_net_unet"
    loaded = load_authors_checkpoint(InfNetUNet(), src)
    for key, value in net.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_res2net_imagenet_checkpoint_and_hash(tmp_path):
    torch.manual_seed(5)
    backbone = Res2Net50()
    state = dict(backbone.state_dict())
    state["fc.weight"] = torch.zeros(1000, 2048)
    state["fc.bias"] = torch.zeros(1000)
    tmp = tmp_path / "tmp.pth"
    torch.save(state, tmp)
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
    good = tmp_path / f"res2net50_v1b_26w_4s-{digest[:8]}.pth"
    tmp.rename(good)
    net = InfNet(pretrained_backbone=str(good))
    for key, value in backbone.state_dict().items():
        assert torch.equal(net.backbone.state_dict()[key], value)
    bad = tmp_path / "res2net50_v1b_26w_4s-00000000.pth"
    bad.write_bytes(good.read_bytes())
    with pytest.raises(ValueError, match="SHA-256"):
        load_res2net_imagenet(Res2Net50(), bad)


def test_not_a_checkpoint(tmp_path):
    path = tmp_path / "notes.pth"
    path.write_text("hello")
    with pytest.raises(ValueError, match="notes.pth"):
        load_authors_checkpoint(InfNet(), path)
