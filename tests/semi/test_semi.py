"""Semi-Inf-Net propagation: groups, pseudo labels, resumable state, bundle configs (CPU, tiny)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser, ConfigWorkflow
from monai.utils import set_determinism
from PIL import Image

from tests.conftest import BUNDLE_DIR
from infnet_monai.cli import main
from infnet_monai.networks import InfNet
from infnet_monai.semi import (
    PropagationSettings,
    PropagationState,
    SemiInfNetPropagation,
    predict_probabilities,
    pseudo_edge,
    random_groups,
    to_pseudo_label,
    write_pseudo_labels,
)
from infnet_monai.semi import propagation as propagation_module
from infnet_monai.transforms.chain import IMAGENET_MEAN, IMAGENET_STD
from infnet_monai.transforms.edge import EdgeTarget

CONFIGS = BUNDLE_DIR / "configs"
SEED = 3
# 4 labelled + 10 unlabelled slices, groups of 4 (4, 4, 2), one 64 px iteration per training
TINY = dict(
    group_size=4, epochs_per_group=1, initial_epochs=1, image_size=64, batch_size=2,
    multiscale_rates=(1.0,), iterations_per_epoch=1,
)  # fmt: skip
N_LABELED, N_UNLABELED = 4, 10


def write_slices(root: Path, names: list[str], labels: bool, size=(72, 56), seed: int = 0) -> Path:
    """COVID-SemiSeg-like folder of non-square (W x H) JPEG slices with bright disc 'lesions'."""
    rng = np.random.default_rng(seed)
    (root / "Imgs").mkdir(parents=True, exist_ok=True)
    if labels:
        (root / "GT").mkdir(parents=True, exist_ok=True)
    width, height = size
    yy, xx = np.mgrid[:height, :width]
    for name in names:
        cy, cx, r = rng.integers(16, height - 16), rng.integers(16, width - 16), rng.integers(6, 12)
        lesion = (yy - cy) ** 2 + (xx - cx) ** 2 < r**2
        image = np.clip(rng.normal(60, 15, (height, width)) + 120 * lesion, 0, 255).astype(np.uint8)
        Image.fromarray(image).save(root / "Imgs" / f"{name}.jpg", quality=95)
        if labels:
            Image.fromarray((lesion * 255).astype(np.uint8)).save(root / "GT" / f"{name}.png")
    return root


@pytest.fixture(scope="module")
def slices(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("slices")
    labeled = write_slices(root / "labeled", [str(i) for i in range(N_LABELED)], labels=True, seed=1)
    unlabeled = write_slices(root / "unlabeled", [f"u{i:02d}" for i in range(N_UNLABELED)], labels=False, seed=2)
    return labeled, unlabeled


class TinyInfNet(torch.nn.Module):
    """A few-thousand-parameter network with Inf-Net's interface, to run the propagation loop in
    seconds: five logit maps (map5, map4, map3, map2, edge) in training mode, map2 in eval mode."""

    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
            torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.ReLU(),
        )  # fmt: skip
        self.heads = torch.nn.Conv2d(8, 5, 1)

    def forward(self, x: torch.Tensor):
        maps = self.heads(self.body(x))
        outputs = tuple(maps[:, i : i + 1] for i in range(5))
        return outputs if self.training else outputs[3]


def tiny_network(seed: int = SEED) -> TinyInfNet:
    set_determinism(seed=seed)  # as the bundle config does before it builds the network
    return TinyInfNet()


@pytest.fixture(scope="module")
def reference(slices, tmp_path_factory) -> tuple[Path, PropagationState]:
    """One uninterrupted run through the library."""
    labeled, unlabeled = slices
    work = tmp_path_factory.mktemp("reference")
    settings = PropagationSettings(**TINY)
    run = SemiInfNetPropagation(labeled, unlabeled, work, settings, seed=SEED, network=tiny_network(), device="cpu")
    return work, run.run()


def read_png(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        assert img.mode == "L", path
        return np.asarray(img)


# ---------------------------------------------------------------- pieces


def test_random_groups_partition_the_names_once():
    names = [f"s{i}" for i in range(11)]
    groups = random_groups(names, 4, seed=7)
    assert [len(g) for g in groups] == [4, 4, 3]  # K, K, remainder
    flat = [n for g in groups for n in g]
    assert sorted(flat) == sorted(names) and len(set(flat)) == len(names)
    assert random_groups(list(reversed(names)), 4, seed=7) == groups  # input order does not matter
    assert random_groups(names, 4, seed=8) != groups
    with pytest.raises(ValueError, match="group_size"):
        random_groups(names, 0, seed=0)


def test_pseudo_label_values_and_edges():
    prob = np.array([[0.25, 0.5], [0.625, 1.0]])
    # min-max: (p - 0.25) / 0.75 = 0, 1/3, 1/2, 1 -> x 255 = 0, 85, 127.5, 255 (half to even: 128)
    assert to_pseudo_label(prob).tolist() == [[0, 85], [128, 255]]
    # p x 255 = 63.75, 127.5, 159.375, 255
    assert to_pseudo_label(prob, normalize=False).tolist() == [[64, 128], [159, 255]]
    assert not to_pseudo_label(np.full((3, 3), 0.7)).any()  # a constant map has no foreground
    label = np.zeros((8, 8), np.uint8)
    label[2:6, 2:6] = 200  # > 127.5: foreground
    edge = pseudo_edge(label)
    # band: the square's 12 border pixels + its 16 outside 4-neighbours, all 255
    assert set(np.unique(edge)) == {0, 255} and (edge == 255).sum() == 12 + 16
    assert edge[3:5, 3:5].max() == 0 and edge[0].max() == 0
    label[2:6, 2:6] = 127  # below the threshold: no foreground, no edge
    assert not pseudo_edge(label).any()


def identity_network() -> torch.nn.Module:
    """1x1 convolution that undoes the ImageNet normalisation of the 3 channels: logit = grey in [0, 1]."""
    conv = torch.nn.Conv2d(3, 1, kernel_size=1)
    std, mean = torch.tensor(IMAGENET_STD), torch.tensor(IMAGENET_MEAN)
    with torch.no_grad():
        conv.weight.copy_((std / 3).view(1, 3, 1, 1))
        conv.bias.copy_(mean.sum().view(1) / 3)
    return conv


def test_predicted_pseudo_label_keeps_the_slice_geometry(tmp_path):
    width, height = 80, 48  # non-square: catches swapped axes
    image = np.zeros((height, width), np.uint8)
    image[8:24, 40:72] = 255  # bright block in the upper right
    write_slices(tmp_path, [], labels=False)
    Image.fromarray(image).save(tmp_path / "Imgs" / "block.png")
    files = [tmp_path / "Imgs" / "block.png"]
    (prob,) = predict_probabilities(identity_network(), files, image_size=64)
    assert prob.shape == (height, width)
    label = to_pseudo_label(prob)
    inner, outer = np.zeros_like(image, bool), np.ones_like(image, bool)
    inner[11:21, 43:69] = True  # 3 px inside the block: exactly the maximum
    outer[5:27, 37:75] = False  # 3 px outside: exactly the minimum
    assert (label[inner] == 255).all() and (label[outer] == 0).all()
    fg, block = label > 127, image > 0
    assert (fg & block).sum() / (fg | block).sum() > 0.9

    items = write_pseudo_labels(tmp_path / "pseudo", files, [label])
    assert Path(items[0]["image"]).read_bytes() == files[0].read_bytes()  # slice copied unchanged
    np.testing.assert_array_equal(read_png(Path(items[0]["label"])), label)
    np.testing.assert_array_equal(read_png(Path(items[0]["edge"])), pseudo_edge(label))
    with pytest.raises(ValueError, match="shape"):
        write_pseudo_labels(tmp_path / "other", files, [label.T.copy()])
    assert not (tmp_path / "other").exists()  # nothing written for a bad label


# ---------------------------------------------------------------- propagation


def test_propagation_groups_grow_the_labelled_set(reference, slices):
    work, state = reference
    unlabeled_names = sorted(p.name for p in (slices[1] / "Imgs").iterdir())
    assert [len(g) for g in state.groups] == [4, 4, 2]
    flat = [n for g in state.groups for n in g]
    assert sorted(flat) == unlabeled_names and len(set(flat)) == N_UNLABELED
    assert state.groups == random_groups(unlabeled_names, 4, SEED)
    assert state.finished and state.groups_done == 3 and state.pseudo_count == N_UNLABELED
    assert [h["group"] for h in state.history] == [-1, 0, 1, 2]
    assert [h["added"] for h in state.history] == [0, 4, 4, 2]
    assert [h["labelled"] for h in state.history] == [4, 8, 12, 14]  # L, then + K per round
    # saved state matches, the final model loads, older group checkpoints are pruned
    assert PropagationState.load(work) == state
    assert state.checkpoint == "model.pt"
    TinyInfNet().load_state_dict(torch.load(work / "model.pt", weights_only=True))
    assert sorted(p.name for p in (work / "checkpoints").iterdir()) == ["initial.pt"]


def test_propagation_writes_pseudo_labels_and_edges(reference, slices):
    work, _ = reference
    pseudo = work / "pseudo"
    stems = sorted(p.stem for p in (slices[1] / "Imgs").iterdir())
    for sub, suffix in (("Imgs", ".jpg"), ("GT", ".png"), ("Edge", ".png")):
        assert sorted(p.name for p in (pseudo / sub).iterdir()) == [s + suffix for s in stems]
    for stem in stems:
        source = slices[1] / "Imgs" / f"{stem}.jpg"
        assert (pseudo / "Imgs" / f"{stem}.jpg").read_bytes() == source.read_bytes()
        gt, edge = read_png(pseudo / "GT" / f"{stem}.png"), read_png(pseudo / "Edge" / f"{stem}.png")
        assert gt.shape == edge.shape == (56, 72)  # the slice's own (H, W)
        assert gt.dtype == np.uint8 and gt.min() == 0 and gt.max() == 255  # min-max normalised
        assert set(np.unique(edge)) <= {0, 255}
        # the edge the training transforms would compute from the label in [0, 1]
        expected = EdgeTarget(threshold=0.5)(gt[None] / 255.0)[0] * 255
        np.testing.assert_array_equal(edge, expected.astype(np.uint8))


def cli_args(labeled: Path, unlabeled: Path, work: Path, *extra: str) -> list[str]:
    return ["semi-propagate", "--labeled", str(labeled), "--unlabeled", str(unlabeled), "--work-dir", str(work),
            "--device", "cpu", "--num-workers", "0", "-q", *extra]  # fmt: skip


def test_interrupted_run_resumes_to_the_same_result(reference, slices, tmp_path, monkeypatch, capsys):
    labeled, unlabeled = slices
    ref_work, ref_state = reference
    work = tmp_path / "work"
    # 1) the bundle config, stopped after one group
    over = {k: list(v) if isinstance(v, tuple) else v for k, v in TINY.items()}
    wf = ConfigWorkflow(
        config_file=str(CONFIGS / "semi_propagation.json"), logging_file=False, workflow_type=None,
        dataset_dir=str(labeled), unlabeled_dir=str(unlabeled), work_dir=str(work), seed=SEED,
        device="cpu", num_workers=0, max_groups=1, network_def={"_target_": f"{__name__}.TinyInfNet"}, **over,
    )  # fmt: skip
    wf.initialize()
    wf.run()
    wf.finalize()
    assert PropagationState.load(work).groups_done == 1
    # 2) the library, killed while training on the second group (its pseudo labels are written)
    calls = []

    def killed(*args, **kwargs):
        calls.append(1)
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(propagation_module, "train_round", killed)
        with pytest.raises(KeyboardInterrupt):
            SemiInfNetPropagation(labeled, unlabeled, work, network=TinyInfNet(), device="cpu", resume=True).run()
    partial = PropagationState.load(work)
    assert calls == [1] and partial.groups_done == 1 and partial.checkpoint == "checkpoints/group_0001.pt"
    assert all((work / "pseudo" / "GT" / Path(n).with_suffix(".png").name).is_file() for n in partial.groups[1])
    # 3) a run in progress is not restarted, nor resumed with other settings
    assert main(cli_args(labeled, unlabeled, work)) == 2
    assert "resume it (--resume)" in capsys.readouterr().err
    assert main(cli_args(labeled, unlabeled, work, "--resume", "--group-size", "3")) == 2
    assert "group_size: 3 != 4" in capsys.readouterr().err
    # 4) resumed with the stored settings (other network weights: they are replaced by the checkpoint)
    state = SemiInfNetPropagation(labeled, unlabeled, work, network=TinyInfNet(), device="cpu", resume=True).run()

    assert state.groups == ref_state.groups and state.finished
    assert state.history == ref_state.history  # same sizes and the same training losses
    for sub in ("Imgs", "GT", "Edge"):
        ref_files = sorted((ref_work / "pseudo" / sub).iterdir())
        assert [p.name for p in ref_files] == sorted(p.name for p in (work / "pseudo" / sub).iterdir())
        for ref in ref_files:
            assert (work / "pseudo" / sub / ref.name).read_bytes() == ref.read_bytes(), ref.name
    ref_model = torch.load(ref_work / "model.pt", weights_only=True)
    model = torch.load(work / "model.pt", weights_only=True)
    assert all(torch.equal(ref_model[k], model[k]) for k in ref_model)


def test_cli_starts_a_run_with_its_settings(slices, tmp_path, capsys):
    labeled, unlabeled = slices
    work = tmp_path / "work"
    args = ["--group-size", "3", "--size", "96", "--scales", "1", "--initial-epochs", "0", "--seed", "5"]
    assert main(cli_args(labeled, unlabeled, work, *args, "--max-groups", "0")) == 0
    assert "0/4 groups, 0 slices" in capsys.readouterr().out
    state = PropagationState.load(work)
    expected = PropagationSettings(group_size=3, image_size=96, multiscale_rates=(1.0,), initial_epochs=0)
    assert state.settings == expected and state.seed == 5 and state.groups_done == 0
    assert [len(g) for g in state.groups] == [3, 3, 3, 1]
    assert state.history == [{"group": -1, "added": 0, "labelled": N_LABELED, "loss": None}]
    # the default network is an Inf-Net (untrained here: no initial epochs)
    InfNet().load_state_dict(torch.load(work / state.checkpoint, weights_only=True))
    assert main(cli_args(labeled, unlabeled, tmp_path / "bad", "--size", "100")) == 2
    assert "multiple of 32" in capsys.readouterr().err


def test_bad_inputs_are_refused(tmp_path):
    labeled = write_slices(tmp_path / "l", ["a", "b"], labels=True)
    unlabeled = write_slices(tmp_path / "u", ["c", "d", "e"], labels=False)

    def propagation(work: Path, unlabeled_dir: Path = unlabeled, **kwargs) -> SemiInfNetPropagation:
        settings = dict(TINY, initial_epochs=0)
        return SemiInfNetPropagation(labeled, unlabeled_dir, work, settings, network=TinyInfNet(), device="cpu", **kwargs)

    with pytest.raises(ValueError, match="both the labelled and the unlabelled folder"):
        propagation(tmp_path / "w0", unlabeled_dir=labeled).run()
    with pytest.raises(FileNotFoundError, match="Imgs"):
        propagation(tmp_path / "w1", unlabeled_dir=tmp_path / "absent").run()
    (tmp_path / "w2" / "pseudo" / "GT").mkdir(parents=True)
    with pytest.raises(FileExistsError, match="choose an empty --work-dir"):
        propagation(tmp_path / "w2").run()
    assert not (tmp_path / "w2" / "state.json").exists()
    state = propagation(tmp_path / "w3").run(max_groups=0)  # state and initial model only
    assert state.groups_done == 0 and (tmp_path / "w3" / "checkpoints" / "initial.pt").is_file()
    write_slices(unlabeled, ["f"], labels=False, seed=9)
    with pytest.raises(ValueError, match="1 new, 0 missing"):
        propagation(tmp_path / "w3", resume=True).run()


# ---------------------------------------------------------------- stage 2 and 3 configs


def semi_train_parser(stage: int) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / "train.json"), str(CONFIGS / "semi_train.json")])
    parser.update({"bundle_root": "/b", "semi_stage": stage})
    return parser


def test_semi_train_stages_resolve_their_folders():
    stage2, stage3 = semi_train_parser(2), semi_train_parser(3)
    assert stage2.get_parsed_content("dataset_dir") == "/workspace/data/covid-semiseg/train/pseudo-label"
    assert stage2.get_parsed_content("ckpt_dir") == "/b/models/semi_pseudo"
    assert stage2.get_parsed_content("pretrained_weights") is None
    assert stage3.get_parsed_content("dataset_dir") == "/workspace/data/covid-semiseg/train/doctor-label"
    assert stage3.get_parsed_content("ckpt_dir") == "/b/models/semi_inf_net"
    assert stage3.get_parsed_content("output_dir") == "/b/eval/semi_inf_net"
    assert stage3.get_parsed_content("pretrained_weights") == "/b/models/semi_pseudo/model.pt"


def semi_train_workflow(tmp_path: Path, folder: Path, stage: int) -> ConfigWorkflow:
    wf = ConfigWorkflow(
        config_file=[str(CONFIGS / "train.json"), str(CONFIGS / "semi_train.json")], logging_file=False,
        bundle_root=str(tmp_path), semi_stage=stage, dataset_dir=str(folder),
        datalist="$infnet_monai.data.semiseg_datalist(@dataset_dir)[:4]", val_fraction=0.25,
        image_size=64, batch_size=3, epochs=1, val_interval=1, ckpt_interval=2, num_workers=0, cache_rate=0.0,
        multiscale_rates=[1.0], device="cpu",
    )  # fmt: skip
    wf.initialize()
    return wf


@pytest.mark.slow
def test_semi_train_stage2_then_stage3_on_real_slices(semiseg_dir, tmp_path):
    stage2 = semi_train_workflow(tmp_path, semiseg_dir / "pseudo-label", stage=2)
    stage2.run()
    stage2.finalize()
    models = tmp_path / "models"
    assert stage2.parser.get_parsed_content("train#trainer").state.iteration == 1  # 3 slices, batch 3
    pseudo_model = torch.load(models / "semi_pseudo" / "model.pt", weights_only=True)

    stage3 = semi_train_workflow(tmp_path, semiseg_dir / "doctor-label", stage=3)
    net = stage3.parser.get_parsed_content("network_def")
    start = {k: v.clone() for k, v in net.state_dict().items()}
    assert all(torch.equal(start[k], pseudo_model[k]) for k in pseudo_model)  # starts from stage 2
    stage3.run()
    stage3.finalize()
    final = torch.load(models / "semi_inf_net" / "model.pt", weights_only=True)
    assert any(not torch.equal(final[k], start[k]) for k in final if final[k].is_floating_point())
    assert sorted(p.name for p in models.iterdir()) == ["semi_inf_net", "semi_pseudo"]
