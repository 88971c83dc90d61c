"""Shared by the bundle tests: bundle paths, well-scaled random Inf-Net weights, the MONAI bundle CLI
(in a subprocess, or in-process through the same ``fire`` entry point for speed)."""

from __future__ import annotations

import math
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Sequence

import fire
import numpy as np
import torch
from monai.bundle import ckpt_export, onnx_export, run, verify_metadata, verify_net_in_out
from PIL import Image

from infnet_monai.networks import InfNet
from infnet_monai.transforms.chain import IMAGENET_MEAN, IMAGENET_STD

from tests.conftest import BUNDLE_DIR, REPO_ROOT

__all__ = [
    "CONFIGS_DIR",
    "META_FILE",
    "INFERENCE_FILE",
    "EVALUATE_FILE",
    "TRAIN_FILE",
    "README_FILE",
    "readme_commands",
    "network_like_input",
    "random_infnet",
    "save_random_weights",
    "shared_random_weights",
    "write_semiseg_slices",
    "copy_bundle",
    "run_bundle_subprocess",
    "run_bundle_cli",
]

CONFIGS_DIR = BUNDLE_DIR / "configs"
META_FILE = CONFIGS_DIR / "metadata.json"
INFERENCE_FILE = CONFIGS_DIR / "inference.json"
EVALUATE_FILE = CONFIGS_DIR / "evaluate.json"
TRAIN_FILE = CONFIGS_DIR / "train.json"
README_FILE = BUNDLE_DIR / "docs" / "README.md"
_README_MARK = "-m monai.bundle "

# the commands of ``python -m monai.bundle`` that the tests drive in-process
_CLI_COMMANDS = {
    "ckpt_export": ckpt_export,
    "onnx_export": onnx_export,
    "run": run,
    "verify_metadata": verify_metadata,
    "verify_net_in_out": verify_net_in_out,
}


def network_like_input(batch: int, size: int, seed: int = 0) -> torch.Tensor:
    """Random ``(batch, 3, size, size)`` slices in the network's input range: a [0, 1] grey slice
    repeated to 3 channels and ImageNet-normalised, as the preprocessing makes them."""
    grey = torch.rand(batch, 1, size, size, generator=torch.Generator().manual_seed(seed)).expand(-1, 3, -1, -1)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (grey - mean) / std


def random_infnet(seed: int = 0) -> InfNet:
    """InfNet in eval mode with deterministic, well-scaled random weights.

    Kernels ~ N(0, 1/fan_in), norm scales 1 + 0.1 N(0, 1), biases 0.05 N(0, 1), running means
    0.1 N(0, 1), running variances 0.5 + U(0, 1), drawn in state-dict order from one generator.
    Activations then stay of order 1 and the final logits of order 1-10 (PyTorch's default
    initialisation with unit batch-norm statistics gives logits of ~1e3 and amplifies float32
    rounding differences between runtimes to ~1e-2, which would make a 1e-4 comparison meaningless).
    """
    generator = torch.Generator().manual_seed(seed)
    net = InfNet()
    state = {}
    for name, value in net.state_dict().items():
        if name.endswith("num_batches_tracked"):
            state[name] = torch.zeros_like(value)
        elif name.endswith("running_var"):
            state[name] = 0.5 + torch.rand(value.shape, generator=generator)
        elif name.endswith("running_mean"):
            state[name] = 0.1 * torch.randn(value.shape, generator=generator)
        elif name.endswith("bias"):
            state[name] = 0.05 * torch.randn(value.shape, generator=generator)
        elif value.dim() == 1:
            state[name] = 1.0 + 0.1 * torch.randn(value.shape, generator=generator)
        else:
            fan_in = math.prod(value.shape[1:])
            state[name] = torch.randn(value.shape, generator=generator) / math.sqrt(fan_in)
    net.load_state_dict(state)
    return net.eval()


def save_random_weights(path: str | os.PathLike, seed: int = 0) -> Path:
    """Write :func:`random_infnet`'s state dict (a plain ``model.pt`` as the bundle expects)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(random_infnet(seed).state_dict(), path)
    return path


_SESSION_WEIGHTS: dict[int, Path] = {}


def shared_random_weights(tmp_path_factory) -> Path:
    """One :func:`random_infnet` ``model.pt`` per test session (pass pytest's ``tmp_path_factory``)."""
    key = id(tmp_path_factory)
    if key not in _SESSION_WEIGHTS:
        _SESSION_WEIGHTS[key] = save_random_weights(tmp_path_factory.mktemp("random_weights") / "model.pt")
    return _SESSION_WEIGHTS[key]


def write_semiseg_slices(root: str | os.PathLike, count: int = 4, size: int = 40, seed: int = 0) -> Path:
    """A COVID-SemiSeg-style folder (``Imgs/<i>.jpg`` grey slices, ``GT/<i>.png`` and
    ``Edge/<i>.png`` masks in {0, 255}): a bright disc "lesion" of random centre on noise."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    for sub in ("Imgs", "GT", "Edge"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[:size, :size]
    for i in range(count):
        cy, cx = rng.integers(size // 4, 3 * size // 4, 2)
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= (size // 6) ** 2
        ring = disc & ~((yy - cy) ** 2 + (xx - cx) ** 2 <= (size // 6 - 1) ** 2)
        grey = np.clip(rng.normal(60, 20, (size, size)) + 120 * disc, 0, 255).astype(np.uint8)
        Image.fromarray(grey).save(root / "Imgs" / f"{i}.jpg")
        Image.fromarray((disc * 255).astype(np.uint8)).save(root / "GT" / f"{i}.png")
        Image.fromarray((ring * 255).astype(np.uint8)).save(root / "Edge" / f"{i}.png")
    return root


def copy_bundle(destination: str | os.PathLike) -> Path:
    """Copy the bundle folder (configs, docs, licence; no weights) to ``destination``."""
    return Path(
        shutil.copytree(BUNDLE_DIR, destination, ignore=shutil.ignore_patterns("*.pt", "*.ts", "*.onnx", "eval"))
    )


def readme_commands(command: str | None = None) -> list[list[str]]:
    """The ``... -m monai.bundle ...`` command lines (python or torchrun) of the bundle's
    ``docs/README.md`` as argument lists after ``monai.bundle``, optionally of one ``command``."""
    found = []
    for line in README_FILE.read_text().splitlines():
        if _README_MARK in line:
            argv = shlex.split(line.split(_README_MARK, 1)[1])
            if command is None or argv[0] == command:
                found.append(argv)
    return found


def run_bundle_subprocess(args: Sequence[str], cwd: str | os.PathLike, timeout: float = 600) -> subprocess.CompletedProcess:
    """``python -m monai.bundle ARGS`` in ``cwd`` with only the package importable (PYTHONPATH =
    repository root), two CPU threads."""
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), OMP_NUM_THREADS="2")
    return subprocess.run(
        [sys.executable, "-m", "monai.bundle", *args], cwd=cwd, env=env, capture_output=True, encoding="utf-8", errors="replace", timeout=timeout
    )


def run_bundle_cli(argv: Sequence[str]):
    """``python -m monai.bundle ARGV`` in this process: the same ``fire`` parsing of the same
    functions, without a new interpreter (paths relative to the current directory)."""
    if argv[0] not in _CLI_COMMANDS:
        raise ValueError(f"unsupported monai.bundle command {argv[0]!r}; known: {sorted(_CLI_COMMANDS)}")
    return fire.Fire(_CLI_COMMANDS, command=list(argv))

