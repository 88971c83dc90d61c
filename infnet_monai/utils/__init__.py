"""Small helpers shared across the package."""

from .atomic import atomic_output
from .writer import AtomicNibabelWriter

__all__ = ["atomic_output", "AtomicNibabelWriter"]
