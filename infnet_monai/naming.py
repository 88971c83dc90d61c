"""Output names: one rule for the existence check, the write and the summary of every volume.

A volume's *case name* is its file or folder name whole (dots, spaces and non-ASCII characters
kept: TCIA series folders such as ``2.000000-5mm-40805`` hold dots), less a volume suffix
(``.nii.gz``, ``.nii``, ``.dcm``, ``.mha``, ``.mhd``, ``.nrrd``), plus
``_series-<SeriesInstanceUID>`` when a series was chosen in a folder (not for a file). Its
outputs are ``<output_dir>/<case name>_<postfix><ext>``. MONAI's default
``FolderLayout`` cuts a name at its first dot, so the writers use :class:`CaseFolderLayout` and
:func:`case_name_formatter` (the case name the reader put in the image's meta).
"""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path
from typing import Callable, Sequence

from monai.data import FolderLayoutBase
from monai.utils import ImageMetaKey

__all__ = [
    "CASE_NAME_KEY",
    "MASK_POSTFIXES",
    "case_name",
    "strip_suffix",
    "output_file",
    "CaseFolderLayout",
    "case_name_formatter",
    "OutputClash",
    "check_output_names",
]

CASE_NAME_KEY = "case_name"  # meta key: the case name the reader decided
_STRIPPED = (".nii.gz", ".nii", ".dcm", ".mha", ".mhd", ".nrrd")
# postfixes of a mask's and its probabilities' file names, by what the mask holds (``classes``)
MASK_POSTFIXES = {"infection": ("seg", "prob"), "patterns": ("patterns", "patterns_prob")}


def strip_suffix(name: str, suffixes: Sequence[str]) -> str | None:
    """``name`` without the first of ``suffixes`` it ends with (case-insensitive), None when it
    ends with none of them or is nothing but the suffix."""
    lower = name.lower()
    for suffix in suffixes:
        if lower.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return None


def case_name(path: str | os.PathLike, series_uid: str | None = None) -> str:
    """The case name of the volume at ``path`` (see the module docstring); ``series_uid`` names
    the series chosen in a folder and is ignored for a file (a NIfTI or multi-frame DICOM holds
    one volume)."""
    if series_uid and not Path(path).is_dir():
        series_uid = None
    name = Path(path).name
    name = strip_suffix(name, _STRIPPED) or name
    return f"{name}_series-{series_uid}" if series_uid else name


def output_file(case: str, output_dir: str | os.PathLike, postfix: str, ext: str = ".nii.gz") -> Path:
    """``<output_dir>/<case>_<postfix><ext>``."""
    return Path(output_dir) / f"{case}_{postfix}{ext}"


class CaseFolderLayout(FolderLayoutBase):
    """``SaveImage`` folder layout writing ``<output_dir>/<subject>_<postfix><ext>`` with the
    subject kept whole (MONAI's ``FolderLayout`` strips everything after a dot)."""

    def __init__(self, output_dir: str | os.PathLike, postfix: str, extension: str = ".nii.gz") -> None:
        self.output_dir = Path(output_dir)
        self.postfix = postfix
        self.ext = extension if extension.startswith(".") else f".{extension}"

    def filename(self, subject: str | os.PathLike = "subject", idx=None, **kwargs) -> Path:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        return output_file(str(subject), self.output_dir, self.postfix, self.ext)


def case_name_formatter(metadict: dict | None, saver=None) -> dict:
    """``SaveImage`` ``output_name_formatter``: the reader's case name (meta ``case_name``), else
    the case name of ``filename_or_obj``."""
    meta = metadict or {}
    name = meta.get(CASE_NAME_KEY) or case_name(str(meta.get(ImageMetaKey.FILENAME_OR_OBJ, "subject")))
    return {"subject": str(name)}


class OutputClash(ValueError):
    """Two inputs would write one output file, or an output would replace an input."""


def check_output_names(inputs: Sequence[Path], outputs_of: Callable[[Path], list[Path]]) -> dict[Path, list[Path]]:
    """Every input's output files (``outputs_of(input)``, the mask first), after checking all of
    them before any work: raises :class:`OutputClash` naming both paths when two inputs share an
    output or an output is one of the inputs (or a file inside an input folder)."""
    outputs = {path: [Path(o) for o in outputs_of(path)] for path in inputs}
    owners: dict[Path, list[Path]] = defaultdict(list)
    for path, files in outputs.items():
        for file in files:
            owners[file.resolve()].append(path)
    for target, sources in owners.items():
        if len(sources) > 1:
            raise OutputClash(
                f"{sources[0]} and {sources[1]} would both be written to {target}; "
                "segment them into different output folders or rename one"
            )
    resolved = {Path(p).resolve(): p for p in inputs}
    for target in owners:
        for candidate in (target, target.parent):
            if candidate in resolved and (candidate == target or Path(resolved[candidate]).is_dir()):
                raise OutputClash(
                    f"{target}: this output would replace or enter the input {resolved[candidate]}; "
                    "choose an output folder outside the inputs"
                )
    return outputs
