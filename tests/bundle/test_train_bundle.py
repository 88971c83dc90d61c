"""Training engine pieces and the bundle's training configs (CPU, tiny synthetic data)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from ignite.engine import Events
from monai.bundle import ConfigWorkflow
from monai.engines.utils import IterationEvents
from PIL import Image

from tests.bundle_helpers import copy_bundle, write_semiseg_slices
from tests.conftest import BUNDLE_DIR, REPO_ROOT
from infnet_monai.data.phantoms import affine_for, chest_phantom, save_nifti
import infnet_monai.engines as engines
from infnet_monai.engines import (
    AutocastInferer,
    EtaHandler,
    GradientClipHandler,
    MultiScaleSupervisedTrainer,
    latest_checkpoint,
    scaled_size,
    training_precision,
)
from infnet_monai.networks import InfNet, InfNetUNet
from infnet_monai.shipped import network_size
from infnet_monai.transforms.edge import EdgeTarget

CONFIGS = BUNDLE_DIR / "configs"
ENV = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
# small and quick: 64 px slices, two workers-free loaders, every epoch validated and saved
TINY = {"image_size": 64, "batch_size": 2, "num_workers": 0, "val_interval": 1, "cache_rate": 0.0}


def write_multiclass_slices(root: Path, n: int = 3, size: int = 64) -> Path:
    """Multi-class folder: slices, palette GT (1 GGO, 2 consolidation) and the binary Prior."""
    write_semiseg_slices(root, count=n, size=size)
    for i in range(n):
        lesion = np.asarray(Image.open(root / "GT" / f"{i}.png")) > 127
        gt = lesion.astype(np.uint8) + (lesion & (np.arange(size) > size // 2)).astype(np.uint8)
        pal = Image.fromarray(gt, mode="P")
        pal.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * 759)
        pal.save(root / "GT" / f"{i}.png")
        (root / "Prior").mkdir(exist_ok=True)
        Image.fromarray((lesion * 255).astype(np.uint8)).save(root / "Prior" / f"{i}.png")
    return root


def overrides(tmp_path: Path, dataset_dir: Path, **extra) -> dict:
    return {"bundle_root": str(tmp_path / "bundle"), "dataset_dir": str(dataset_dir), **TINY, **extra}


def workflow(configs: list[str], **override) -> ConfigWorkflow:
    wf = ConfigWorkflow(config_file=[str(CONFIGS / c) for c in configs], logging_file=False, **override)
    wf.initialize()
    return wf


def cli_args(over: dict) -> list[str]:
    return [a for k, v in over.items() for a in (f"--{k}", str(v))]


# ---------------------------------------------------------------- engine pieces


def test_scaled_size_rounds_to_multiples_of_32():
    assert [scaled_size((352, 352), r) for r in (0.75, 1.0, 1.25)] == [(256, 256), (352, 352), (448, 448)]
    assert scaled_size((64, 96), 0.75) == (64, 64)  # 48 -> 64 (round half to even), 72 -> 64
    assert scaled_size((40,), 0.1) == (32,)  # never below one multiple


def _linear_trainer(scales, loss_scale=1.0, lr=1.0):
    torch.manual_seed(0)
    net = torch.nn.Conv2d(1, 1, 3, padding=1)
    opt = torch.optim.SGD(net.parameters(), lr=lr)
    data = [{"image": torch.rand(2, 1, 352, 352), "label": torch.rand(2, 1, 352, 352)}]
    trainer = MultiScaleSupervisedTrainer(
        device=torch.device("cpu"), max_epochs=1, train_data_loader=data, network=net, optimizer=opt,
        loss_function=lambda p, t: loss_scale * torch.nn.functional.mse_loss(p, t), scales=scales,
    )
    return trainer, net


def test_multiscale_trainer_steps_once_per_scale():
    trainer, net = _linear_trainer((0.75, 1.0, 1.25))
    sizes, losses, steps = [], [], []
    net.register_forward_hook(lambda m, i, o: sizes.append(tuple(i[0].shape[2:])))
    trainer.optimizer.register_step_post_hook(lambda *_: steps.append(1))
    trainer.add_event_handler(IterationEvents.LOSS_COMPLETED, lambda e: losses.append(e.state.output["loss"].item()))
    trainer.run()
    assert sizes == [(256, 256), (352, 352), (448, 448)]
    assert len(steps) == 3  # one optimiser step per scale
    out = trainer.state.output
    assert out[0]["loss"].item() == pytest.approx(np.mean(losses), rel=1e-6)  # reported loss: mean over scales
    assert out[0]["image"].shape[-1] == 448


def test_gradient_clip_handler_clamps_every_step():
    trainer, net = _linear_trainer((1.0,), loss_scale=1e4, lr=1.0)
    GradientClipHandler(clip_value=0.5).attach(trainer)
    before = [p.detach().clone() for p in net.parameters()]
    trainer.run()
    steps = [(b - p.detach()).abs() for b, p in zip(before, net.parameters())]
    # SGD with lr 1: each update equals the clipped gradient; a 1e4-scaled loss saturates the clip
    assert all(torch.allclose(s, torch.full_like(s, 0.5)) for s in steps)
    with pytest.raises(ValueError, match="exactly one"):
        GradientClipHandler(clip_value=None)


def test_latest_checkpoint_picks_highest_epoch(tmp_path):
    assert latest_checkpoint(tmp_path / "absent") is None
    assert latest_checkpoint(tmp_path) is None
    for name in ["checkpoint_epoch=2.pt", "checkpoint_epoch=10.pt", "model.pt", "checkpoint_final.pt"]:
        (tmp_path / name).touch()
    assert latest_checkpoint(tmp_path) == str(tmp_path / "checkpoint_epoch=10.pt")


# ---------------------------------------------------------------- bundle configs


def test_training_precision_is_bf16_only_on_cpus_with_native_bf16(monkeypatch):
    monkeypatch.setattr(engines, "native_bf16", lambda: True)
    assert training_precision("cpu") == "bf16" and training_precision("cuda") == "fp32"
    assert training_precision("cpu", "fp32") == "fp32"  # the config switch
    monkeypatch.setattr(engines, "native_bf16", lambda: False)
    assert training_precision("cpu") == "fp32"
    with pytest.raises(ValueError, match="precision"):
        training_precision("cpu", "int8")


def test_autocast_inferer_runs_the_forward_in_bf16_and_returns_float32():
    seen = {}

    class Probe(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 1, 3, padding=1)

        def forward(self, x):
            seen["channels_last"] = x.is_contiguous(memory_format=torch.channels_last)
            out = self.conv(x)
            seen["dtype"] = out.dtype
            return out, out * 2

    x = torch.randn(2, 3, 16, 16)
    net = Probe()
    outs = AutocastInferer("bf16", channels_last=True)(x, net)
    assert seen == {"channels_last": True, "dtype": torch.bfloat16}
    assert isinstance(outs, tuple) and all(o.dtype == torch.float32 for o in outs)
    reference = net.conv(x)
    assert (outs[0] - reference).abs().max() < 0.05 * reference.abs().max()  # bf16 rounding only
    torch.testing.assert_close(AutocastInferer("fp32")(x, net)[0], reference)
    assert seen["dtype"] == torch.float32


def test_eta_handler_logs_epochs_left(caplog):
    from ignite.engine import Engine

    engine = Engine(lambda e, b: None)
    EtaHandler().attach(engine)
    with caplog.at_level("INFO", logger="infnet_monai.train"):
        engine.run([0], max_epochs=3)
    lines = [r.getMessage() for r in caplog.records if r.name == "infnet_monai.train"]
    assert len(lines) == 3 and lines[0].startswith("epoch 1/3,") and "h left (ETA " in lines[0]
    assert lines[-1].startswith("epoch 3/3,") and " 0.0 h left" in lines[-1]


def write_shipped_data(root: Path) -> Path:
    """The shipped recipe's data layout: doctor-label (10 slices) and pseudo-label (4 slices)."""
    write_semiseg_slices(root / "doctor-label", count=10, size=64, seed=1)
    write_semiseg_slices(root / "pseudo-label", count=4, size=64, seed=2)
    return root


