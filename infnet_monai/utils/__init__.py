"""Small helpers shared across the package."""

from .atomic import atomic_output

__all__ = ["atomic_output"]
