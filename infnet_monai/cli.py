"""Command-line entry point ``infnet-monai``: argument parsing only.

Every subcommand hands its parsed arguments to a library function; errors that are the user's
to fix (bad input files, missing weights) are printed as one line and give exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence


class UserError(Exception):
    """An error the user can fix; printed as one line without a traceback."""


def _convert_weights(args: argparse.Namespace) -> int:
    from infnet_monai.networks.convert import convert_checkpoint

    report = convert_checkpoint(args.src, args.dst, network=args.network, overwrite=args.overwrite)
    print(report)
    return 0


def _add_convert_weights(sub: argparse._SubParsersAction) -> None:
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


def _evaluate(args: argparse.Namespace) -> int:
    from infnet_monai.metrics.evaluate import FolderEvaluation

    FolderEvaluation(
        args.pred,
        args.label,
        mode=args.mode,
        tolerance_mm=args.tolerance,
        labels=args.labels,
        resample_label=args.resample_label,
        output_file=args.output,
        overwrite=args.overwrite,
    ).run()
    return 0


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="score predictions against labels: NIfTI volumes in mm (Dice, ASD, HD95, NSD) or slice "
        "images by the Inf-Net paper's protocol",
    )
    p.add_argument("--pred", required=True, help="prediction folder (or one file)")
    p.add_argument("--label", required=True, help="label folder (or one file)")
    p.add_argument(
        "--mode",
        default="volume",
        choices=["volume", "slices"],
        help="volume: .nii/.nii.gz masks, metrics in mm; slices: .png/.jpg maps, paper protocol",
    )
    p.add_argument("--tolerance", type=float, default=3.0, metavar="MM", help="NSD tolerance in mm (default 3)")
    p.add_argument(
        "--labels", type=int, nargs="+", default=None, metavar="C", help="class values to score per class (volume)"
    )
    p.add_argument(
        "--resample-label",
        action="store_true",
        help="resample labels onto the prediction grid (nearest) when shape or affine differ",
    )
    p.add_argument("-o", "--output", default=None, help="write the report to this .json or .csv file")
    p.add_argument("--overwrite", action="store_true", help="replace the report file if it exists")
    p.set_defaults(func=_evaluate)


# Each entry adds one subcommand; later features append their own adder here.
SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_convert_weights,
    _add_evaluate,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="infnet-monai", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for add in SUBCOMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (UserError, FileNotFoundError, FileExistsError, ValueError) as exc:
        print(f"infnet-monai {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
