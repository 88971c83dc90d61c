"""Small helpers shared across the package."""

from .atomic import atomic_output
from .cache import cache_dir
from .writer import AtomicNibabelWriter

__all__ = ["atomic_output", "cache_dir", "AtomicNibabelWriter"]
