"""Small helpers shared across the package."""

from .atomic import OutputDirError, atomic_folder, atomic_output, prepare_output_dir, remove_stale_temporaries
from .cache import cache_dir
from .digest import file_digest
from .writer import AtomicNibabelWriter

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
