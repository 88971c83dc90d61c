"""Inf-Net COVID-19 lung infection segmentation for chest CT, built on MONAI.

``infnet_monai.segment(path_or_image)`` segments one CT volume in memory with the shipped model
(:func:`infnet_monai.segmenter.segment`); :class:`infnet_monai.segmenter.Segmenter` keeps the model
for many. Imported lazily: ``import infnet_monai`` stays light.
"""

__version__ = "0.1.0"

__all__ = ["segment", "Segmenter"]


def __getattr__(name: str):
    if name in __all__:
        from infnet_monai import segmenter

        return getattr(segmenter, name)
    raise AttributeError(f"module 'infnet_monai' has no attribute {name!r}")
