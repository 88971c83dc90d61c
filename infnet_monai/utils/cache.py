"""The package's cache folder (compiled networks, training runs), outside any work tree."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["CACHE_ENV", "cache_dir"]

CACHE_ENV = "INFNET_MONAI_CACHE"


def cache_dir(*parts: str) -> Path:
    """``$INFNET_MONAI_CACHE/<parts>`` when that variable is set, else
    ``$XDG_CACHE_HOME/infnet_monai/<parts>`` (``~/.cache/infnet_monai/<parts>``). Not created."""
    root = os.environ.get(CACHE_ENV)
    if not root:
        root = str(Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "infnet_monai")
    return Path(root).joinpath(*parts)
