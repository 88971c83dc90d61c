"""Ahead-of-time compiled inference networks, built once per machine and cached on disk (CPU).

The inference network (BatchNorm folded, channels-last) is exported (``torch.export``) for
slice batches of one fixed shape ``(B, 3, S, S)`` and compiled by AOTInductor with frozen
weights (oneDNN convolutions with prepacked weights, ReLU and residual additions fused, C++
wrapper) into a package file (``.pt2``, weights included), in fp32 or with bf16 autocast baked
in (CPUs with native bf16: AMX or AVX512-BF16). On the 2-core CPU of ``benchmarks/RESULTS.md`` it
runs a 352x352 slice about 1.3x as fast as the eager network in fp32, and a 256x256 slice 1.7x
as fast as the eager bf16 network in bf16.
Building takes 30-60 s; loading a built package about 0.1-0.5 s, less than loading the weights
into the eager network, so every later run on the machine gains from its first slice.

Packages live in :func:`package_dir`, named by a digest of the weights file, a digest of the
network's source code, the batch, the slice size and the precision, plus the torch version and
the CPU's instruction set: a package is only ever used for the weights, code, shapes and machine
type it was built for. Files are written to a temporary name and renamed: a package is complete
or absent. A new build removes the packages of earlier code for the same weights, shapes,
precision and machine type (left behind by an upgrade; about 70 MB each).

A package is native code that ``dlopen`` runs, so it is used only from a folder that is the
user's own (owned by them, no access for group or others; created with mode 0700) and only when
it is a regular file owned by the user whose digest matches the one recorded when it was built
(``<package>.blake2b``). Anything else is not loaded: a one-line warning, and the network runs
eager (a package failing the check inside the private folder is deleted and, when a build was
asked for, rebuilt).
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import warnings
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from infnet_monai.utils import atomic_output, file_digest
from infnet_monai.utils.digest import cached_file_digest
from infnet_monai.utils.cache import CACHE_ENV, cache_dir
from infnet_monai.utils.cpuinfo import cpuinfo_field
from infnet_monai.utils.errors import one_line

__all__ = [
    "CACHE_ENV",
    "package_dir",
    "private_package_dir",
    "package_path",
    "trusted_package",
    "build_package",
    "PackagedNetwork",
    "packaged_network",
]

# the modules (relative to the package root) whose code the compiled graph is made of: a change in any
# of them needs a new build
_NETWORK_SOURCES = ("networks/infnet", "networks/blocks", "networks/res2net", "networks/convert", "runtime/fuse",
                    "runtime/optimize")


def package_dir() -> Path:
    """Folder of the compiled packages: ``$INFNET_MONAI_CACHE/compiled`` when that variable is
    set, else ``$XDG_CACHE_HOME/infnet_monai/compiled`` (``~/.cache/infnet_monai/compiled``)."""
    return cache_dir("compiled")


def _cpu_tag() -> str:
    """The CPU's vector capability and a digest of its instruction-set flags (Linux)."""
    flags = cpuinfo_field("flags")
    return f"{torch.backends.cpu.get_cpu_capability()}-{hashlib.blake2b(flags.encode(), digest_size=4).hexdigest()}"


PACKAGE_PRECISIONS = ("fp32", "bf16")


def package_path(weights: str | Path, batch: int, size: int, precision: str = "fp32") -> Path:
    """Where the package of the network with ``weights`` for ``(batch, 3, size, size)`` slices
    in ``precision`` is (or would be). The weights' digest is read once per weights file and
    remembered (:func:`~infnet_monai.utils.digest.cached_file_digest`)."""
    if precision not in PACKAGE_PRECISIONS:
        raise ValueError(f"compiled packages run {' or '.join(PACKAGE_PRECISIONS)}, not {precision}")
    weights_digest = hashlib.blake2b(cached_file_digest(weights, digest_size=32).encode(), digest_size=6)
    code_digest = hashlib.blake2b(digest_size=4)
    here = Path(__file__).parents[1]
    for name in _NETWORK_SOURCES:
        code_digest.update((here / f"{name}.py").read_bytes())
    return package_dir() / _PACKAGE_NAME.format(weights=weights_digest.hexdigest(), code=code_digest.hexdigest(),
                                                rest=_package_suffix(batch, size, precision))


# infnet-<weights digest>-<code digest>-b<batch>-<size>px[-bf16]-<torch and CPU tag>.pt2
_PACKAGE_NAME = "infnet-{weights}-{code}-{rest}"


