"""MONAI Label inference with the network the bundle's ``network`` id builds.

MONAI Label's ``BundleInferTask`` instantiates ``network_def`` and loads the checkpoint into that
plain eval network. :class:`InfNetBundleInferTask` keeps everything else of it (the bundle's
preprocessing, inferer and postprocessing) and runs the bundle's own ``network`` instead: the
same weights in the inference-optimised form the CLI and ``monai.bundle run`` use (BatchNorm
folded, channels-last; on the CPU the compiled package when one was built), rebuilt when
training rewrites the model file.
"""

from __future__ import annotations

import logging
import os

from monai.bundle import ConfigParser
from monailabel.tasks.infer.bundle import BundleInferTask

__all__ = ["InfNetBundleInferTask"]

logger = logging.getLogger(__name__)


class InfNetBundleInferTask(BundleInferTask):
    """``BundleInferTask`` whose network is the bundle config's ``network`` for the task's model
    file and device (cached per device and model-file time stamp)."""

    def _get_network(self, device, data):
        path = self.get_path()
        if not path:
            return super()._get_network(device, data)
        stamp = os.stat(path).st_mtime
        cached = self._networks.get(device)
        if cached and cached[1] == stamp:
            return cached[0]
        parser = ConfigParser()
        parser.read_config(self.bundle_config_path)
        # compile None: a compiled package built before is used, none is built inside a request
        parser.update({"bundle_root": self.bundle_path, "ckpt_path": path, "device": f"$torch.device('{device}')",
                       "compile": None})
        network = parser.get_parsed_content("network")
        logger.info(f"Infer network: the bundle's 'network' for {path} on {device} ({type(network).__name__})")
        self._networks[device] = (network, stamp)
        return network
