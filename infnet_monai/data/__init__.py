"""Datalists: COVID-SemiSeg slice folders and NIfTI volume/label pairs."""

from .nifti_pairs import nifti_pairs_datalist, volume_stem
from .semiseg import attach_maps, semiseg_datalist, split_datalist

__all__ = ["attach_maps", "nifti_pairs_datalist", "semiseg_datalist", "split_datalist", "volume_stem"]
