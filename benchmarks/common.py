"""Shared pieces of the benchmarks: test volumes, random weights, timing, peak memory.

Nothing here is downloaded: the network has random weights (speed and memory do not depend on
their values) and the volumes are the shared real DICOM series resampled to the wanted slice
count when it is present, else a synthetic chest phantom.

``python benchmarks/common.py peak --volume V --weights W [--plain]`` runs the whole pipeline on
one volume in a fresh process and prints its peak resident memory (used by the benchmarks).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

SHARED_SERIES = REPO.parent / "shared" / "data" / "ct-dicom" / "lung-pet-ct-dx-A0001-chest-5mm-lung"
GFLOP_PER_SLICE = 27.7  # 2 x 13.84 G multiply-accumulates per 352x352 slice (networks.complexity)
DEFAULT_WORK_DIR = Path(tempfile.gettempdir()) / "infnet_monai_bench"


def set_threads(threads: int | None) -> int:
    """Use ``threads`` intra-op threads (default: torch's, one per core); returns the count."""
    if threads:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def machine_line() -> str:
    """CPU model, cores, torch version and the current 1-minute load average."""
    from infnet_monai.utils.cpuinfo import cpuinfo_field

    model = cpuinfo_field("model name") or platform.processor() or platform.machine()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (
        f"{model}, {os.cpu_count()} cores, {gpu}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.2f}"
    )


# ------------------------------------------------------------------------------------------
# test data
# ------------------------------------------------------------------------------------------
def _phantom_volume(slices: int) -> tuple[np.ndarray, np.ndarray]:
    """512x512 chest phantom (0.8 mm pixels) with lungs in the middle 80 % of ``slices``."""
    from infnet_monai.data.phantoms import affine_for, chest_phantom

    spacing = (0.8, 0.8, 300.0 / slices)
    lung_part = max(2, int(round(0.8 * slices)))
    chest = chest_phantom((512, 512, lung_part), spacing)
    body = np.where(chest > -950, 40.0, -1000.0).astype(np.float32)[:, :, :1]  # no lung
    below = (slices - lung_part) // 2
    vol = np.concatenate([np.repeat(body, below, 2), chest, np.repeat(body, slices - lung_part - below, 2)], 2)
    return vol.round().astype(np.int16), affine_for(spacing, "LPS")


def _real_volume(slices: int) -> tuple[np.ndarray, np.ndarray]:
    """The shared 64-slice chest CT, linearly resampled along z to ``slices`` slices."""
    from scipy import ndimage

    from infnet_monai.transforms import LoadCT

    img = LoadCT(ensure_channel_first=False)(str(SHARED_SERIES))
    data, affine = np.asarray(img), np.asarray(img.affine, dtype=np.float64)
    if slices != data.shape[2]:
        data = ndimage.zoom(data, (1, 1, slices / data.shape[2]), order=1)
        affine = affine.copy()
        affine[:3, 2] *= img.shape[2] / slices
    return np.round(data).astype(np.int16), affine


def bench_volume(slices: int, work_dir: Path = DEFAULT_WORK_DIR) -> Path:
    """A cached 512x512x``slices`` int16 chest CT NIfTI (real series if present, else phantom)."""
    source = "real" if SHARED_SERIES.is_dir() else "phantom"
    path = Path(work_dir) / f"chest_{source}_{slices}.nii.gz"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        data, affine = _real_volume(slices) if source == "real" else _phantom_volume(slices)
        tmp = path.with_name(f".{path.name}")
        nib.save(nib.Nifti1Image(data, affine), str(tmp))
        os.replace(tmp, path)
    return path


def random_weights(work_dir: Path = DEFAULT_WORK_DIR) -> Path:
    """A random InfNet state dict (seed 0) whose final bias puts the logits' median near 0 on a
    chest slice, so that masks are neither empty nor full."""
    path = Path(work_dir) / "random_infnet.pt"
    if path.exists():
        return path
    from infnet_monai.networks import InfNet
    from infnet_monai.transforms.chain import ct_preprocessing

    torch.manual_seed(0)
    net = InfNet().eval()
    item = ct_preprocessing(slice_crop=False)({"image": str(bench_volume(8, work_dir))})
    with torch.no_grad():
        logits = net(item["image"][..., 4][None].as_tensor())
        net.reverse_attention2.predict.bn.bias.sub_(logits.median())
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), path)
    return path