def _package_suffix(batch: int, size: int, precision: str) -> str:
    tag = re.sub(r"[^A-Za-z0-9_-]+", "_", f"torch{torch.__version__}-{_cpu_tag()}")  # no dots: one suffix
    kind = "" if precision == "fp32" else f"-{precision}"
    return f"b{batch}-{size}px{kind}-{tag}.pt2"


def remove_earlier_builds(path: Path) -> list[Path]:
    """Delete the packages (and digest records) beside ``path`` for the same shapes, precision
    and machine type that this code never loads: builds of earlier code for the same weights
    (another code digest), and builds named before the weights and code digests were apart (one
    24-digit digest). Returns what was removed."""
    weights, _, rest = path.name.removeprefix("infnet-").split("-", 2)
    earlier = re.compile(rf"infnet-({re.escape(weights)}-[0-9a-f]{{8}}|[0-9a-f]{{24}})-{re.escape(rest)}")
    removed = []
    for other in sorted(path.parent.glob(f"infnet-*-{rest}")):
        if other.name != path.name and earlier.fullmatch(other.name):
            for stale in (other, _digest_path(other)):
                stale.unlink(missing_ok=True)
            removed.append(other)
    return removed


def private_package_dir() -> Path | None:
    """:func:`package_dir`, created with mode 0700 when missing, if it is the user's own
    (owned by them, no permissions for group or others); otherwise None after a one-line
    warning naming the folder and the fix."""
    folder = package_dir()
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = folder.lstat()
    except OSError as exc:
        warnings.warn(f"{folder}: compiled-network cache unusable ({exc.strerror}); running the network uncompiled")
        return None
    if not hasattr(os, "getuid"):  # no POSIX owners (Windows): the user profile's own folder
        return folder
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        warnings.warn(
            f"{folder}: compiled-network cache is not private to you (owner uid {info.st_uid}, mode "
            f"{stat.S_IMODE(info.st_mode):o}); packages there are not used. Run 'chmod 700 {folder}' if it is "
            f"yours, or set {CACHE_ENV} to a private folder"
        )
        return None
    return folder


def _digest_path(path: Path) -> Path:
    return path.with_name(path.name + ".blake2b")


def _package_digest(path: Path) -> str:
    return file_digest(path, digest_size=32)


def trusted_package(path: Path) -> bool:
    """True when ``path`` is a regular file owned by the user, not writable by group or others,
    whose digest matches the one recorded when this user's build wrote it."""
    try:
        info = path.lstat()
        recorded = _digest_path(path).read_text().strip()
    except OSError:
        return False
    if not stat.S_ISREG(info.st_mode) or info.st_mode & 0o022:
        return False
    if hasattr(os, "getuid") and info.st_uid != os.getuid():
        return False
    return recorded == _package_digest(path)


class _Bf16Autocast(nn.Module):
    """``network`` under CPU bf16 autocast, float32 out: what a bf16 package bakes in."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return self.network(x).float()


# Inductor settings of the packages: frozen weights (constant-folded, oneDNN-prepacked). Measured
# on the 2-core CPU of benchmarks/RESULTS.md (benchmarks/package_settings.py), max-autotune gives
# no faster package: the convolutions are oneDNN calls either way.
PACKAGE_INDUCTOR_CONFIGS = {"freezing": True}


def build_package(
    network: nn.Module, batch: int, size: int, path: str | Path, precision: str = "fp32",
    inductor_configs: dict | None = None,
) -> Path:
    """Export and AOT-compile the eval-mode ``network`` for ``(batch, 3, size, size)`` float32
    slices, in fp32 or under bf16 autocast (``precision``; float32 out either way), into the
    package ``path`` (written atomically) and record its digest beside it. Needs a C++ compiler;
    30-60 s. ``inductor_configs``: None uses :data:`PACKAGE_INDUCTOR_CONFIGS` (other settings
    are for measuring them)."""
    import torch._inductor  # the compiler: imported only when a package is built

    path = Path(path)
    example = torch.zeros(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
    module = _Bf16Autocast(network.eval()) if precision == "bf16" else network.eval()
    with torch.no_grad(), atomic_output(path) as tmp:
        exported = torch.export.export(module, (example,))
        configs = dict(PACKAGE_INDUCTOR_CONFIGS if inductor_configs is None else inductor_configs)
        torch._inductor.aoti_compile_and_package(exported, package_path=str(tmp), inductor_configs=configs)
        digest = _package_digest(tmp)
        with atomic_output(_digest_path(path)) as record:
            record.write_text(digest + "\n")
    return path


def _load_runner(path: Path) -> Callable[[torch.Tensor], torch.Tensor]:
    """The package's forward on one input tensor, through the C++ loader that the public
    ``torch._inductor.aoti_load_package`` wraps: importing ``torch._inductor`` for it would add
    1.0-1.3 s to every run's start on the 2-core CPU of ``benchmarks/RESULTS.md``."""
    loader = torch._C._aoti.AOTIModelPackageLoader(str(path), "model", False, 1, -1)
    return lambda x: loader.run([x])[0]


