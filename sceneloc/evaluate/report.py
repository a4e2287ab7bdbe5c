"""Evaluation reports: the result JSON, a markdown summary, the error-CDF figure, and the summary table the CLI
prints."""

from __future__ import annotations

import json
import math
from pathlib import Path

from rich.table import Table

from sceneloc.evaluate.metrics import RECALL_THRESHOLDS
from sceneloc.evaluate.plots import plot_error_cdf
from sceneloc.runtime.atomic import write_text_atomic


def with_suffix(prefix: Path, suffix: str) -> Path:
    # Not Path.with_suffix: a prefix such as "runs/ace.v2" must keep its dot.
    return prefix.with_name(prefix.name + suffix)


def strict_json(value):
    """inf/nan -> None, recursively, so that the file is strict JSON (null = infinite error, i.e. failed)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    return value


def write_json(path: str | Path, value) -> None:
    """`value` as strict JSON (strict_json: non-finite numbers become null), indented, written atomically."""
    write_text_atomic(path, json.dumps(strict_json(value), indent=1, allow_nan=False) + "\n")


def _number(value: float, unit: str) -> str:
    return f"{value:.2f} {unit}" if math.isfinite(value) else "∞ (half or more failed)"


def summary_rows(result: dict) -> list[tuple[str, str]]:
    """(metric, formatted value) rows shared by the markdown and terminal tables."""
    rows = [("query images", str(result["n_query"])),
            ("failed (incl. missing)", str(result["n_failed"])),
            ("median translation error", _number(result["median_t_cm"], "cm")),
            ("median rotation error", _number(result["median_r_deg"], "deg"))]
    for key, (t_m, r_deg) in RECALL_THRESHOLDS.items():
        rows.append((f"recall {t_m * 100:g} cm, {r_deg:g} deg", f"{result['recall'][key] * 100:.1f} %"))
    return rows


def metric_table(title: str, rows: list[tuple[str, str]]) -> Table:
    """A two-column rich table (metric, value) of formatted rows."""
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for metric, value in rows:
        table.add_row(metric, value)
    return table


def format_summary_table(result: dict) -> Table:
    """A rich table of the headline numbers of an evaluate_poses() result."""
    return metric_table("Relocalisation accuracy", summary_rows(result))


def report_paths(out_prefix: str | Path) -> list[Path]:
    """The files write_report writes for `out_prefix`: <prefix>.json, <prefix>.md, <prefix>_cdf.png."""
    return [with_suffix(Path(out_prefix), s) for s in (".json", ".md", "_cdf.png")]


def write_report(result: dict, out_prefix: str | Path) -> list[Path]:
    """Writes <prefix>.json (the evaluate_poses() dict, inf as null), <prefix>.md (summary table) and
    <prefix>_cdf.png (error CDFs, labelled with the prefix's name). Returns the three paths."""
    out_prefix = Path(out_prefix)
    json_path, md_path, png_path = report_paths(out_prefix)
    write_json(json_path, result)
    lines = [f"# Relocalisation accuracy: {out_prefix.name}", "", "| metric | value |", "|---|---:|"]
    lines += [f"| {metric} | {value} |" for metric, value in summary_rows(result)]
    lines += ["", "Recall: share of all query images with both errors strictly below the thresholds; failed "
                  "images count as infinite error.", ""]
    write_text_atomic(md_path, "\n".join(lines))
    plot_error_cdf({out_prefix.name: result}, png_path)
    return [json_path, md_path, png_path]
