"""Network registry: build a network by name (``inf_net``, ``inf_net_unet``) from configs or the CLI."""

from __future__ import annotations

from torch import nn

from monai.utils import ComponentStore

from .infnet import InfNet
from .unet import InfNetUNet

__all__ = ["NETWORKS", "get_network"]

NETWORKS = ComponentStore("networks", "Inf-Net family networks, by name")
NETWORKS.add("inf_net", "Inf-Net (Res2Net-50, binary infection); also Semi-Inf-Net", InfNet)
NETWORKS.add("inf_net_unet", "Inf-Net + UNet multi-class (background, GGO, consolidation)", InfNetUNet)


def get_network(name: str, **kwargs) -> nn.Module:
    """Instantiate the registered network ``name`` with ``kwargs``."""
    if name not in NETWORKS:
        raise ValueError(f"unknown network {name!r}; registered: {', '.join(NETWORKS.names)}")
    return NETWORKS[name](**kwargs)
