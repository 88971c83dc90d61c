"""The processor's description from ``/proc/cpuinfo`` (Linux; empty elsewhere)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["cpuinfo_field", "native_bf16"]


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


# CPU flags of native bf16 arithmetic: Intel AMX tiles (Sapphire Rapids on) and AVX512-BF16
# (Cooper Lake, AMD Zen 4 on); oneDNN runs bf16 convolutions on them at 2-5x the fp32 rate.
BF16_FLAGS = ("amx_bf16", "avx512_bf16")


def native_bf16() -> bool:
    """True when the CPU computes in bf16 natively (one of :data:`BF16_FLAGS` in its flags)."""
    flags = set(cpuinfo_field("flags").split())
    return any(flag in flags for flag in BF16_FLAGS)
