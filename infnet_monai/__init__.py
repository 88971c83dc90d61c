"""Inf-Net COVID-19 lung infection segmentation for chest CT, built on MONAI."""

__version__ = "0.1.0"
