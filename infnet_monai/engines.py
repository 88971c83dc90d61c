"""Training engine pieces: Inf-Net's multi-scale trainer, gradient clipping, progress bar, resume.

The authors train every batch at 0.75, 1 and 1.25 times the training size (rounded to multiples
of 32), with one optimiser step per scale and gradient values clipped to [-0.5, 0.5].
:class:`MultiScaleSupervisedTrainer` is a MONAI ``SupervisedTrainer`` doing the former,
:class:`GradientClipHandler` an ignite handler doing the latter (AMP-aware).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from ignite.engine import Engine
from ignite.handlers import ProgressBar
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents
from monai.handlers import CheckpointSaver
from monai.utils import CommonKeys, ensure_tuple, ensure_tuple_rep

__all__ = [
    "MultiScaleSupervisedTrainer",
    "GradientClipHandler",
    "ProgressBarHandler",
    "ResumableCheckpointSaver",
    "latest_checkpoint",
    "scaled_size",
]


def scaled_size(size: Sequence[int], rate: float, divisor: int = 32) -> tuple[int, ...]:
    """Spatial size ``size * rate`` rounded to the nearest multiple of ``divisor`` (at least one)."""
    return tuple(max(divisor, int(round(s * rate / divisor)) * divisor) for s in size)


class MultiScaleSupervisedTrainer(SupervisedTrainer):
    """``SupervisedTrainer`` that runs every batch at several scales, one optimiser step each.

    For each rate in ``scales`` the batch entries ``scale_keys`` are resized (on the device) to
    :func:`scaled_size` of their spatial size; rates giving the same size run once. The
    iteration output holds the last scale's tensors and the mean loss over scales. All other
    arguments are ``SupervisedTrainer``'s.

    Args:
        scales: resize rates (Inf-Net: 0.75, 1, 1.25).
        size_divisor: sizes are multiples of this (32 for Inf-Net's five down-samplings).
        scale_keys: batch keys to resize (image and label; the label may carry mask + edge).
        scale_modes: interpolation per key: ``"bilinear"`` (soft targets, as the authors) or
            ``"nearest"`` (class-index labels).
    """

    def __init__(
        self,
        *args,
        scales: Sequence[float] = (0.75, 1.0, 1.25),
        size_divisor: int = 32,
        scale_keys: Sequence[str] = (CommonKeys.IMAGE, CommonKeys.LABEL),
        scale_modes: str | Sequence[str] = "bilinear",
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        if not scales or any(rate <= 0 for rate in scales):
            raise ValueError(f"scales must be positive resize rates, got {scales}")
        self.scales = tuple(float(rate) for rate in scales)
        self.size_divisor = size_divisor
        self.scale_keys = ensure_tuple(scale_keys)
        self.scale_modes = ensure_tuple_rep(scale_modes, len(self.scale_keys))

    def _resize(self, batch: dict, size: tuple[int, ...]) -> dict:
        out = dict(batch)
        for key, mode in zip(self.scale_keys, self.scale_modes):
            x = torch.as_tensor(batch[key]).to(self.state.device, non_blocking=self.non_blocking)
            if tuple(x.shape[2:]) != size:
                align = None if mode in ("nearest", "nearest-exact", "area") else True
                x = F.interpolate(x.float(), size=size, mode=mode, align_corners=align).to(x.dtype)
            out[key] = x
        return out

    def _iteration(self, engine: SupervisedTrainer, batchdata: dict) -> dict:
        if not isinstance(batchdata, dict):
            raise ValueError("MultiScaleSupervisedTrainer needs dictionary batches (image and label keys)")
        base = tuple(batchdata[self.scale_keys[0]].shape[2:])
        sizes = dict.fromkeys(scaled_size(base, rate, self.size_divisor) for rate in self.scales)
        losses = []
        for size in sizes:
            output = super()._iteration(engine, self._resize(batchdata, size))
            # with ``decollate=True`` the output is a list of per-item dicts sharing the loss
            items = output if isinstance(output, list) else [output]
            losses.append(torch.as_tensor(items[0][CommonKeys.LOSS]).detach())
        mean_loss = torch.stack(losses).mean()
        for item in items:
            item[CommonKeys.LOSS] = mean_loss
        return output


class GradientClipHandler:
    """Clip gradients after every backward pass of a MONAI trainer (before the optimiser step).

    Args:
        clip_value: clamp each gradient element to ``[-clip_value, clip_value]`` (Inf-Net: 0.5).
        max_norm: alternatively, rescale so the total gradient 2-norm is at most ``max_norm``.

    With AMP the gradients are unscaled first, so the limits apply to true gradient values.
    """

    def __init__(self, clip_value: float | None = 0.5, max_norm: float | None = None) -> None:
        if (clip_value is None) == (max_norm is None):
            raise ValueError("give exactly one of clip_value and max_norm")
        self.clip_value = clip_value
        self.max_norm = max_norm

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(IterationEvents.BACKWARD_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        scaler = getattr(engine, "scaler", None)
        if getattr(engine, "amp", False) and scaler is not None:
            scaler.unscale_(engine.optimizer)
        params = [p for p in engine.network.parameters() if p.grad is not None]
        if self.clip_value is not None:
            torch.nn.utils.clip_grad_value_(params, self.clip_value)
        else:
            torch.nn.utils.clip_grad_norm_(params, self.max_norm)


class ProgressBarHandler:
    """ignite ``ProgressBar`` as a MONAI handler: ``attach(engine)`` with a fixed output transform.

    Args:
        output_transform: maps the iteration output to the shown values, e.g.
            ``monai.handlers.from_engine(["loss"], first=True)`` (default: nothing shown but progress).
        persist: keep the finished bar of each epoch on screen.
    """

    def __init__(self, output_transform: Callable | None = None, persist: bool = False, **tqdm_kwargs) -> None:
        self.output_transform = output_transform
        self.bar = ProgressBar(persist=persist, **tqdm_kwargs)

    def attach(self, engine: Engine) -> None:
        if self.output_transform is None:
            self.bar.attach(engine)
        else:
            self.bar.attach(engine, output_transform=lambda out: {"loss": self.output_transform(out)})


class ResumableCheckpointSaver(CheckpointSaver):
    """``CheckpointSaver`` whose best-metric record can be saved and restored with the trainer.

    Put it in another saver's ``save_dict`` (and the matching ``CheckpointLoader``'s
    ``load_dict``): after a resume it only replaces the best model (``key_metric_filename``) when
    the metric beats the best one of the earlier run, instead of starting from scratch.
    """

    def state_dict(self) -> dict:
        if self._key_metric_checkpoint is None:
            return {}
        return self._key_metric_checkpoint.state_dict()

    def load_state_dict(self, state_dict: dict) -> None:
        if state_dict:
            super().load_state_dict(state_dict)


_EPOCH_RE = re.compile(r"epoch=(\d+)")


def latest_checkpoint(ckpt_dir: str | Path, prefix: str = "checkpoint") -> str | None:
    """Path of the ``{prefix}*epoch=N*.pt`` file with the largest N in ``ckpt_dir``; None if none.

    These are the interval checkpoints of ``monai.handlers.CheckpointSaver`` (trainer, network,
    optimiser and scheduler state), which ``CheckpointLoader`` resumes from.
    """
    folder = Path(ckpt_dir)
    if not folder.is_dir():
        return None
    found = []
    for path in folder.glob(f"{prefix}*.pt"):
        match = _EPOCH_RE.search(path.name)
        if match:
            found.append((int(match.group(1)), path))
    return str(max(found)[1]) if found else None
