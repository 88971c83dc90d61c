"""One training round of the propagation: a MONAI trainer over a labelled 2D slice datalist.

The trainer is the bundle's: :class:`~infnet_monai.engines.MultiScaleSupervisedTrainer` with the
Inf-Net deep-supervision loss, gradient clipping and a step learning-rate decay, fed by
:func:`~infnet_monai.transforms.train2d.slice_training_transforms`. Every round builds a fresh
Adam optimiser (as the authors' propagation does) and seeds all random generators with the
round's seed, so a round's result depends only on the starting weights, the data and the seed.
"""

from __future__ import annotations

import os
from typing import Sequence

import torch
from ignite.engine import Engine, Events
from monai.data import DataLoader, Dataset
from monai.handlers import LrScheduleHandler, from_engine
from monai.utils import set_determinism

from infnet_monai.engines import GradientClipHandler, MultiScaleSupervisedTrainer, ProgressBarHandler
from infnet_monai.networks import load_authors_checkpoint
from infnet_monai.transforms.train2d import slice_training_transforms

from .state import PropagationSettings

__all__ = ["train_round", "with_initial_weights"]


def with_initial_weights(network: torch.nn.Module, weights: str | os.PathLike | None = None) -> torch.nn.Module:
    """``network`` with ``weights`` loaded strictly (a trained state dict such as a bundle's
    ``models/model.pt``, or an authors' Inf-Net checkpoint); unchanged when ``weights`` is None."""
    if weights:
        load_authors_checkpoint(network, weights)
    return network


def train_round(
    network: torch.nn.Module,
    datalist: Sequence[dict],
    loss_function: torch.nn.Module,
    settings: PropagationSettings,
    epochs: int,
    learning_rate: float,
    seed: int,
    device: str | torch.device = "cpu",
    amp: bool = False,
    num_workers: int = 0,
    progress: bool = False,
) -> float:
    """Train ``network`` in place on ``datalist`` (items ``image``, ``label``[, ``edge``]).

    Returns the mean training loss of the last epoch. ``settings`` gives the image size, batch
    size, multi-scale rates, clipping, lr decay and the optional cap on iterations per epoch.
    """
    if not datalist:
        raise ValueError("train_round: empty datalist")
    set_determinism(seed=seed)
    loader = DataLoader(
        Dataset(list(datalist), slice_training_transforms(settings.image_size)),
        batch_size=settings.batch_size,
        shuffle=True,
        num_workers=num_workers,
    )
    epoch_length = min(len(loader), settings.iterations_per_epoch or len(loader))
    optimizer = torch.optim.Adam(network.parameters(), lr=learning_rate)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, settings.lr_decay_epochs, settings.lr_decay_rate)
    handlers = [LrScheduleHandler(scheduler, print_lr=False), GradientClipHandler(clip_value=settings.grad_clip)]
    if progress:
        handlers.append(ProgressBarHandler(from_engine(["loss"], first=True)))
    trainer = MultiScaleSupervisedTrainer(
        device=torch.device(device),
        max_epochs=epochs,
        epoch_length=epoch_length,
        train_data_loader=loader,
        network=network,
        optimizer=optimizer,
        loss_function=loss_function,
        train_handlers=handlers,
        amp=amp,
        decollate=False,
        scales=settings.multiscale_rates,
    )
    losses: list[float] = []

    def record(engine: Engine) -> None:
        if engine.state.epoch == epochs:
            losses.append(float(from_engine(["loss"], first=True)(engine.state.output)[0]))

    trainer.add_event_handler(Events.ITERATION_COMPLETED, record)
    trainer.run()
    return sum(losses) / len(losses)
