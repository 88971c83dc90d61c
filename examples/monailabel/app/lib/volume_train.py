"""MONAI Label training task for the Inf-Net bundle on the datastore's CT volumes.

MONAI Label's ``BundleTrainTask`` runs exactly one config file, ``configs/train.json``. This
bundle's ``train.json`` reads 2D COVID-SemiSeg slices (JPEG/PNG); ``configs/train_nifti.json``,
merged on top of it, switches the data to CT volume / label NIfTI pairs (the shared CT chain of
``infnet_monai.transforms.chain`` on both, then axial slices), which is what a MONAI Label
datastore holds. :class:`VolumeBundleTrainTask` runs that pair with MONAI Label's overrides
(datastore datalists, ``max_epochs``, ``device``, a loader of ``models/model.pt``).
"""

from __future__ import annotations

import logging
import os
from typing import Any

import monai.bundle
from monai.bundle import ConfigParser
from monailabel.tasks.train.bundle import BundleTrainTask

__all__ = ["TRAIN_CONFIGS", "MONAILABEL_OVERRIDES", "VolumeBundleTrainTask"]

logger = logging.getLogger(__name__)

TRAIN_CONFIGS = ("train.json", "train_nifti.json")
MONAILABEL_OVERRIDES: dict[str, Any] = {
    # validate (and save the best model as models/model.pt) every epoch: a short retraining
    # would otherwise end before the first validation and leave models/model.pt unchanged
    "val_interval": 1,
    # start from models/model.pt (MONAI Label's loader), not from the bundle's last interval
    # checkpoint, whose trainer state (epoch count) would end a new short run at once
    "resume_ckpt": None,
    # keep the interval checkpoints out of models/, which MONAI Label offers as model files
    "train#checkpoint_saver#save_dir": "$@output_dir + '/checkpoints'",
}


class VolumeBundleTrainTask(BundleTrainTask):
    """``BundleTrainTask`` over ``train.json`` + ``train_nifti.json`` with
    :data:`MONAILABEL_OVERRIDES`. Validation uses the training volumes when ``val_split``
    leaves none (e.g. one labelled volume), so that ``models/model.pt`` is still written."""

    def __init__(self, path: str, conf: dict[str, str], **kwargs) -> None:
        missing = [c for c in TRAIN_CONFIGS if not os.path.isfile(os.path.join(path, "configs", c))]
        super().__init__(path, conf, **kwargs)
        if missing:
            logger.warning(f"Ignore {path} for training: configs/{', configs/'.join(missing)} missing")
            self.valid = False

    def config_files(self) -> list[str]:
        return [os.path.join(self.bundle_path, "configs", c) for c in TRAIN_CONFIGS]

    def _load_bundle_config(self, path, config):
        parser = ConfigParser()
        parser.read_config([os.path.join(path, "configs", c) for c in TRAIN_CONFIGS])
        parser.config.update({self.const.key_bundle_root(): path})  # type: ignore[union-attr]
        return parser

    def _partition_datalist(self, datalist, request, shuffle=False):
        train, val = super()._partition_datalist(datalist, request, shuffle)
        return train, (val or train)

    def _update_overrides(self, overrides):
        overrides.update(MONAILABEL_OVERRIDES)
        return overrides

    def run_single_gpu(self, request, overrides):
        monai.bundle.run(
            run_id=request.get("run_id") or "run",  # clients send the option's default ""
            meta_file=self.bundle_metadata_path,
            config_file=self.config_files(),
            **overrides,
        )