class PackagedNetwork(nn.Module):
    """A compiled package run on slice batches of its fixed shape ``(batch, 3, size, size)``.

    Smaller batches (a volume's last one) are padded with zero slices and larger ones split, so
    one package serves a whole run. Anything else (other slice sizes or channel counts, other
    dtypes or devices; autocast around an fp32 package, and around a bf16 one autocast other
    than bf16) goes to the eager network, made by ``make_network`` at its first use; it also
    reports bad input. Output: float32 ``(B, out_channels, size, size)``, the eager network's
    eval output in the package's ``precision``.
    """

    def __init__(
        self, runner: Callable[[torch.Tensor], torch.Tensor], batch: int, size: int,
        make_network: Callable[[], nn.Module], network: nn.Module | None = None, precision: str = "fp32",
    ) -> None:
        super().__init__()
        # plain attributes, not submodules: the package holds its own weights
        object.__setattr__(self, "runner", runner)
        object.__setattr__(self, "make_network", make_network)
        object.__setattr__(self, "_network", network)
        self.batch = batch
        self.size = size
        self.precision = precision

    @property
    def network(self) -> nn.Module:
        """The eager network (built at the first call that needs it)."""
        if self._network is None:
            object.__setattr__(self, "_network", self.make_network())
        return self._network

    def _fits(self, x: torch.Tensor) -> bool:
        if torch.is_autocast_enabled("cpu"):  # the caller's autocast must be what the package runs
            autocast_ok = self.precision == "bf16" and torch.get_autocast_dtype("cpu") == torch.bfloat16
        else:
            autocast_ok = True
        return (
            x.dim() == 4
            and tuple(x.shape[1:]) == (3, self.size, self.size)
            and x.dtype == torch.float32
            and x.device.type == "cpu"
            and autocast_ok
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._fits(x):
            return self.network(x)
        n = x.shape[0]
        if n > self.batch:
            return torch.cat([self(part) for part in x.split(self.batch)])
        if n < self.batch:
            x = torch.cat([x, x.new_zeros((self.batch - n, *x.shape[1:]))])
        with torch.inference_mode():
            out = self.runner(x.contiguous(memory_format=torch.channels_last))[:n]
        # outside inference mode a normal tensor, as the eager network gives
        return out if torch.is_inference_mode_enabled() else out.clone()


def packaged_network(
    weights: str | Path, make_network: Callable[[], nn.Module], batch: int, size: int, build: bool,
    precision: str = "fp32",
) -> nn.Module:
    """The network with ``weights`` run from its compiled package for ``(batch, 3, size, size)``
    slices in ``precision`` (fp32, or bf16 autocast baked in): the package built before on this
    machine, else one built now when ``build`` (30-60 s; ``make_network()`` gives the eval CPU
    fp32 network to compile), else ``make_network()`` itself. A failed build or load warns in one
    line and returns the eager network."""
    folder = private_package_dir()
    if folder is None:
        return make_network()
    path = folder / package_path(weights, batch, size, precision).name
    network = None
    if (path.exists() or path.is_symlink()) and not trusted_package(path):
        warnings.warn(
            f"{path}: compiled network not built by you here or changed since (owner, mode or digest); "
            "not loaded, removed" + (" and rebuilt" if build else "")
        )
        for stale in (path, _digest_path(path)):
            stale.unlink(missing_ok=True)
    if not path.is_file():
        network = make_network()
        if not build:
            return network
        try:
            build_package(network, batch, size, path, precision)
        except Exception as exc:  # noqa: BLE001 - no C++ compiler, unsupported op, full disk...
            reason = one_line(exc, with_type=True, first_only=True)
            warnings.warn(f"building the compiled network failed ({reason}); running the network uncompiled")
            return network
        remove_earlier_builds(path)
    try:
        runner = _load_runner(path)
    except Exception as exc:  # noqa: BLE001 - truncated or foreign file
        reason = one_line(exc, with_type=True, first_only=True)
        warnings.warn(
            f"{path}: compiled network could not be loaded ({reason}); running the network uncompiled (delete the "
            "file to rebuild it)"
        )
        return network if network is not None else make_network()
    return PackagedNetwork(runner, batch, size, make_network, network, precision).eval()
