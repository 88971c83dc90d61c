"""Inf-Net family networks, their registry and checkpoint conversion."""

from .blocks import ConvBN, EdgeAttention, PartialDecoder, ReceptiveFieldBlock, ReverseAttention
from .convert import (
    CheckpointMismatchError,
    convert_checkpoint,
    load_authors_checkpoint,
    load_res2net_imagenet,
    read_checkpoint,
)
from .infnet import InfNet
from .registry import NETWORKS, get_network
from .res2net import Res2Net50
from .unet import InfNetUNet

__all__ = [
    "ConvBN",
    "EdgeAttention",
    "PartialDecoder",
    "ReceptiveFieldBlock",
    "ReverseAttention",
    "InfNet",
    "InfNetUNet",
    "Res2Net50",
    "NETWORKS",
    "get_network",
    "CheckpointMismatchError",
    "convert_checkpoint",
    "load_authors_checkpoint",
    "load_res2net_imagenet",
    "read_checkpoint",
]
