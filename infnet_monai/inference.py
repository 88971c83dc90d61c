"""Volume inference: the trained Inf-Net slice by slice over a CT volume, and its result.

:func:`infer_volume` runs a loaded network (:mod:`infnet_monai.runtime.loading`) with the slice
inferer (:mod:`infnet_monai.inferers`) over a preprocessed item and applies the postprocessing;
:class:`VolumeResult` holds the mask, lung labels and probabilities on the input grid;
:func:`mask_saver` and :func:`volume_datalist` are the writer and the datalist of a run.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from monai.data import MetaTensor, decollate_batch
from monai.inferers import SliceInferer
from monai.transforms import Compose, SaveImage

from infnet_monai.data.inputs import expand_inputs
from infnet_monai.naming import CaseFolderLayout, case_name_formatter
from infnet_monai.utils import AtomicNibabelWriter
from infnet_monai.utils.geometry import axial_axis, voxel_volume_ml

__all__ = ["mask_saver", "infer_volume", "VolumeResult", "volume_datalist"]


def mask_saver(output_dir: str | Path, postfix: str = "seg", dtype=np.uint8) -> SaveImage:
    """``SaveImage`` writing ``<case name>_<postfix>.nii.gz`` into ``output_dir``, atomically
    (:mod:`infnet_monai.naming`: the input's whole name, dots kept)."""
    return SaveImage(
        output_dir=str(output_dir),
        output_postfix=postfix,
        output_ext=".nii.gz",
        output_dtype=dtype,
        resample=False,
        separate_folder=False,
        print_log=False,
        writer=AtomicNibabelWriter,
        output_name_formatter=case_name_formatter,
        folder_layout=CaseFolderLayout(output_dir, postfix, ".nii.gz"),
    )


def volume_datalist(inputs: str | Path | Sequence[str | Path]) -> list[dict]:
    """``[{"image": path}, ...]`` for a folder of volumes (NIfTI files or DICOM series folders),
    a single volume, or a list of such (globs allowed)."""
    items = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
    return [{"image": str(p)} for p in expand_inputs([str(i) for i in items])]


@dataclass
class VolumeResult:
    """One segmented volume: the postprocessed item and its summary figures.

    ``slices``: axial slices through the network; ``input_slices``: axial slices of the input
    (more when the slice crop skipped slices without lung); ``seconds``: network and
    postprocessing, ``network_seconds`` the network's share."""

    item: dict
    slices: int
    seconds: float
    infected_ml: float
    input_slices: int = 0
    network_seconds: float = 0.0

    @property
    def mask(self) -> MetaTensor:
        """The mask ``(1, X, Y, Z)`` uint8 on the input grid (0/1, or the patterns' 0/1/2)."""
        return self.item["pred"]

    @property
    def lung(self) -> MetaTensor | None:
        """Lung labels ``(1, X, Y, Z)`` on the input grid (1 right, 2 left, 3 rest of the thoracic
        cavity), None when the mask was not restricted to the lungs."""
        return self.item.get("lung")

    @property
    def ct(self) -> MetaTensor | None:
        """The CT ``(1, X, Y, Z)`` float32 in HU as read, when the segmenter kept it (``keep_ct``)."""
        return self.item.get("ct")

    @property
    def probabilities(self) -> MetaTensor | None:
        """Probabilities ``(C, X, Y, Z)`` float32 on the input grid when kept (``keep_prob``)."""
        return self.item.get("prob")

    def burden(self, case: str = "") -> dict:
        """The burden report of this result (lung and infection mL per side, percent involved,
        severity; :func:`~infnet_monai.report.burden.infection_burden`); needs :attr:`lung`."""
        from infnet_monai.report.burden import infection_burden

        if self.lung is None:
            raise ValueError("no lung labels: segment with restrict_to_lung=True for a burden report")
        return infection_burden(self.lung, self.mask, case=case)

    def mask_image(self):
        """The mask as a ``nibabel.Nifti1Image`` (uint8, the input's affine)."""
        import nibabel as nib

        return nib.Nifti1Image(np.asarray(self.mask[0].cpu(), np.uint8), np.asarray(self.mask.affine, np.float64))

    def summary(self, name: str, labels: dict | None = None) -> str:
        """One line: slices, seconds, infected mL and, for a labelmap (``labels`` with more than
        one class, value -> (name, ...)), the mL of each class."""
        inferred = f"{self.slices} of {self.input_slices}" if self.input_slices > self.slices else f"{self.slices}"
        line = f"{name}: {inferred} slices inferred, {self.seconds:.1f} s, infection {self.infected_ml:.1f} mL"
        if labels and len(labels) > 2:
            mask = self.item["pred"]
            voxel_ml = voxel_volume_ml(np.asarray(mask.affine))
            values = mask.as_tensor() if isinstance(mask, MetaTensor) else torch.as_tensor(mask)
            line += " (" + ", ".join(
                f"{entry[0]} {int(torch.count_nonzero(values == value)) * voxel_ml:.1f} mL"
                for value, entry in labels.items() if value > 0
            ) + ")"
        return line


def infer_volume(
    item: dict,
    network: torch.nn.Module,
    inferer: SliceInferer,
    postprocessing: Compose,
    image_key: str = "image",
    pred_key: str = "pred",
) -> VolumeResult:
    """Run ``network`` over a preprocessed ``item`` (``image_key``: ``(1 or 3, S, S, Z)``) and apply
    ``postprocessing``; returns the item with ``pred_key`` on the input grid. The precision is
    the inferer's (:class:`~infnet_monai.inferers.InfNetSliceInferer`)."""
    start = time.perf_counter()
    image = item[image_key]
    with torch.inference_mode():
        logits = inferer(image.unsqueeze(0), network)
    network_seconds = time.perf_counter() - start
    item = dict(item)
    item[pred_key] = decollate_batch({pred_key: logits.float()})[0][pred_key]
    with torch.inference_mode():
        item = postprocessing(item)
    mask = item[pred_key]
    affine = np.asarray(mask.affine)
    infected = int(torch.count_nonzero(mask.as_tensor() if isinstance(mask, MetaTensor) else mask)) * voxel_volume_ml(affine)
    input_slices = int(mask.shape[1 + axial_axis(affine)])
    return VolumeResult(item, int(image.shape[-1]), time.perf_counter() - start, infected, input_slices, network_seconds)