def shipped_overrides(tmp_path: Path, data: Path, **extra) -> dict:
    return {
        "bundle_root": str(tmp_path / "bundle"), "data_root": str(data), "ckpt_dir": str(tmp_path / "run"),
        "device": "cpu",
        "image_size": 64, "batch_size": 4, "cache_rate": 0.0, **extra,
    }


@pytest.mark.slow
def test_shipped_recipe_trains_fine_tunes_and_writes_fp16_weights(tmp_path):
    data = write_shipped_data(tmp_path / "data")
    copy_bundle(tmp_path / "bundle")
    wf = workflow(["train.json", "train_shipped.json"], epochs=2, **{"finetune#epochs": 1}, **shipped_overrides(tmp_path, data))
    train_list = wf.parser.get_parsed_content("train#datalist")
    val_list = wf.parser.get_parsed_content("validate#datalist")
    assert len(val_list) == 2 and len(train_list) == 8 + 4  # 20 % of the doctor labels held out
    assert not {d["image"] for d in val_list} & {d["image"] for d in train_list}
    assert sum("pseudo-label" in d["image"] for d in train_list) == 4
    assert {d["image"] for d in wf.parser.get_parsed_content("finetune#datalist")} <= {d["image"] for d in train_list}
    trainer = wf.parser.get_parsed_content("train#trainer")
    assert wf.parser.get_parsed_content("augment") == "ct" and trainer.scales == (1.0,)
    wf.run()
    wf.finalize()
    assert trainer.state.iteration == 2 * 3  # 12 slices, batch 4, 2 epochs
    scheduler = wf.parser.get_parsed_content("lr_scheduler")
    assert scheduler.get_last_lr()[0] == pytest.approx(0.0, abs=1e-12)  # cosine decayed to the end
    shipped = torch.load(tmp_path / "bundle" / "models" / "model.pt", weights_only=True)
    dtypes = {k: v.dtype for k, v in shipped.items()}
    assert dtypes["backbone.conv1.0.weight"] == torch.float16
    assert all(dtypes[k] == torch.float32 for k in dtypes if k.endswith(("running_mean", "running_var")))
    InfNet().load_state_dict(shipped)  # loads into the fp32 network as it is
    assert network_size(tmp_path / "bundle" / "models" / "model.pt") == 64  # the size it was trained at
    assert (tmp_path / "run" / "model.pt").is_file() and (tmp_path / "run" / "finetune" / "model.pt").is_file()


