"""On-disk state of a Semi-Inf-Net propagation: settings, random group order, progress, checkpoint.

A work directory holds ``state.json`` (this module), the current network checkpoint and the
pseudo-labelled slices. Everything that decides the result (seed, settings, group order) is in
the state, so an interrupted run resumes to the same final files.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from infnet_monai.utils import atomic_output

__all__ = ["STATE_FILE", "PropagationSettings", "PropagationState", "random_groups"]

STATE_FILE = "state.json"
_STATE_VERSION = 1


@dataclass(frozen=True)
class PropagationSettings:
    """Training settings of the propagation; a resumed run must use the same ones.

    The defaults follow the authors' propagation: a fresh Adam optimiser per group (lr 3e-4),
    10 epochs per group (their loop runs 9 of its 10), batches of 16 at 352x352 px, every batch
    at 0.75/1/1.25 times that size, gradient values clipped to 0.5, lr x 0.1 every 50 epochs.

    Args:
        group_size: K, unlabelled slices added per round (5 in the paper).
        epochs_per_group: fine-tuning epochs after each group is added.
        initial_epochs: epochs on the labelled set alone when no initial weights are given.
        image_size: training and prediction size S (pixels, multiple of 32).
        batch_size: slices per batch.
        learning_rate: Adam learning rate of the per-group fine-tuning.
        initial_learning_rate: Adam learning rate of the initial training on the labelled set.
        lr_decay_epochs, lr_decay_rate: step decay of the learning rate within one training.
        multiscale_rates: resize rates applied to every batch (one optimiser step each).
        grad_clip: gradient values are clamped to ``[-grad_clip, grad_clip]``.
        iterations_per_epoch: cap on the iterations of one epoch (None: the whole set); for
            smoke tests and time-boxed runs.
        normalize_pseudo: min-max normalise each probability map to [0, 1] before it becomes a
            0-255 pseudo label (the authors' choice); False keeps the probabilities.
    """

    group_size: int = 5
    epochs_per_group: int = 10
    initial_epochs: int = 100
    image_size: int = 352
    batch_size: int = 16
    learning_rate: float = 3e-4
    initial_learning_rate: float = 1e-4
    lr_decay_epochs: int = 50
    lr_decay_rate: float = 0.1
    multiscale_rates: tuple[float, ...] = (0.75, 1.0, 1.25)
    grad_clip: float = 0.5
    iterations_per_epoch: int | None = None
    normalize_pseudo: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "multiscale_rates", tuple(float(r) for r in self.multiscale_rates))
        positive = ["group_size", "epochs_per_group", "image_size", "batch_size", "lr_decay_epochs"]
        for name in positive:
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.initial_epochs < 0:
            raise ValueError(f"initial_epochs must be >= 0, got {self.initial_epochs}")
        if self.image_size % 32:
            raise ValueError(f"image_size must be a multiple of 32 (Inf-Net), got {self.image_size}")
        if self.iterations_per_epoch is not None and self.iterations_per_epoch < 1:
            raise ValueError(f"iterations_per_epoch must be None or at least 1, got {self.iterations_per_epoch}")

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["multiscale_rates"] = list(self.multiscale_rates)
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "PropagationSettings":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown propagation settings: {', '.join(unknown)}")
        return cls(**data)

    def differences(self, other: "PropagationSettings") -> list[str]:
        """``name: this != other`` for every setting that differs."""
        a, b = self.to_dict(), other.to_dict()
        return [f"{k}: {a[k]!r} != {b[k]!r}" for k in a if a[k] != b[k]]


def random_groups(names: Sequence[str], group_size: int, seed: int) -> list[list[str]]:
    """Split ``names`` into groups of ``group_size`` in a random order fixed by ``seed``.

    The names are sorted first, so the order depends only on the set of names and the seed.
    Every name lands in exactly one group; the last group holds the remainder (may be smaller).
    """
    if group_size < 1:
        raise ValueError(f"group_size must be at least 1, got {group_size}")
    ordered = sorted(names)
    if len(set(ordered)) != len(ordered):
        raise ValueError("random_groups: names must be unique")
    perm = np.random.default_rng(seed).permutation(len(ordered))
    shuffled = [ordered[i] for i in perm]
    return [shuffled[i : i + group_size] for i in range(0, len(shuffled), group_size)]


@dataclass
class PropagationState:
    """Progress of one propagation run, saved as ``<work_dir>/state.json``.

    Attributes:
        labeled_dir, unlabeled_dir: the input folders (absolute paths).
        seed: seed of the group order and of every training round.
        settings: :class:`PropagationSettings` of the run.
        groups: unlabelled image file names (in ``unlabeled_dir/Imgs``), in propagation order.
        groups_done: how many groups are pseudo-labelled and trained on.
        checkpoint: network state dict after the last finished step, relative to the work dir
            (None before the initial model exists).
        initial_weights: weights the run started from (None: trained on the labelled set).
        pseudo_dir: the pseudo-labelled slices (``Imgs``, ``GT``, ``Edge``), relative to the work dir.
        history: one record per finished step: ``{"group", "added", "labelled", "loss"}``
            (``group`` -1 is the initial model).
    """

    labeled_dir: str
    unlabeled_dir: str
    seed: int
    settings: PropagationSettings
    groups: list[list[str]]
    groups_done: int = 0
    checkpoint: str | None = None
    initial_weights: str | None = None
    pseudo_dir: str = "pseudo"
    history: list[dict] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return self.checkpoint is not None and self.groups_done == len(self.groups)

    @property
    def pseudo_count(self) -> int:
        """Unlabelled slices pseudo-labelled and trained on so far."""
        return sum(len(g) for g in self.groups[: self.groups_done])

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["settings"] = self.settings.to_dict()
        return {"version": _STATE_VERSION, **out}

    def save(self, work_dir: str | os.PathLike) -> Path:
        """Write ``state.json`` atomically (the previous state stays until the new one is complete)."""
        path = Path(work_dir) / STATE_FILE
        with atomic_output(path) as tmp:
            tmp.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, work_dir: str | os.PathLike) -> "PropagationState":
        path = Path(work_dir) / STATE_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no propagation state; start a run in this work dir first")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not a valid state file ({exc.msg}); start again in a fresh work dir") from exc
        if data.pop("version", None) != _STATE_VERSION:
            raise ValueError(f"{path}: written by another version of infnet_monai; start a fresh work dir")
        data["settings"] = PropagationSettings.from_dict(data["settings"])
        return cls(**data)