# ------------------------------------------------------------------------------------------
# timing
# ------------------------------------------------------------------------------------------
@dataclass
class Timing:
    """Median wall and CPU (all threads of this process) seconds over the repeats."""

    wall: float
    cpu: float
    walls: list

    def __str__(self) -> str:
        return f"{self.wall:.2f} s (cpu {self.cpu:.2f} s; runs {', '.join(f'{w:.2f}' for w in self.walls)})"


def timed(fn: Callable[[], Any], repeats: int = 3, warmup: int = 0) -> tuple[Timing, Any]:
    """Run ``fn`` ``warmup`` + ``repeats`` times; median wall and process CPU seconds, last result."""
    result = None
    for _ in range(warmup):
        result = fn()
    walls, cpus = [], []
    for _ in range(repeats):
        cpu, wall = time.process_time(), time.perf_counter()
        result = fn()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return Timing(statistics.median(walls), statistics.median(cpus), walls), result


def model_runner(
    network: torch.nn.Module, image: torch.Tensor, batch_size: int, dtype: torch.dtype | None = None
) -> Callable[[], None]:
    """A function running ``network`` alone over every slice of ``image`` ``(1 or 3, S, S, Z)`` in
    batches of ``batch_size`` (a single channel is converted to the network input beforehand,
    outside the timed function); ``dtype``: under CPU autocast to it (None: fp32)."""
    from infnet_monai.transforms.chain import network_input_batch

    slices = image.as_tensor() if hasattr(image, "as_tensor") else image
    slices = network_input_batch(slices.permute(3, 0, 1, 2).contiguous())

    def run() -> None:
        with torch.inference_mode(), torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            for start in range(0, slices.shape[0], batch_size):
                network(slices[start : start + batch_size])

    return run


def use_fresh_package_cache(work_dir: Path = DEFAULT_WORK_DIR) -> Path:
    """Point the compiled-package cache of this process (and its children) at a new empty folder
    under ``work_dir``, so that a package is built, and timed, by this benchmark run."""
    from infnet_monai.runtime.packaged import CACHE_ENV

    Path(work_dir).mkdir(parents=True, exist_ok=True)
    os.environ[CACHE_ENV] = tempfile.mkdtemp(prefix="package_cache_", dir=work_dir)
    return Path(os.environ[CACHE_ENV])


def package_seconds(weights: Path, batch_size: int) -> tuple[float, float]:
    """(build, load) seconds of the compiled package for ``batch_size`` slices per call: the first
    :func:`load_network` with ``compile=True`` (weights read, network exported and compiled), then
    a second load that finds the package built (what every later run pays)."""
    from infnet_monai.runtime import load_network

    start = time.perf_counter()
    load_network(weights, "cpu", compile=True, batch_size=batch_size)
    build = time.perf_counter() - start
    start = time.perf_counter()
    load_network(weights, "cpu", compile=None, batch_size=batch_size)
    return build, time.perf_counter() - start


def interleaved(runs: dict[str, Callable[[], Any]], repeats: int) -> dict[str, Timing]:
    """Median timings of several functions run in turn (``repeats`` rounds after one warm-up
    round), so that drifts of a shared machine hit them all alike."""
    walls: dict[str, list] = {k: [] for k in runs}
    cpus: dict[str, list] = {k: [] for k in runs}
    for round_ in range(repeats + 1):
        for key, fn in runs.items():
            cpu, wall = time.process_time(), time.perf_counter()
            fn()
            if round_:
                walls[key].append(time.perf_counter() - wall)
                cpus[key].append(time.process_time() - cpu)
    return {k: Timing(statistics.median(walls[k]), statistics.median(cpus[k]), walls[k]) for k in runs}


