"""``infnet-monai convert-weights``: authors' checkpoints into plain state dicts."""

from __future__ import annotations

import argparse


def _convert_weights(args: argparse.Namespace) -> int:
    from infnet_monai.networks.convert import convert_checkpoint

    report = convert_checkpoint(args.src, args.dst, network=args.network, overwrite=args.overwrite)
    print(report)
    return 0


def add_convert_weights(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert-weights",
        help="convert an authors' Inf-Net / Semi-Inf-Net / Inf-Net+UNet or Res2Net ImageNet .pth "
        "into a plain state dict for models/model.pt",
    )
    p.add_argument("src", help="source checkpoint (.pth/.pt)")
    p.add_argument("dst", help="destination state dict (.pt)")
    p.add_argument(
        "--network",
        default="auto",
        choices=["auto", "inf_net", "inf_net_unet", "res2net50"],
        help="target network; 'auto' picks it from the checkpoint's keys",
    )
    p.add_argument("--overwrite", action="store_true", help="replace DST if it exists")
    p.set_defaults(func=_convert_weights)
