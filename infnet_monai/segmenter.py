"""One pipeline object: the network (loaded once), the shared chain, the slice inferer.

:class:`Segmenter` is what ``infnet-monai segment`` runs per volume and what Python users call::

    import infnet_monai
    result = infnet_monai.segment("ct.nii.gz")          # the shipped model, nothing written
    result.mask                                          # MetaTensor (1, X, Y, Z) uint8, input grid

A :class:`Segmenter` keeps the model between calls (``Segmenter().segment(x)`` for many volumes).
Inputs: a NIfTI path, a DICOM series folder, a ``nibabel`` image or a ``MetaTensor`` ``(1, X, Y, Z)``
or ``(X, Y, Z)`` in HU with its affine. Results are on the input's own grid (shape and affine).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from monai.data import MetaTensor

from infnet_monai.inference import VolumeResult, infer_volume
from infnet_monai.inferers import slice_inferer
from infnet_monai.runtime import compile_choice, default_precision, load_network, load_pattern_network
from infnet_monai.shipped import network_size
from infnet_monai.defaults import DEFAULT_THRESHOLD, DEFAULT_WINDOW_HU
from infnet_monai.transforms.chain import ct_postprocessing, ct_preprocessing

__all__ = ["Segmenter", "segment", "as_ct_item", "CT_KEY"]

CT_KEY = "ct"
"""Item key of the CT as read, when a :class:`Segmenter` keeps it (``keep_ct``)."""


def as_ct_item(image: Any, image_key: str = "image") -> tuple[dict, bool]:
    """``({image_key: ...}, loaded)`` for the chain: a path stays a path for the CT reader
    (``loaded`` False); a ``nibabel`` image or a tensor becomes a float32 ``MetaTensor``
    ``(1, X, Y, Z)`` with its affine (``loaded`` True), checked to be finite and a CT in HU."""
    from infnet_monai.data.ct_reader import check_finite, check_hounsfield

    if isinstance(image, (str, os.PathLike)):
        return {image_key: str(image)}, False
    if hasattr(image, "affine") and hasattr(image, "dataobj"):  # a nibabel image (its affine is RAS, as MONAI's)
        affine = torch.as_tensor(np.asarray(image.affine, np.float64))
        meta = {"filename_or_obj": image.get_filename() or "", "space": "RAS", "original_affine": affine.clone()}
        image = MetaTensor(torch.as_tensor(np.asarray(image.dataobj, np.float32)), affine=affine, meta=meta)
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"expected a path, a nibabel image or a MetaTensor, got {type(image).__name__}")
    if not isinstance(image, MetaTensor):
        image = MetaTensor(image)
    data = image.as_tensor().float()
    if data.ndim == 3:  # add the channel on the plain tensor: indexing a MetaTensor makes it a batch
        data = data[None]
    if data.ndim != 4 or data.shape[0] != 1:
        raise ValueError(f"expected a CT volume (X, Y, Z) or (1, X, Y, Z), got shape {tuple(image.shape)}")
    name = str(image.meta.get("filename_or_obj", "") or "the image in memory")
    array = data.detach().cpu().numpy()
    check_finite(name, array)
    check_hounsfield(name, array)
    meta = {k: v for k, v in image.meta.items() if k != "affine"}
    return {image_key: MetaTensor(data, affine=image.affine.clone(), meta=meta)}, True


class Segmenter:
    """The infection (or infection-pattern) segmentation of CT volumes, loaded once.

    Args: ``weights`` (None: the shipped model), ``device``, ``image_size`` (None: the model's
    own), ``batch_size`` (slices per network call), ``precision`` (None: bf16 autocast on CPUs
    with native bf16, else fp32), ``compile`` (CPU: the compiled package in that precision, fp32
    or bf16; None uses one built before, True builds it, False never), ``window`` (HU), ``lung_crop``, ``slice_crop``,
    ``restrict_to_lung``, ``threshold``, ``classes`` (``"infection"`` 0/1 or ``"patterns"``
    0/1 ground-glass opacity/2 consolidation, with ``pattern_weights``), ``keep_prob`` (keep the
    probabilities on the input grid), ``series_uid`` (a DICOM folder's series), ``progress``,
    ``compile_for`` (the inputs of a run: a long one builds the package), ``network_def`` (the
    module the weights are loaded into, e.g. a bundle's; None: ``InfNet()``), ``keep_ct`` (keep
    the CT as read, :attr:`VolumeResult.ct`, for a burden report or QC image without reading
    it again; holds the volume in memory through the inference).
    """

    def __init__(
        self,
        weights: str | os.PathLike | None = None,
        device: str | torch.device | None = None,
        image_size: int | None = None,
        batch_size: int | None = None,
        precision: str | None = None,
        compile: bool | None = None,
        window: Sequence[float] = DEFAULT_WINDOW_HU,
        lung_crop: bool = True,
        slice_crop: bool = True,
        restrict_to_lung: bool = True,
        threshold: float = DEFAULT_THRESHOLD,
        classes: str = "infection",
        pattern_weights: str | os.PathLike | None = None,
        keep_prob: bool = False,
        series_uid: str | None = None,
        progress: bool = False,
        compile_for: Sequence[Any] = (),
        network_def: torch.nn.Module | None = None,
        keep_ct: bool = False,
    ) -> None:
        # the weights file is read (and a missing one reported) when the network loads, so that
        # the chains can be built without it (a bundle's preprocessing before any training)
        self.weights = weights
        self.size = image_size or network_size(weights)
        self.classes = classes
        self.keep_ct = keep_ct
        self.preprocessing = ct_preprocessing(
            spatial_size=self.size, window=window, lung_crop=lung_crop, slice_crop=slice_crop, series_uid=series_uid,
            keep_lung_mask=restrict_to_lung, network_input=False,
        )
        self.postprocessing = ct_postprocessing(
            self.preprocessing, threshold=threshold, prob_key="prob" if keep_prob else None,
            restrict_to_lung=restrict_to_lung, classes=classes,
        )
        self.precision = precision or default_precision(device)
        self.inferer = slice_inferer(batch_size, device, progress=progress, precision=self.precision, size=self.size)
        if classes == "patterns":
            if compile:
                raise ValueError("--compile on: the infection-pattern network is not compiled; use --compile auto or off")
            load = partial(load_pattern_network, self.weights, pattern_weights, device, self.size)
        else:
            compile = compile_choice(list(compile_for), device, self.precision, requested=compile)
            load = partial(load_network, self.weights, device, compile=compile, batch_size=batch_size, size=self.size,
                           precision=self.precision, network=network_def)
        # the network loads in a background thread while the caller reads its first volume
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="network")
        self._loading, self._network = pool.submit(load), None
        pool.shutdown(wait=False)

    @property
    def network(self) -> torch.nn.Module:
        """The network, once loaded (a load error is raised here)."""
        if self._network is None:
            self._network = self._loading.result()
        return self._network

    def preprocess(self, image: Any) -> dict:
        """The chain's item for ``image`` (path, folder, nibabel image or MetaTensor in HU)."""
        item, loaded = as_ct_item(image)
        start = 1 if loaded else 0  # the reader is the chain's first transform
        if self.keep_ct:
            if not loaded:
                item, start = self.preprocessing(item, end=1), 1
            item[CT_KEY] = item["image"]  # the volume as read; the chain's transforms leave this key alone
        return self.preprocessing(item, start=start)

    def infer(self, item: dict) -> VolumeResult:
        """Network and postprocessing for a preprocessed ``item``: ``pred`` (and ``lung``,
        ``prob``) on the input grid."""
        return infer_volume(item, self.network, self.inferer, self.postprocessing)

    def segment(self, image: Any) -> VolumeResult:
        """Segment one volume; nothing is written (see :class:`~infnet_monai.inference.VolumeResult`)."""
        return self.infer(self.preprocess(image))

    __call__ = segment

    def segment_files(self, inputs: Sequence[str | os.PathLike]) -> list[tuple[Path, VolumeResult]]:
        """Segment every volume of ``inputs`` (files, DICOM folders, globs), in memory."""
        from infnet_monai.data.inputs import expand_inputs

        return [(path, self.segment(path)) for path in expand_inputs([str(i) for i in inputs])]


def segment(image: Any, weights: str | os.PathLike | None = None, **options: Any) -> VolumeResult:
    """Segment one CT volume with a :class:`Segmenter` made for it (``options``: its arguments);
    returns the result in memory, on the input's grid (``.mask``, ``.lung``, ``.probabilities``,
    ``.burden()``); nothing is written."""
    return Segmenter(weights, **options).segment(image)
