"""Cohort runs: split the inputs into parts, keep a per-part ledger, merge the ledgers.

A run over many volumes may be split into ``N`` parts run as separate processes (job arrays with
``--num-parts N --part-id I``, or the ranks of ``torchrun``). Each part takes a deterministic
share of the sorted inputs (:func:`select_part`, MONAI's ``partition_dataset``) and keeps its own
ledger in the output folder (:class:`RunLedger`): ``summary.csv`` (one row per volume) and
``failures.csv`` (one row per failed volume, with its one-line error), or
``summary.part-I-of-N.csv`` / ``failures.part-I-of-N.csv`` / ``burden.part-I-of-N.csv`` for a
part, rewritten atomically after every volume, so that parts never write one file and a killed
part loses nothing but the volume it was on. :func:`summarize` merges the parts' files into
``summary.csv``, ``failures.csv`` and ``burden.csv``.
"""

from __future__ import annotations

import csv
import io
import os
import re
from pathlib import Path
from typing import Any, Sequence, TypeVar

import numpy as np

from infnet_monai.utils.atomic import atomic_output

__all__ = [
    "SUMMARY_COLUMNS",
    "FAILURE_COLUMNS",
    "RunLedger",
    "part_suffix",
    "part_from_environment",
    "rank_device",
    "merge_when_all_parts_done",
    "pending_datalist",
    "shard_sampler",
    "LedgerHandler",
    "select_part",
    "summary_line",
    "summary_row",
    "summarize",
]

T = TypeVar("T")

SUMMARY_COLUMNS = (
    "input", "output", "status", "slices", "inferred_slices", "seconds", "infected_ml", "lung_ml", "involvement_percent",
)
FAILURE_COLUMNS = ("input", "error")
_PART = re.compile(r"^(?P<kind>summary|failures|burden|burden_patterns)\.part-(?P<part>\d+)-of-(?P<parts>\d+)\.csv$")


def select_part(items: Sequence[T], num_parts: int = 1, part_id: int = 0) -> list[T]:
    """Part ``part_id`` (0-based) of ``num_parts`` of ``items``: every ``num_parts``-th item from
    ``part_id`` (``monai.data.partition_dataset``, no shuffle, uneven parts allowed), so parts are
    disjoint, together whole, and the same in every process that sees the same list."""
    from monai.data import partition_dataset

    if num_parts < 1 or not 0 <= part_id < num_parts:
        raise ValueError(f"--part-id {part_id} must lie in 0..{num_parts - 1} (--num-parts {num_parts})")
    if num_parts == 1:
        return list(items)
    if len(items) < num_parts:  # partition_dataset refuses; the same rule leaves the last parts empty
        return list(items)[part_id::num_parts]
    return list(partition_dataset(list(items), num_partitions=num_parts, shuffle=False, even_divisible=False)[part_id])


def part_from_environment() -> tuple[int, int] | None:
    """``(num_parts, part_id)`` from ``torchrun``'s ``WORLD_SIZE``/``RANK``, None outside it."""
    world, rank = os.environ.get("WORLD_SIZE"), os.environ.get("RANK")
    if world is None or rank is None or int(world) < 2:
        return None
    return int(world), int(rank)


def rank_device() -> str | None:
    """``cuda:LOCAL_RANK`` for a ``torchrun`` rank on a GPU machine (one GPU per rank), else None."""
    import torch

    local = os.environ.get("LOCAL_RANK")
    return f"cuda:{int(local)}" if local is not None and part_from_environment() and torch.cuda.is_available() else None


def merge_when_all_parts_done(output_dir: str | os.PathLike, print_summary: bool = False) -> dict[str, Any] | None:
    """Under ``torchrun``: wait for every rank (a gloo process group, made here when there is
    none), then rank 0 merges the parts' tables (:func:`summarize`), prints its one line with
    ``print_summary`` and returns the counts; None elsewhere and on the other ranks."""
    import torch.distributed as dist

    if part_from_environment() is None or not dist.is_available():
        return None
    created = not dist.is_initialized()
    if created:
        dist.init_process_group(backend="gloo")
    try:
        dist.barrier()
        if dist.get_rank() != 0:
            return None
        counts = summarize(output_dir)
        if print_summary:
            print(summary_line(output_dir, counts))
        return counts
    finally:
        if created:
            dist.destroy_process_group()


def part_suffix(num_parts: int = 1, part_id: int = 0) -> str:
    """``""`` for a whole run, ``".part-I-of-N"`` for part I of N (the ledgers' infix)."""
    return "" if num_parts <= 1 else f".part-{part_id}-of-{num_parts}"


