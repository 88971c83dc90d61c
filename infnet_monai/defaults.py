"""The library's default settings in one light module (no torch or MONAI import), read by the
chain, the runtime policy, the evaluation and the command line, so that every entry point
shows and uses the same values.
"""

from __future__ import annotations

DEFAULT_WINDOW_HU = (-1250.0, 250.0)
"""HU window mapped to [0, 1] before the network (the authors' slices: lung window)."""

DEFAULT_THRESHOLD = 0.5
"""Probability above which a voxel is infection."""

DEFAULT_TOLERANCE_MM = 3.0
"""NSD tolerance (mm) used when none is given."""

GPU_BATCH_SIZE = 32
"""Slices per network call on a GPU (keeps it busy)."""

CPU_BATCH_SIZE = 2
"""Slices per network call on the CPU: on the 2-core CPU of ``benchmarks/RESULTS.md`` 2 or 4 slices
per call are fastest; 8 leave the caches and take 15-30 % longer per slice."""

COMPILE_MIN_SLICES = 2000
"""Slices over which building the compiled package pays for itself within one CPU run: on the
2-core CPU of ``benchmarks/RESULTS.md`` a build takes 30-60 s and the package saves about 25 ms per
352x352 slice, so a build is repaid after 1,200-2,400 slices; later runs load the package in about
a second and gain from the first slice."""

GRID_ATOL_MM = 1e-2
"""Two volumes lie on the same grid when their shapes are equal and their affines differ by at
most this much (mm) in every entry: well below any voxel, above the float32 rounding of affines
written by other tools."""