@pytest.mark.slow
def test_shipped_recipe_resumes_from_the_last_epoch(tmp_path):
    data = write_shipped_data(tmp_path / "data")
    copy_bundle(tmp_path / "bundle")
    over = shipped_overrides(tmp_path, data, **{"finetune#epochs": 1})
    first = workflow(["train.json", "train_shipped.json"], epochs=3, **over)
    trainer = first.parser.get_parsed_content("train#trainer")
    trainer.add_event_handler(Events.EPOCH_COMPLETED(once=1), lambda e: e.terminate())  # a kill after epoch 1
    first.parser.get_parsed_content("train#trainer").run()
    assert latest_checkpoint(tmp_path / "run").endswith("checkpoint_epoch=1.pt")
    lr_after_one = first.parser.get_parsed_content("optimizer").param_groups[0]["lr"]

    second = workflow(["train.json", "train_shipped.json"], epochs=3, **over)
    trainer = second.parser.get_parsed_content("train#trainer")
    started = []
    trainer.add_event_handler(Events.EPOCH_STARTED, lambda e: started.append((e.state.epoch, e.state.iteration)))
    lrs = []
    trainer.add_event_handler(Events.ITERATION_STARTED(once=4), lambda e: lrs.append(e.optimizer.param_groups[0]["lr"]))
    second.run()
    assert started == [(2, 3), (3, 6)]  # continues at iteration 3 of 9
    assert lrs == [pytest.approx(lr_after_one)]  # the cosine schedule continues where it stopped