def summary_row(
    input_path: str | os.PathLike, output: str | os.PathLike, mask: Any, lung: Any = None, seconds: float | None = None,
    inferred_slices: int | None = None, report: dict | None = None, status: str = "done",
) -> dict[str, Any]:
    """One summary row for a volume's mask ``(1, X, Y, Z)`` MetaTensor on the input grid: its
    slices, seconds, infected mL and, with lung labels (1 right, 2 left, 3 rest of the thorax, on
    the same grid) or a burden ``report``, the lung mL and percent involvement as the burden
    report counts them (:func:`~infnet_monai.report.burden.infection_burden`)."""
    from infnet_monai.report.burden import infection_burden
    from infnet_monai.utils.geometry import affine_of, axial_axis, volume_array, voxel_volume_ml

    affine = np.asarray(affine_of(mask))
    values = volume_array(mask)
    if report is None and lung is not None:
        report = infection_burden(lung, mask, affine=affine)
    infected = report["infection_ml"]["total"] if report else int(np.count_nonzero(values)) * voxel_volume_ml(affine)
    return {
        "input": str(input_path),
        "output": str(output),
        "status": status,
        "slices": int(values.shape[axial_axis(affine)]),
        "inferred_slices": "" if inferred_slices is None else int(inferred_slices),
        "seconds": "" if seconds is None else f"{seconds:.2f}",
        "infected_ml": f"{infected:.2f}",
        "lung_ml": f"{report['lung_ml']['total']:.2f}" if report else "",
        "involvement_percent": f"{report['percent_involved']['total']:.3f}" if report else "",
    }


def _read_rows(path: Path, columns: Sequence[str]) -> list[dict[str, str]]:
    """Rows of a ledger CSV (none when missing); one of other columns is refused."""
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames and tuple(reader.fieldnames) != tuple(columns):
            raise ValueError(f"{path}: existing CSV has other columns than the run's {path.stem.split('.')[0]} table; "
                             "move it away or choose another -o")
        return list(reader)


