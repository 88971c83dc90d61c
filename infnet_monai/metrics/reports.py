"""Report output for folder evaluation: JSON/CSV report files and the plain-text table.

A report is the dict :func:`infnet_monai.metrics.evaluate.evaluate_folders` returns. It goes to
``.json`` (inf written as ``Infinity``) or ``.csv`` (per-case rows, then summary rows whose ``case``
names the statistic; mode, empty-mask policy, and tolerance and counts or the protocol as leading
``#`` lines), written atomically. Values are written as the report holds them (distances in mm,
volumes in ml).
"""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

from infnet_monai.labels import class_folder
from infnet_monai.utils import atomic_output

__all__ = ["report_format", "write_report", "format_report_table"]


def report_format(path: str | os.PathLike) -> str:
    """``"json"`` or ``"csv"``, by the suffix of ``path``; ``ValueError`` for any other suffix."""
    suffix = Path(path).suffix.lower()
    if suffix not in (".json", ".csv"):
        raise ValueError(f"{path}: report must end in .json or .csv")
    return suffix[1:]


def _csv_rows(report: dict) -> tuple[list[str], list[dict]]:
    """Columns and rows for CSV: per-case rows, then summary rows whose ``case`` names the statistic."""
    if "classes" in report:  # per-class slice reports: their rows with a class column
        columns, rows = ["class"], []
        for value, sub in report["classes"].items():
            sub_columns, sub_rows = _csv_rows(sub)
            columns += [c for c in sub_columns if c not in columns]
            rows += [{"class": value, **row} for row in sub_rows]
        return columns, rows
    columns = [k for k in report["cases"][0] if k not in ("pred_file", "label_file", "spacing_mm")]
    columns += ["pred_file", "label_file"]
    rows = [dict(row) for row in report["cases"]]
    if report["mode"] == "volume":
        stats = ("mean", "std", "median", "n_inf", "n_finite", "finite_mean", "finite_std", "finite_median")
        for c, summary in report["summary"].items():
            for stat in stats:
                values = {k: e[stat] for k, e in summary.items() if isinstance(e, dict) and stat in e}
                rows.append({"case": stat, "class": c, **values})
    else:
        for stat in ("mean", "std", "median"):
            rows.append({"case": stat, **{k: v[stat] for k, v in report["summary"]["per_image"].items()}})
        toolbox = report["summary"]["toolbox"]
        rows.append({"case": "max_over_thresholds", **{k: v["max"] for k, v in toolbox.items() if isinstance(v, dict)}})
    return columns, rows


def _csv_comments(report: dict) -> list[str]:
    lines = [f"mode: {report['mode']}", f"empty-mask policy: {report['empty_mask_policy']}"]
    if report["mode"] == "volume":
        lines.append(f"tolerance_mm: {report['tolerance_mm']:g}")
        for c, s in report["summary"].items():
            lines.append(f"class {c}: n={s['n']} n_both_empty={s['n_both_empty']} n_one_empty={s['n_one_empty']}")
    else:
        lines.append(f"protocol: {report['protocol']}")
    return lines


def write_report(report: dict, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write ``report`` as JSON or CSV (by suffix) via a temporary file and rename."""
    fmt = report_format(path)
    with atomic_output(path, overwrite=overwrite) as tmp:
        with open(tmp, "w", newline="") as f:
            if fmt == "json":
                json.dump(report, f, indent=2)
                f.write("\n")
            else:
                for line in _csv_comments(report):
                    f.write(f"# {line}\n")
                columns, rows = _csv_rows(report)
                writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
                writer.writeheader()
                writer.writerows(rows)
    return Path(path)


def _fmt(value) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, float):
        return "inf" if math.isinf(value) else f"{value:.4f}"
    return str(value)


def format_report_table(report: dict) -> str:
    """Plain-text table: one line per case, then mean ± std and median per metric, and the policy."""
    if "classes" in report:
        return "\n".join(
            f"class {value} ({class_folder(int(value))} maps)\n{format_report_table(sub)}"
            for value, sub in report["classes"].items()
        )
    if report["mode"] == "volume":
        keys = ["dice", "asd_mm", "hd95_mm", "nsd", "pred_ml", "label_ml"]
        head = ["case", "class", *keys, "empty"]
    else:
        keys = ["dice", "sensitivity", "specificity", "s_measure", "e_measure", "mae", "dice_at_0.5"]
        head = ["case", *keys]
    table = [head] + [[_fmt(row.get(k)) for k in head] for row in report["cases"]]
    widths = [max(len(r[i]) for r in table) for i in range(len(head))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in table]
    if report["mode"] == "volume":
        lines.append(f"NSD tolerance {report['tolerance_mm']:g} mm")
        for c, s in report["summary"].items():
            lines.append(f"class {c}: n={s['n']}  both empty={s['n_both_empty']}  one empty={s['n_one_empty']}")
            for key in keys:
                e = s[key]
                line = f"  {key:<9} {_fmt(e['mean'])} ± {_fmt(e['std'])}  median {_fmt(e['median'])}"
                if "n_finite" in e and e["n_inf"]:
                    line += f"  finite mean {_fmt(e['finite_mean'])} over {e['n_finite']}"
                lines.append(line)
    else:
        toolbox = report["summary"]["toolbox"]
        lines.append(f"n={len(report['cases'])} images (toolbox protocol)")
        for key in keys:
            e, t = report["summary"]["per_image"][key], toolbox.get(key)
            extra = f"  [mean {_fmt(t['mean'])}, max {_fmt(t['max'])} over thresholds]" if isinstance(t, dict) else ""
            lines.append(f"  {key:<11} {_fmt(e['mean'])} ± {_fmt(e['std'])}  median {_fmt(e['median'])}{extra}")
    lines.append(f"empty-mask policy: {report['empty_mask_policy']}")
    return "\n".join(lines)
