"""``infnet-monai predict-slices``: 2D slice images in, 8-bit probability maps at their sizes out."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from infnet_monai.cli import main
from infnet_monai.networks import InfNet
from infnet_monai.predict_slices import probability_png


@pytest.fixture()
def weights(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "model.pt"
    torch.save(InfNet().state_dict(), path)
    return path


@pytest.fixture()
def slices(tmp_path):
    folder = tmp_path / "Imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (90, 130), dtype=np.uint8)).save(folder / "a.jpg")
    Image.fromarray(rng.integers(0, 255, (64, 48, 3), dtype=np.uint8)).save(folder / "b.png")
    (folder / "notes.txt").write_text("not a slice")  # not an image suffix: ignored
    return folder


def test_maps_keep_each_image_size_and_are_8_bit(slices, weights, tmp_path, capsys):
    out = tmp_path / "maps"
    assert main(["predict-slices", str(slices), "-o", str(out), "--weights", str(weights), "--image-size", "64"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.png"]
    for name, size in (("a", (90, 130)), ("b", (64, 48))):
        with Image.open(out / f"{name}.png") as img:
            assert img.mode == "L" and (img.height, img.width) == size
            values = np.asarray(img)
        assert values.dtype == np.uint8 and 0 <= values.min() <= values.max() <= 255
    assert "2 maps written" in capsys.readouterr().out

    normalised = tmp_path / "normalised"
    assert main(["predict-slices", str(slices / "a.jpg"), "-o", str(normalised), "--weights", str(weights),
                 "--image-size", "64", "--normalize"]) == 0
    values = np.asarray(Image.open(normalised / "a.png"))
    assert values.min() == 0 and values.max() == 255  # min-max per image, as the authors' script


def test_probability_png_resizes_logits_then_applies_the_sigmoid():
    logits = torch.tensor([[[[-4.0, 4.0], [0.0, 0.0]]]])
    out = probability_png(logits, (2, 4))
    assert out.shape == (2, 4) and out.dtype == np.uint8
    assert out[1].tolist() == [128, 128, 128, 128]  # sigmoid(0) = 0.5
    assert out[0, 0] == round(255 / (1 + np.exp(4.0))) and out[0, -1] == round(255 / (1 + np.exp(-4.0)))
    assert probability_png(torch.zeros(1, 1, 3, 3), (3, 3), normalize=True).max() == 0  # a constant map


def test_a_broken_image_is_a_one_line_error_and_nothing_is_written(slices, weights, tmp_path, capsys):
    (slices / "c.png").write_bytes(b"not a png")
    out = tmp_path / "maps"
    assert main(["predict-slices", str(slices), "-o", str(out), "--weights", str(weights), "--image-size", "64"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "c.png: not a readable image" in err
    assert not out.exists()


def test_existing_maps_are_kept_unless_overwrite(slices, weights, tmp_path, capsys):
    out = tmp_path / "maps"
    out.mkdir()
    (out / "a.png").write_bytes(b"keep me")
    args = ["predict-slices", str(slices), "-o", str(out), "--weights", str(weights), "--image-size", "64"]
    assert main(args) == 2 and "exists" in capsys.readouterr().err
    assert (out / "a.png").read_bytes() == b"keep me" and not (out / "b.png").exists()
    assert main(args + ["--overwrite"]) == 0
    assert Image.open(out / "a.png").size == (130, 90)
