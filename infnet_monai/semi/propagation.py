"""Semi-Inf-Net's randomly selected propagation (Fan et al., IEEE TMI 2020, Sec. III-C, Alg. 1).

Start from the labelled slices L (the doctor labels) and the unlabelled slices U; train Inf-Net
on L (or start from given weights); split U at random into groups of K slices; for each group:
predict it with the current model, make pseudo labels and edges, add it to the labelled set and
fine-tune on the enlarged set; stop when U is exhausted. The pseudo-labelled slices then train
Semi-Inf-Net (bundle configs ``train.json`` + ``semi_train.json``).

Work directory::

    <work_dir>/state.json               seed, settings, group order, groups done, checkpoint
    <work_dir>/checkpoints/initial.pt   the model before the first group
    <work_dir>/checkpoints/group_NNNN.pt   the model after NNNN groups (only the latest is kept)
    <work_dir>/model.pt                 the model after the last group
    <work_dir>/pseudo/{Imgs,GT,Edge}/   pseudo-labelled slices (COVID-SemiSeg layout)

Every file is replaced atomically and ``state.json`` is updated only after a group's pseudo
labels and model are complete, so a run killed at any point resumes (``resume=True``) from the
last finished group. Each round reloads the saved model and seeds its training with
``seed + group index + 1``: a resumed run gives the same group order and, on the CPU, the same
pseudo labels and weights as an uninterrupted one (GPU kernels may differ in the last bits).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

import torch
from monai.utils import set_determinism
from tqdm import tqdm

from infnet_monai.data import semiseg_datalist
from infnet_monai.runtime import default_device
from infnet_monai.losses import DeepSupervisionLoss
from infnet_monai.networks import InfNet
from infnet_monai.utils import atomic_output

from .finetune import train_round, with_initial_weights
from .pseudo import predict_probabilities, pseudo_datalist, to_pseudo_label, write_pseudo_labels
from .state import STATE_FILE, PropagationSettings, PropagationState, random_groups

__all__ = ["SemiInfNetPropagation"]

logger = logging.getLogger(__name__)

INITIAL_CHECKPOINT = "checkpoints/initial.pt"
FINAL_CHECKPOINT = "model.pt"


def _checkpoint_name(groups_done: int, n_groups: int) -> str:
    return FINAL_CHECKPOINT if groups_done == n_groups else f"checkpoints/group_{groups_done:04d}.pt"


def _resolved(path: str | os.PathLike) -> str:
    return str(Path(path).expanduser().resolve())


class SemiInfNetPropagation:
    """Run (or resume) the propagation in ``work_dir``; :meth:`run` does the work.

    Args:
        labeled_dir: COVID-SemiSeg folder with ``Imgs``, ``GT`` (and optionally ``Edge``).
        unlabeled_dir: folder with ``Imgs`` (any ``GT``/``Edge`` there are ignored).
        work_dir: where state, checkpoints and pseudo labels go (created if needed).
        settings: training settings: a :class:`PropagationSettings`, or a dict of some of its
            fields (the rest: the resumed run's values, else the defaults); None: all of them so.
        seed: group order and training seed; None: the resumed run's, else 0.
        initial_weights: start from these weights (a trained Inf-Net ``model.pt`` or an authors'
            checkpoint) instead of training on the labelled set first.
        network: the network to train; in eval mode it must return the final map's logits
            (B, 1, H, W). Default: an :class:`~infnet_monai.networks.InfNet` built after seeding
            with ``seed``, so the initial training is reproducible (build a given network under
            the same seed for the same effect).
        loss_function: training loss (default Inf-Net's deep-supervision loss).
        device: ``cpu``, ``cuda``, ``cuda:1`` ...; None: the first GPU when present.
        amp: mixed precision; None: on for CUDA devices.
        num_workers: data loader workers.
        resume: continue the run in ``work_dir``; without it an existing run is an error.
        keep_checkpoints: keep every ``group_NNNN.pt`` instead of only the latest.
    """

    def __init__(
        self,
        labeled_dir: str | os.PathLike,
        unlabeled_dir: str | os.PathLike,
        work_dir: str | os.PathLike,
        settings: PropagationSettings | dict | None = None,
        seed: int | None = None,
        initial_weights: str | os.PathLike | None = None,
        network: torch.nn.Module | None = None,
        loss_function: torch.nn.Module | None = None,
        device: str | torch.device | None = None,
        amp: bool | None = None,
        num_workers: int = 0,
        resume: bool = False,
        keep_checkpoints: bool = False,
    ) -> None:
        self.labeled_dir = _resolved(labeled_dir)
        self.unlabeled_dir = _resolved(unlabeled_dir)
        self.work_dir = Path(work_dir).expanduser().resolve()
        self.settings = settings
        self.seed = seed
        self.initial_weights = _resolved(initial_weights) if initial_weights else None
        self.device = default_device(device)
        self.network = network.to(self.device) if network is not None else None
        self.loss_function = loss_function if loss_function is not None else DeepSupervisionLoss()
        self.amp = self.device.type == "cuda" if amp is None else bool(amp)
        self.num_workers = num_workers
        self.resume = resume
        self.keep_checkpoints = keep_checkpoints
        self.state: PropagationState | None = None

    # ------------------------------------------------------------------ state

    @property
    def pseudo_dir(self) -> Path:
        return self.work_dir / (self.state.pseudo_dir if self.state else "pseudo")

    def _unlabeled_names(self) -> list[str]:
        items = semiseg_datalist(self.unlabeled_dir, label_dir=None, edge_dir=None, prior_dir=None)
        return [Path(item["image"]).name for item in items]

    def _check_inputs(self) -> None:
        if self.labeled_dir == self.unlabeled_dir:
            raise ValueError(f"{self.labeled_dir}: given as both the labelled and the unlabelled folder; give two")
        for given in (self.labeled_dir, self.unlabeled_dir):
            if _resolved(self.pseudo_dir) == given or Path(given).is_relative_to(self.pseudo_dir):
                raise ValueError(f"{given}: input folder lies in the work dir's pseudo/; choose another --work-dir")

    def _start_state(self) -> PropagationState:
        if self.pseudo_dir.exists() and any(self.pseudo_dir.iterdir()):
            raise FileExistsError(
                f"{self.pseudo_dir}: exists but {self.work_dir / STATE_FILE} does not; choose an empty --work-dir"
            )
        settings = self.settings
        if not isinstance(settings, PropagationSettings):
            settings = PropagationSettings.from_dict(dict(settings or {}))
        seed = 0 if self.seed is None else int(self.seed)
        names = self._unlabeled_names()
        return PropagationState(
            labeled_dir=self.labeled_dir,
            unlabeled_dir=self.unlabeled_dir,
            seed=seed,
            settings=settings,
            groups=random_groups(names, settings.group_size, seed),
            initial_weights=self.initial_weights,
        )

    def _resume_state(self) -> PropagationState:
        state = PropagationState.load(self.work_dir)
        where = self.work_dir / STATE_FILE
        problems = []
        for name, given, stored in (
            ("labeled dir", self.labeled_dir, state.labeled_dir),
            ("unlabeled dir", self.unlabeled_dir, state.unlabeled_dir),
        ):
            if given != stored:
                problems.append(f"{name} {given} != {stored}")
        if self.seed is not None and int(self.seed) != state.seed:
            problems.append(f"seed {self.seed} != {state.seed}")
        if self.initial_weights is not None and self.initial_weights != state.initial_weights:
            problems.append(f"initial weights {self.initial_weights} != {state.initial_weights}")
        given = self.settings
        if given is not None and not isinstance(given, PropagationSettings):
            given = dataclasses.replace(state.settings, **dict(given))
        if given is not None:
            problems += given.differences(state.settings)
        if problems:
            raise ValueError(f"{where}: the run in progress used other settings ({'; '.join(problems)}); "
                             "resume with the same ones or choose another --work-dir")
        grouped = {name for group in state.groups for name in group}
        current = set(self._unlabeled_names())
        if grouped != current:
            raise ValueError(
                f"{self.unlabeled_dir}: the unlabelled slices changed since the run started "
                f"({len(current - grouped)} new, {len(grouped - current)} missing); "
                "restore them or choose another --work-dir"
            )
        return state

    def _open_state(self) -> PropagationState:
        self._check_inputs()
        if (self.work_dir / STATE_FILE).is_file():
            if not self.resume:
                done = PropagationState.load(self.work_dir)
                raise FileExistsError(
                    f"{self.work_dir}: holds a propagation ({done.groups_done}/{len(done.groups)} groups done); "
                    "resume it (--resume) or choose another --work-dir"
                )
            state = self._resume_state()
        else:
            state = self._start_state()
            state.save(self.work_dir)
        self._remove_partial_files()
        return state

    def _remove_partial_files(self) -> None:
        """Delete temporary files an interrupted atomic write left behind (names start with '.')."""
        subfolders = [self.pseudo_dir / sub for sub in ("Imgs", "GT", "Edge")]
        for folder in [self.work_dir, self.work_dir / "checkpoints", *subfolders]:
            if folder.is_dir():
                for tmp in folder.glob(".*.tmp*"):
                    tmp.unlink()

    # ------------------------------------------------------------------ model files

    def _save_model(self, name: str) -> None:
        with atomic_output(self.work_dir / name) as tmp:
            torch.save(self.network.state_dict(), tmp)

    def _load_model(self, name: str) -> None:
        state_dict = torch.load(self.work_dir / name, map_location=self.device, weights_only=True)
        self.network.load_state_dict(state_dict)

    def _prune_checkpoints(self, current: str) -> None:
        if self.keep_checkpoints:
            return
        for path in (self.work_dir / "checkpoints").glob("group_*.pt"):
            if path != self.work_dir / current:
                path.unlink()

    def _commit(self, state: PropagationState, checkpoint: str, record: dict) -> None:
        """Save the model, then the state pointing at it, then drop older checkpoints."""
        self._save_model(checkpoint)
        state.checkpoint = checkpoint
        state.history.append(record)
        state.save(self.work_dir)
        self._prune_checkpoints(checkpoint)

    # ------------------------------------------------------------------ steps

    def _train(self, datalist: list[dict], epochs: int, learning_rate: float, seed: int, progress: bool) -> float:
        return train_round(
            self.network, datalist, self.loss_function, self.state.settings, epochs=epochs,
            learning_rate=learning_rate, seed=seed, device=self.device, amp=self.amp,
            num_workers=self.num_workers, progress=progress,
        )  # fmt: skip

    def _initial_model(self, labeled: list[dict], progress: bool) -> None:
        state = self.state
        settings = state.settings
        loss = None
        if state.initial_weights:
            with_initial_weights(self.network, state.initial_weights)
        elif settings.initial_epochs > 0:
            logger.info("training on the %d labelled slices for %d epochs", len(labeled), settings.initial_epochs)
            loss = self._train(labeled, settings.initial_epochs, settings.initial_learning_rate, state.seed, progress)
        record = {"group": -1, "added": 0, "labelled": len(labeled), "loss": loss}
        self._commit(state, INITIAL_CHECKPOINT, record)

    def _propagate_group(self, index: int, labeled: list[dict]) -> None:
        state = self.state
        settings = state.settings
        self._load_model(state.checkpoint)
        unlabeled_imgs = Path(state.unlabeled_dir) / "Imgs"
        files = [unlabeled_imgs / name for name in state.groups[index]]
        probs = predict_probabilities(self.network, files, settings.image_size, self.device, settings.batch_size)
        write_pseudo_labels(self.pseudo_dir, files, [to_pseudo_label(p, settings.normalize_pseudo) for p in probs])
        so_far = [name for group in state.groups[: index + 1] for name in group]
        datalist = labeled + pseudo_datalist(self.pseudo_dir, so_far)
        loss = self._train(datalist, settings.epochs_per_group, settings.learning_rate, state.seed + index + 1, False)
        state.groups_done = index + 1
        record = {"group": index, "added": len(files), "labelled": len(datalist), "loss": loss}
        self._commit(state, _checkpoint_name(index + 1, len(state.groups)), record)
        logger.info(
            "group %d/%d: %d slices pseudo-labelled, trained on %d, loss %.4f",
            index + 1, len(state.groups), len(files), len(datalist), loss,
        )  # fmt: skip

    def run(self, max_groups: int | None = None, progress: bool = False) -> PropagationState:
        """Propagate until the unlabelled set is exhausted (or ``max_groups`` more groups are done).

        Returns the saved :class:`PropagationState`; ``state.checkpoint`` is the latest model
        (``model.pt`` once finished) and ``pseudo/`` holds the pseudo-labelled slices so far.
        """
        if max_groups is not None and max_groups < 0:
            raise ValueError(f"max_groups must be >= 0, got {max_groups}")
        labeled = semiseg_datalist(self.labeled_dir, prior_dir=None)
        self.state = state = self._open_state()
        if self.network is None:
            set_determinism(seed=state.seed)
            self.network = InfNet().to(self.device)
        try:
            if state.checkpoint is None:
                self._initial_model(labeled, progress)
            stop = len(state.groups) if max_groups is None else min(len(state.groups), state.groups_done + max_groups)
            for index in tqdm(range(state.groups_done, stop), desc="groups", disable=not progress):
                self._propagate_group(index, labeled)
        finally:
            set_determinism(seed=None)
        return state
