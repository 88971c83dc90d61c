"""The processor's description from ``/proc/cpuinfo`` (Linux; empty elsewhere)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["cpuinfo_field"]


def cpuinfo_field(name: str) -> str:
    """Value of the first ``name`` line of ``/proc/cpuinfo`` (e.g. ``"model name"``, ``"flags"``),
    or ``""`` when there is none or the file cannot be read."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.split(":", 1)[0].strip() == name:
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""