def _write_rows(path: Path, columns: Sequence[str], rows: Sequence[dict[str, Any]]) -> None:
    """Write ``rows`` sorted by input (atomic)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    writer.writerows(sorted(rows, key=lambda r: str(r[columns[0]])))
    with atomic_output(path, overwrite=True) as tmp:
        tmp.write_text(buffer.getvalue())


class RunLedger:
    """The summary and failure tables of one run (or one part of a run) in ``output_dir``.

    Rows of earlier runs are kept (a rerun replaces the rows of the volumes it redoes); a volume
    recorded as done leaves the failure table. Each call rewrites the files atomically; the failure
    table exists only while some volume has failed."""

    def __init__(self, output_dir: str | os.PathLike, suffix: str = "") -> None:
        self.summary_path = Path(output_dir) / f"summary{suffix}.csv"
        self.failures_path = Path(output_dir) / f"failures{suffix}.csv"
        self.check()

    def check(self) -> None:
        """Refuse foreign files where the tables go (before any work)."""
        self._summary = {r["input"]: r for r in _read_rows(self.summary_path, SUMMARY_COLUMNS)}
        self._failures = {r["input"]: r for r in _read_rows(self.failures_path, FAILURE_COLUMNS)}

    def has(self, input_path: str | os.PathLike) -> bool:
        return str(input_path) in self._summary

    def done(self, row: dict[str, Any]) -> None:
        """Record a volume segmented (or kept) by this run."""
        self._summary[row["input"]] = row
        _write_rows(self.summary_path, SUMMARY_COLUMNS, list(self._summary.values()))
        if self._failures.pop(row["input"], None) is not None:
            self._write_failures()

    def failed(self, input_path: str | os.PathLike, error: str) -> None:
        """Record a volume that failed, with its one-line error."""
        self._failures[str(input_path)] = {"input": str(input_path), "error": error}
        self._write_failures()

    def _write_failures(self) -> None:
        if self._failures:
            _write_rows(self.failures_path, FAILURE_COLUMNS, list(self._failures.values()))
        else:
            self.failures_path.unlink(missing_ok=True)


def summarize(output_dir: str | os.PathLike) -> dict[str, Any]:
    """Merge the parts' ``summary``/``failures``/``burden`` tables in ``output_dir`` into the whole
    run's (rows already there kept unless a part has the same volume; the parts' tables stay, so a
    later merge after more parts ran gives the whole again). A failure of a volume that a part or
    run finished later is dropped. Returns counts: ``volumes``, ``failed``, ``infected_ml``, the
    ``parts`` found and those ``missing`` (part numbers of ``N`` with no table: not run yet)."""
    out = Path(output_dir)
    if not out.is_dir():
        raise ValueError(f"{out}: no such output folder; pass the -o folder of the segment run")
    parts: dict[str, list[tuple[Path, int, int]]] = {}
    for path in sorted(out.iterdir()):
        match = _PART.match(path.name)
        if match:
            parts.setdefault(match["kind"], []).append((path, int(match["part"]), int(match["parts"])))
    counts = {kind: {n for _, _, n in found} for kind, found in parts.items()}
    if any(len(n) > 1 for n in counts.values()):
        raise ValueError(f"{out}: tables of runs split into different numbers of parts ({counts}); merge one run at a time")
    for kind, found in parts.items():
        whole = out / f"{kind}.csv"
        key = "case" if kind.startswith("burden") else "input"
        columns: list[str] | None = None
        rows: dict[str, dict[str, str]] = {}
        for path in [whole] + [p for p, _, _ in found]:
            if not path.is_file():
                continue
            with open(path, newline="") as f:
                reader = csv.DictReader(f)
                if columns is not None and list(reader.fieldnames or []) != columns:
                    raise ValueError(f"{path}: other columns than {found[0][0].name}; cannot merge it")
                columns = list(reader.fieldnames or [])
                rows.update({r[key]: r for r in reader})
        if kind == "failures":  # a volume a later part or run finished is no failure
            summary_rows = _read_rows(out / "summary.csv", SUMMARY_COLUMNS) + [
                r for p, _, _ in parts.get("summary", []) for r in _read_rows(p, SUMMARY_COLUMNS)
            ]
            for done in summary_rows:
                rows.pop(done["input"], None)
        if rows:
            _write_rows(whole, columns, list(rows.values()))
        else:
            whole.unlink(missing_ok=True)
    summary = _read_rows(out / "summary.csv", SUMMARY_COLUMNS)
    failures = _read_rows(out / "failures.csv", FAILURE_COLUMNS)
    seen = {(part, n) for found in parts.values() for _, part, n in found}
    total = next(iter(counts.get("summary", counts.get("failures", {1}))), 1)
    return {
        "volumes": len(summary),
        "failed": len(failures),
        "infected_ml": sum(float(r["infected_ml"] or 0) for r in summary),
        "parts": sorted(p for p, _ in seen),
        "missing": sorted(set(range(total)) - {p for p, _ in seen}) if seen else [],
    }


def summary_line(output_dir: str | os.PathLike, counts: dict) -> str:
    """One line on a merged cohort run (:func:`summarize`'s counts)."""
    line = (f"{output_dir}: {counts['volumes']} volume(s) in summary.csv, {counts['failed']} failed"
            f"{' (failures.csv)' if counts['failed'] else ''}, infection {counts['infected_ml']:.1f} mL in all")
    if counts["missing"]:
        line += f"; parts not run yet: {', '.join(map(str, counts['missing']))}"
    return line


def pending_datalist(datalist: Sequence[dict], output_dir: str | os.PathLike | None, postfix: str = "seg") -> list[dict]:
    """The items of ``datalist`` (``{"image": path}``) whose mask ``<case>_<postfix>.nii.gz`` is
    not in ``output_dir`` yet: a rerun of a bundle run does the rest (masks are written atomically,
    so one that exists is whole). ``output_dir`` None: all of them."""
    from infnet_monai.naming import case_name, output_file

    if output_dir is None:
        return list(datalist)
    return [item for item in datalist if not output_file(case_name(item["image"]), output_dir, postfix).is_file()]


def shard_sampler(dataset: Sequence) -> Any:
    """This rank's share of ``dataset``: MONAI's ``DistributedSampler`` (no shuffle, uneven shares,
    every item on exactly one rank); when there are fewer items than ranks (a rerun with little
    left), which it refuses, item ``rank`` alone or nothing."""
    import torch.distributed as dist
    from monai.data import DistributedSampler

    world, rank = dist.get_world_size(), dist.get_rank()
    if len(dataset) >= world:
        return DistributedSampler(dataset, even_divisible=False, shuffle=False)
    return [rank] if rank < len(dataset) else []


class LedgerHandler:
    """Evaluator handler writing the summary table of a bundle run: a row per volume after its
    iteration (the mask saved by ``SaveImaged(savepath_in_metadict=True)``, the lung labels under
    ``lung_key`` when kept). Under ``torch.distributed`` each rank writes its own part's table
    (``summary.part-RANK-of-WORLD.csv``, merged by rank 0 or by ``infnet-monai summarize``)."""

    def __init__(self, output_dir: str | os.PathLike, pred_key: str = "pred", lung_key: str = "lung") -> None:
        self.output_dir, self.pred_key, self.lung_key = output_dir, pred_key, lung_key
        self._ledger: RunLedger | None = None
        self._started = 0.0

    def attach(self, engine: Any) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.ITERATION_STARTED, self._iteration_started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def _iteration_started(self, engine: Any) -> None:
        import time

        self._started = time.perf_counter()

    def ledger(self) -> RunLedger:
        """The table of this process's part (made on first use, when the process group exists)."""
        import torch.distributed as dist

        if self._ledger is None:
            parts = (dist.get_world_size(), dist.get_rank()) if dist.is_available() and dist.is_initialized() else (1, 0)
            self._ledger = RunLedger(self.output_dir, part_suffix(*parts))
        return self._ledger

    def __call__(self, engine: Any) -> None:
        import time

        seconds = time.perf_counter() - self._started
        outputs = engine.state.output if isinstance(engine.state.output, list) else [engine.state.output]
        for item in outputs:
            mask = item[self.pred_key]
            meta = mask.meta
            image = item.get("image")
            inferred = int(image.shape[-1]) if image is not None else None
            self.ledger().done(summary_row(
                meta.get("filename_or_obj", ""), meta.get("saved_to", ""), mask, item.get(self.lung_key),
                seconds / len(outputs), inferred,
            ))
