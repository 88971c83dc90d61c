"""Training engine pieces: Inf-Net's multi-scale trainer, mixed precision, gradient clipping,
progress bar with ETA, resume.

The authors train every batch at 0.75, 1 and 1.25 times the training size (rounded to multiples
of 32), with one optimiser step per scale and gradient values clipped to [-0.5, 0.5].
:class:`MultiScaleSupervisedTrainer` is a MONAI ``SupervisedTrainer`` doing the former,
:class:`GradientClipHandler` an ignite handler doing the latter (AMP-aware).
:class:`AutocastInferer` runs the forward pass in bf16 on CPUs that compute bf16 natively
(MONAI's own ``amp`` is CUDA fp16 with a gradient scaler); :func:`training_precision` picks it.
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from ignite.engine import Engine, Events
from ignite.handlers import ProgressBar
from monai.engines import SupervisedTrainer
from monai.engines.utils import IterationEvents
from monai.handlers import CheckpointSaver
from monai.inferers import Inferer
from monai.utils import CommonKeys, ensure_tuple, ensure_tuple_rep

from infnet_monai.utils.cpuinfo import native_bf16

__all__ = [
    "MultiScaleSupervisedTrainer",
    "AutocastInferer",
    "training_precision",
    "GradientClipHandler",
    "EtaHandler",
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


# autocast dtype of each training precision (None: fp32)
_AUTOCAST = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def training_precision(device: str | torch.device, precision: str = "auto") -> str:
    """The forward-pass precision of training: ``precision`` unless ``"auto"``, which is
    ``"bf16"`` on a CPU with native bf16 (:func:`~infnet_monai.utils.cpuinfo.native_bf16`) and
    ``"fp32"`` elsewhere (on CUDA, fp16 comes from the trainer's ``amp``, with its gradient scaler)."""
    if precision == "auto":
        return "bf16" if torch.device(device).type == "cpu" and native_bf16() else "fp32"
    if precision not in _AUTOCAST:
        raise ValueError(f"precision must be 'auto' or one of {', '.join(_AUTOCAST)}, got {precision!r}")
    return precision


def _to_float32(out: Any) -> Any:
    if isinstance(out, torch.Tensor):
        return out.float()
    if isinstance(out, (tuple, list)):
        return type(out)(_to_float32(o) for o in out)
    return out


class AutocastInferer(Inferer):
    """``network(inputs)`` under ``torch.autocast`` to ``precision``, outputs back in float32.

    For trainers and evaluators: only the forward pass runs in reduced precision (convolutions
    and matrix products in bf16/fp16 with fp32 accumulation, parameters and optimiser in fp32);
    the loss and its backward see float32 logits. ``channels_last`` hands 4D inputs over in
    channels-last memory order (the layout oneDNN's CPU convolutions run fastest in; put the
    network in it too). With ``precision="fp32"`` and ``channels_last=False`` it is MONAI's
    ``SimpleInferer``. Output: whatever the network returns (a tensor or a tuple of maps).
    """

    def __init__(self, precision: str = "fp32", channels_last: bool = False) -> None:
        super().__init__()
        if precision not in _AUTOCAST:
            raise ValueError(f"precision must be one of {', '.join(_AUTOCAST)}, got {precision!r}")
        self.precision = precision
        self.channels_last = channels_last

    def __call__(self, inputs: torch.Tensor, network: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if self.channels_last and inputs.dim() == 4:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        dtype = _AUTOCAST[self.precision]
        if dtype is None:
            return network(inputs, *args, **kwargs)
        with torch.autocast(inputs.device.type, dtype=dtype):
            out = network(inputs, *args, **kwargs)
        return _to_float32(out)


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


class EtaHandler:
    """Log after every epoch how far a run is and when it ends:
    ``epoch 7/40, 3.2 min/epoch, 1.8 h left (ETA 2026-11-29 22:41)``.

    The rate is the median epoch time of this process (a resumed run does not count the epochs
    it loaded); epoch time includes whatever runs on ``EPOCH_COMPLETED`` (validation, checkpoints).
    """

    def __init__(self, name: str = "infnet_monai.train") -> None:
        self.logger = logging.getLogger(name)
        self._durations: list[float] = []
        self._start = 0.0

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._epoch_started)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch_completed)

    def _epoch_started(self, engine: Engine) -> None:
        if self._start:  # the previous epoch's handlers have all run
            self._durations.append(time.monotonic() - self._start)
        self._start = time.monotonic()

    def _epoch_completed(self, engine: Engine) -> None:
        durations = self._durations + [time.monotonic() - self._start]
        per_epoch = sorted(durations)[len(durations) // 2]
        left = per_epoch * (engine.state.max_epochs - engine.state.epoch)
        eta = time.strftime("%Y-%m-%d %H:%M", time.localtime(time.time() + left))
        self.logger.info(
            f"epoch {engine.state.epoch}/{engine.state.max_epochs}, {per_epoch / 60:.1f} min/epoch, "
            f"{left / 3600:.1f} h left (ETA {eta})"
        )


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