@pytest.mark.slow
def test_train_config_runs_from_command_line(tmp_path):
    data = write_semiseg_slices(tmp_path / "data", count=5, size=64)
    over = overrides(tmp_path, data, epochs=1, val_fraction=0.2, device="cpu")
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(CONFIGS / "train.json")]
    proc = subprocess.run(cmd + cli_args(over), cwd=BUNDLE_DIR, env=ENV, capture_output=True, encoding="utf-8", errors="replace", timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    models = tmp_path / "bundle" / "models"
    state = torch.load(models / "model.pt", weights_only=True)
    InfNet().load_state_dict(state)  # the best model is a plain state dict of the network
    ckpt = torch.load(models / "checkpoint_epoch=1.pt", weights_only=True)
    assert set(ckpt) == {"network", "optimizer", "lr_scheduler", "trainer", "best_model_saver"}
    assert ckpt["trainer"]["epoch_length"] == 2 and ckpt["trainer"]["iteration"] == 2  # 4 slices, batch 2: epoch 1
    assert list((tmp_path / "bundle" / "eval").glob("events.out.tfevents.*"))
    assert "val_mean_dice" in proc.stderr + proc.stdout


@pytest.mark.slow
def test_resumed_run_continues_from_saved_epoch(tmp_path):
    data = write_semiseg_slices(tmp_path / "data", count=3, size=64)
    over = overrides(tmp_path, data, val_fraction=0.34, lr_decay_epochs=1, multiscale_rates=[1.0])
    first = workflow(["train.json"], epochs=1, **over)
    first.run()
    first.finalize()
    assert latest_checkpoint(tmp_path / "bundle" / "models").endswith("checkpoint_epoch=1.pt")

    second = workflow(["train.json"], epochs=3, **over)
    trainer = second.parser.get_parsed_content("train#trainer")
    started = []
    trainer.add_event_handler(Events.EPOCH_STARTED, lambda e: started.append(e.state.epoch))
    second.run()
    second.finalize()
    assert started == [2, 3]  # epoch 1 came from the checkpoint
    assert trainer.state.iteration == 3  # one iteration per epoch (2 slices, batch 2)
    lr = second.parser.get_parsed_content("optimizer").param_groups[0]["lr"]
    assert lr == pytest.approx(1e-4 * 0.1**3)  # step decay restored and continued: 3 epochs
    assert latest_checkpoint(tmp_path / "bundle" / "models").endswith("checkpoint_epoch=3.pt")


def test_multiclass_config_trains_unet_on_image_and_prior(tmp_path):
    data = write_multiclass_slices(tmp_path / "data", n=3)
    wf = workflow(["train.json", "train_multiclass.json"], epochs=1, val_fraction=0.34, **overrides(tmp_path, data))
    batch = next(iter(wf.parser.get_parsed_content("train#dataloader")))
    assert batch["image"].shape == (2, 6, 64, 64) and set(batch["label"].unique().tolist()) <= {0.0, 1.0, 2.0}
    wf.run()
    wf.finalize()
    evaluator = wf.parser.get_parsed_content("validate#evaluator")
    assert 0.0 <= evaluator.state.metrics["val_mean_dice"] <= 1.0
    InfNetUNet(6, 3).load_state_dict(torch.load(tmp_path / "bundle" / "models" / "multiclass" / "model.pt"))


def write_volumes(root: Path, n: int = 2) -> Path:
    """Synthetic chest CT phantoms (HU) 96x96x12 with label 1 on the lesion."""
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir(parents=True)
    affine = affine_for((3.0, 3.0, 6.0))
    for i in range(n):
        vol = chest_phantom(shape=(96, 96, 12), seed=i)
        save_nifti(root / "imagesTr" / f"case{i}.nii.gz", vol, affine)
        save_nifti(root / "labelsTr" / f"case{i}.nii.gz", (vol == -300).astype(np.uint8), affine)
    return root


@pytest.mark.slow
def test_nifti_config_samples_slices_and_validates_volumes(tmp_path):
    data = write_volumes(tmp_path / "vols")
    over = overrides(tmp_path, data, batch_size=4, slices_per_volume=2, val_fraction=0.5, multiscale_rates=[1.0])
    wf = workflow(["train.json", "train_nifti.json"], epochs=1, **over)
    batch = next(iter(wf.parser.get_parsed_content("train#dataloader")))
    assert batch["image"].shape == (2, 3, 64, 64) and batch["label"].shape == (2, 2, 64, 64)
    mask, edge = batch["label"][:, :1], batch["label"][:, 1:]
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(edge, torch.stack([EdgeTarget()(m) for m in mask]))  # edge target at network size
    wf.run()
    wf.finalize()
    assert (tmp_path / "bundle" / "models" / "model.pt").exists()


@pytest.mark.slow
def test_multi_gpu_config_runs_with_torchrun_on_gloo(tmp_path):
    data = write_semiseg_slices(tmp_path / "data", count=6, size=64)
    over = overrides(tmp_path, data, epochs=1, val_fraction=0.34, multiscale_rates=[1.0])
    configs = f"['{CONFIGS / 'train.json'}', '{CONFIGS / 'multi_gpu_train.json'}']"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "-m", "monai.bundle", "run"]
    cmd += ["--config_file", configs] + cli_args(over)
    proc = subprocess.run(cmd, cwd=BUNDLE_DIR, env=ENV, capture_output=True, encoding="utf-8", errors="replace", timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = torch.load(tmp_path / "bundle" / "models" / "checkpoint_epoch=1.pt", weights_only=True)
    # 4 training slices split over 2 ranks, batch 2 per rank: one iteration each
    assert ckpt["trainer"]["iteration"] == 1
    InfNet().load_state_dict(ckpt["network"])  # saved unwrapped (no DistributedDataParallel prefix)


@pytest.mark.slow
def test_overfits_four_real_slices(tmp_path, semiseg_dir):
    """Learning is real: InfNet (random init) fits 4 doctor-labelled slices at 128 px, Dice > 0.8.

    Measured (seed 0, lr 1e-3, one 4-slice batch per epoch): eval-mode Dice 0.52 after 5 epochs,
    0.71 after 25, 0.815 after 40 (about 0.5 s per iteration on 2 idle CPU cores).
    """
    subset = "$infnet_monai.data.semiseg_datalist(@dataset_dir)[:4]"
    over = overrides(tmp_path, semiseg_dir / "doctor-label", image_size=128, batch_size=4, val_interval=5)
    wf = workflow(
        ["train.json"], datalist=subset, split="$(@datalist, @datalist)", epochs=60, learning_rate=1e-3,
        multiscale_rates=[1.0], ckpt_interval=0, **over,
    )
    trainer = wf.parser.get_parsed_content("train#trainer")
    evaluator = wf.parser.get_parsed_content("validate#evaluator")
    evaluator.add_event_handler(
        Events.COMPLETED, lambda e: trainer.terminate() if e.state.metrics["val_mean_dice"] > 0.8 else None
    )
    wf.run()
    wf.finalize()
    assert evaluator.state.best_metric > 0.8, f"best Dice {evaluator.state.best_metric} after {trainer.state.epoch} epochs"
