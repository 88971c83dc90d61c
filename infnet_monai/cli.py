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


def _report(args: argparse.Namespace) -> int:
    from infnet_monai.report.run import make_report

    report = make_report(
        args.image, args.mask, lung_mask=args.lung_mask, out_dir=args.out_dir, csv_path=args.csv,
        case=args.case, overwrite=args.overwrite,
    )
    pct, sev = report["percent_involved"], report["severity_score"]
    print(
        f"{report['case']}: lung {report['lung_ml']['total']:.0f} mL, infection "
        f"{report['infection_ml']['total']:.1f} mL ({pct['total']:.1f} %), severity {sev['total']}/8 -> "
        + ", ".join(report["outputs"].values())
    )
    return 0


def _add_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="infection burden (lung/infection mL, percent involved, CT severity score) as JSON, CSV row "
        "and QC PNG montage for a CT and an infection mask on the same grid",
    )
    p.add_argument("--image", required=True, help="CT volume in HU (NIfTI or other image file)")
    p.add_argument("--mask", required=True, help="infection mask (> 0 = infection), same grid as --image")
    p.add_argument("--lung-mask", help="lung labels (1 right, 2 left, or binary); default: computed from HU")
    p.add_argument("-o", "--out-dir", default=".", help="folder for <case>_burden.json and <case>_qc.png")
    p.add_argument("--csv", help="CSV collecting one row per case (default: OUT_DIR/burden.csv)")
    p.add_argument("--case", help="case name (default: image file name without suffix)")
    p.add_argument("--overwrite", action="store_true", help="replace existing JSON/PNG of the case")
    p.set_defaults(func=_report)


# Each entry adds one subcommand; later features append their own adder here.
SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_convert_weights,
    _add_report,
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
