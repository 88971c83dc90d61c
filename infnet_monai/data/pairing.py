"""Pairing files of several folders by a name key (stem), with one-line errors naming the folder."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

__all__ = ["index_by_key", "unpaired_message"]


def index_by_key(folder: Path, key: Callable[[Path], str | None]) -> dict[str, Path]:
    """``{key(path): path}`` over the visible files of ``folder`` in name order; None keys are skipped.

    Raises:
        FileNotFoundError: ``folder`` is not a directory.
        ValueError: two files give the same key.
    """
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: folder not found")
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        name = None if path.name.startswith(".") or not path.is_file() else key(path)
        if name is None:
            continue
        if name in found:
            raise ValueError(f"{folder}: '{found[name].name}' and '{path.name}' pair as the same name '{name}'; keep one")
        found[name] = path
    return found


def unpaired_message(folder: Path, names: Sequence[str], what: str) -> str:
    """``"<folder>: no file for N <what>(s) (a, b, ...); ..."`` listing at most five names."""
    names = sorted(names)
    shown = ", ".join(names[:5]) + (" ..." if len(names) > 5 else "")
    return f"{folder}: no file for {len(names)} {what}(s) ({shown}); add them or remove those {what}s"
