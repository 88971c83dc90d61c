"""Small helpers shared across the package. ``AtomicNibabelWriter`` (a MONAI writer) is imported
on first use, so that commands that only move files and tables (``summarize``) start without
torch and MONAI."""

from .atomic import OutputDirError, atomic_folder, atomic_output, prepare_output_dir, remove_stale_temporaries
from .cache import cache_dir
from .digest import file_digest

__all__ = [
    "OutputDirError",
    "atomic_output",
    "atomic_folder",
    "prepare_output_dir",
    "remove_stale_temporaries",
    "cache_dir",
    "file_digest",
    "AtomicNibabelWriter",
]


def __getattr__(name: str):
    if name == "AtomicNibabelWriter":
        from .writer import AtomicNibabelWriter

        return AtomicNibabelWriter
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
