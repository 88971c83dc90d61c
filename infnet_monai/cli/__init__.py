"""Command-line entry point ``infnet-monai``: argument parsing only.

Every subcommand hands its parsed arguments to a library function; errors that are the user's
to fix (bad input files, missing weights) are printed as one line and give exit status 2. Each
subcommand's parser and handler live in one module of this package (``segment``, ``evaluate``,
``slices``, ``weights``; shared arguments in ``arguments``).
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence

from infnet_monai.cli.evaluate import add_evaluate, add_report
from infnet_monai.cli.segment import add_prepare, add_segment, add_summarize
from infnet_monai.cli.slices import add_predict_slices, add_semi_propagate
from infnet_monai.cli.weights import add_convert_weights

__all__ = ["UserError", "SUBCOMMANDS", "build_parser", "main", "entry"]


class UserError(Exception):
    """An error the user can fix; printed as one line without a traceback."""


# Each entry adds one subcommand; later features append their own adder here.
SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    add_convert_weights,
    add_segment,
    add_summarize,
    add_prepare,
    add_predict_slices,
    add_evaluate,
    add_report,
    add_semi_propagate,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="infnet-monai", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="show third-party notices (e.g. optional GPU decoders not installed)")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in SUBCOMMANDS:
        add(sub)
    return parser


def _quiet_optional_decoders() -> None:
    """MONAI announces on every import that the optional GPU DICOM decoder (nvImageCodec) is
    absent, in a log line and a warning; the CPU decoders are used and nothing is wrong."""
    import logging
    import warnings

    logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message="NvImgCodecPydicomReader")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.verbose:
        _quiet_optional_decoders()
    try:
        return int(args.func(args) or 0)
    except (UserError, FileNotFoundError, FileExistsError, ValueError) as exc:
        print(f"infnet-monai {args.command}: error: {exc}", file=sys.stderr)
        return 2


def entry() -> None:
    """The ``infnet-monai`` command: :func:`main`, then exit without the interpreter's teardown of
    torch and MONAI (about 1 s of a short run), once every output is written and the streams and
    logs are flushed."""
    import logging
    import os

    code = main()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)

