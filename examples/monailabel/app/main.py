"""MONAI Label app for the Inf-Net bundle: auto-segmentation and retraining on CT volumes.

Inference is :class:`lib.infer_task.InfNetBundleInferTask` on ``configs/inference.json``: MONAI
Label's ``BundleInferTask`` (as in its ``monaibundle`` sample app) running the bundle's own
inference-optimised ``network`` rather than a plain copy of ``network_def``; training is :class:`lib.volume_train.VolumeBundleTrainTask`
(``train.json`` + ``train_nifti.json``), because the sample app's ``BundleTrainTask`` runs only
``train.json``, which trains on 2D COVID-SemiSeg slices, not on the datastore's volumes.
Bundles come from ``model/<name>`` (``--conf models <name> --conf zoo_source local``).
"""

from __future__ import annotations

import logging
from typing import Dict

import monailabel
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.tasks.infer_v2 import InferTask
from monailabel.interfaces.tasks.strategy import Strategy
from monailabel.interfaces.tasks.train import TrainTask
from monailabel.tasks.activelearning.first import First
from monailabel.tasks.activelearning.random import Random
from monailabel.utils.others.generic import get_bundle_models, strtobool

from lib.infer_task import InfNetBundleInferTask
from lib.volume_train import VolumeBundleTrainTask

__all__ = ["InfNetApp"]

logger = logging.getLogger(__name__)


class InfNetApp(MONAILabelApp):
    """Per bundle in ``conf["models"]``: an ``InfNetBundleInferTask`` and a ``VolumeBundleTrainTask``;
    active-learning strategies ``random`` and ``first``."""

    def __init__(self, app_dir, studies, conf):
        self.models = get_bundle_models(app_dir, conf)
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name=f"Inf-Net COVID-19 lung infection CT ({monailabel.__version__})",
            description="Inf-Net bundle: auto-segmentation of lung infection in chest CT, retraining on CT volumes",
            version=monailabel.__version__,
        )

    def _bundle_tasks(self, kind: str, task_class) -> Dict:
        """One valid ``task_class(bundle path, conf)`` per bundle model, by model name."""
        tasks = {}
        for name, path in self.models.items():
            task = task_class(path, self.conf)
            if task.is_valid():
                logger.info(f"+++ Adding {kind}:: {name} => {path}")
                tasks[name] = task
        return tasks

    def init_infers(self) -> Dict[str, InferTask]:
        return self._bundle_tasks("Inferer", InfNetBundleInferTask)

    def init_trainers(self) -> Dict[str, TrainTask]:
        if strtobool(self.conf.get("skip_trainers", "false")):
            return {}
        return self._bundle_tasks("Trainer", VolumeBundleTrainTask)

    def init_strategies(self) -> Dict[str, Strategy]:
        return {"random": Random(), "first": First()}
