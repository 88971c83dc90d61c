"""``python -m infnet_monai.cli``: the ``infnet-monai`` command (e.g. under ``torchrun``)."""

from infnet_monai.cli import entry

entry()