def cpu_bf16_supported() -> bool:
    """True when oneDNN runs bf16 convolutions natively on this CPU (AVX512-BF16 or AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


# ------------------------------------------------------------------------------------------
# the pipeline, timed by stage
# ------------------------------------------------------------------------------------------
@dataclass
class PipelineRun:
    """One volume through the pipeline: seconds per stage, slices in and inferred, the mask."""

    preprocess: float
    infer_post: float
    save: float
    slices: int
    inferred: int
    mask: np.ndarray
    item: dict

    @property
    def total(self) -> float:
        return self.preprocess + self.infer_post + self.save


def pipeline_parts(
    weights: Path,
    fast: bool = True,
    device: str = "cpu",
    batch_size: int | None = None,
    slice_crop: bool | None = None,
    compile: bool = False,
):
    """(network, preprocessing, postprocessing, inferer) as the CLI builds them (its
    :class:`~infnet_monai.segmenter.Segmenter`); ``fast=False`` gives the unoptimised fp32 path as
    before these optimisations (plain eval network, 3-channel volume, every slice inferred,
    MONAI's SliceInferer with 8 slices per call). ``slice_crop`` overrides the slice crop of
    either; ``compile``: the fast network from its compiled package (built if missing: see
    :func:`package_seconds`), else the eager one."""
    from monai.inferers import SliceInferer

    from infnet_monai.runtime import load_network
    from infnet_monai.segmenter import Segmenter
    from infnet_monai.transforms.chain import NETWORK_SIZE, ct_postprocessing, ct_preprocessing

    if fast:
        segmenter = Segmenter(weights, device=device, batch_size=batch_size, compile=compile,
                              slice_crop=True if slice_crop is None else slice_crop)
        return segmenter.network, segmenter.preprocessing, segmenter.postprocessing, segmenter.inferer
    network = load_network(weights, device, optimize=False)
    pre = ct_preprocessing(slice_crop=bool(slice_crop), network_input=True)
    # MONAI's own SliceInferer, as before: MetaTensor slices straight into the network
    inferer = SliceInferer(roi_size=(NETWORK_SIZE,) * 2, sw_batch_size=batch_size or 8, spatial_dim=2, sw_device=device)
    return network, pre, ct_postprocessing(pre), inferer


def run_pipeline(path: Path, parts, out_dir: Path) -> PipelineRun:
    """Read, preprocess, infer, postprocess and write the mask of ``path``, timing each stage."""
    from infnet_monai.inference import infer_volume, mask_saver

    network, pre, post, inferer = parts
    t0 = time.perf_counter()
    item = pre({"image": str(path)})
    t1 = time.perf_counter()
    result = infer_volume(item, network, inferer, post)
    t2 = time.perf_counter()
    mask_saver(out_dir)(result.item["pred"])
    t3 = time.perf_counter()
    mask = result.item["pred"][0].numpy()
    return PipelineRun(t1 - t0, t2 - t1, t3 - t2, mask.shape[-1], result.slices, mask, result.item)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two binary masks (1.0 when both are empty)."""
    a, b = np.asarray(a) > 0, np.asarray(b) > 0
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2 * (a & b).sum() / total)


# ------------------------------------------------------------------------------------------
# peak memory, one fresh process per configuration
# ------------------------------------------------------------------------------------------
def peak_memory_gb(
    volume: Path, weights: Path, fast: bool = True, threads: int | None = None, slice_crop: bool | None = None,
    compile: bool = False,
) -> dict:
    """Peak resident memory (GB) and seconds of the whole pipeline on ``volume`` in a new process
    (``compile``: the fast network from its compiled package, built before)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "peak", "--volume", str(volume), "--weights", str(weights)]
    if not fast:
        cmd.append("--plain")
    if compile:
        cmd.append("--compile")
    if slice_crop is not None:
        cmd.append("--slice-crop" if slice_crop else "--no-slice-crop")
    if threads:
        cmd += ["--threads", str(threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"peak memory run failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _high_water_gb() -> float:
    """Peak resident memory of this process image in GB (``VmHWM``; unlike ``ru_maxrss`` it
    does not include the parent's pages at fork time)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1e6  # kB -> GB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def _peak_main(args: argparse.Namespace) -> None:
    set_threads(args.threads)
    baseline = _high_water_gb()
    parts = pipeline_parts(Path(args.weights), fast=not args.plain, slice_crop=args.slice_crop, compile=args.compile)
    with tempfile.TemporaryDirectory() as out:
        run = run_pipeline(Path(args.volume), parts, Path(out))
    peak = _high_water_gb()
    print(json.dumps({
        "peak_gb": round(peak, 3), "imports_gb": round(baseline, 3), "seconds": round(run.total, 1),
        "slices": run.slices, "inferred": run.inferred,
    }))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="helper process of the benchmarks")
    parser.add_argument("what", choices=["peak"])
    parser.add_argument("--volume", required=True)
    parser.add_argument("--weights", required=True)
    parser.add_argument("--plain", action="store_true", help="unoptimised fp32 path")
    parser.add_argument("--compile", action="store_true", help="the fast network from its compiled package")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--slice-crop", action=argparse.BooleanOptionalAction, default=None)
    _peak_main(parser.parse_args())
