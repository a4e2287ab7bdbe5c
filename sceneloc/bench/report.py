"""Benchmark outputs from results rows: results.json (strict JSON), report.md (per suite: an accuracy table with
scenes as rows and methods as columns, a cost table, recalls at every threshold, the plots) and the terminal
summary table."""

from __future__ import annotations

import math
from pathlib import Path

from rich.table import Table

from sceneloc.evaluate import RECALL_THRESHOLDS
from sceneloc.runtime.atomic import write_text_atomic

MEASUREMENT_NOTES = """\
How the numbers were measured:
- **accuracy**: median translation / rotation error over all query images and the recall at 5 cm, 5 deg (share of
  all query images with both errors strictly below); a failed image counts as an infinite error, so a median is
  infinite once half the images fail.
- **map time**: wall time in a fresh child process from reading the mapping frames to the saved map file
  (interpreter start-up and imports excluded; results.json's `map_process_s` has the child's whole life).
- **mapping peak RSS**: peak resident memory (Linux VmHWM) of that child process, imports included.
- **map size**: bytes of the map file.
- **CPU load**: the 1-minute load average when the row was finished; timings taken above the core count were
  slowed by other processes.
- **query time**: per image, from the decoded image to the pose (reading the file excluded); median over the
  query images (the first one also warms up the model; the median is not swayed by it)."""


def _finite(value) -> bool:
    return value is not None and math.isfinite(value)


def _error(value, unit: str) -> str:
    """unit: " cm" or "°" (no space before a degree sign)."""
    return f"{value:.2f}{unit}" if _finite(value) else "∞"


def accuracy_cell(row: dict) -> str:
    """'0.52 cm / 0.14°, 98 %': median translation / rotation error, recall at 5 cm, 5 deg."""
    return (f"{_error(row['median_t_cm'], ' cm')} / {_error(row['median_r_deg'], '°')}, "
            f"{row['recall']['5cm5deg'] * 100:.0f} %")


def _query_time(row: dict) -> str:
    ms = row["query_ms_median"]
    return f"{ms:.0f} ms ({1000 / ms:.1f} img/s)" if _finite(ms) and ms > 0 else "–"


def _suite_section(suite: str, rows: list[dict]) -> list[str]:
    scenes = list(dict.fromkeys(r["scene"] for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    by_key = {(r["scene"], r["method"]): r for r in rows}
    first = {s: next(r for r in rows if r["scene"] == s) for s in scenes}
    lines = [f"## Suite `{suite}`", "", "Median translation / rotation error, recall at 5 cm, 5°:", "",
             "| scene | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    for s in scenes:
        label = f"{s} ({first[s]['resolution']}, {first[s]['n_map']} mapping / {first[s]['n_query']} query)"
        cells = [accuracy_cell(by_key[s, m]) if (s, m) in by_key else "–" for m in methods]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "| scene | method | map time | mapping peak RSS | map size | query time (median) | device | "
                  "CPU load |", "|---|---|--:|--:|--:|--:|---|--:|"]
    for r in rows:
        load = f"{r['load_avg_1min']:.1f}" if r["load_avg_1min"] is not None else "–"
        lines.append(f"| {r['scene']} | {r['method']} | {r['map_s']:.1f} s | {r['map_peak_rss_mb']:.0f} MB | "
                     f"{r['map_bytes'] / 1e6:.2f} MB | {_query_time(r)} | {r['device']} ({r['device_name']}) | "
                     f"{load} |")
    keys = list(RECALL_THRESHOLDS)
    lines += ["", "Recall at every threshold (translation, rotation):", "",
              "| scene | method | " + " | ".join(keys) + " | failed |", "|---|---|" + "--:|" * (len(keys) + 1)]
    for r in rows:
        lines.append(f"| {r['scene']} | {r['method']} | "
                     + " | ".join(f"{r['recall'][k] * 100:.1f} %" for k in keys) + f" | {r['n_failed']} |")
    for s in scenes:
        lines += ["", f"![{s}: error CDF of every method](plots/{suite}_{s}_cdf.png)", "",
                  f"![{s}: recall against map size](plots/{suite}_{s}_size.png)", "",
                  f"{s} trajectories (top-down): " + ", ".join(
                      f"[{m}](plots/{suite}_{s}_{m}_trajectory.png)" for m in methods if (s, m) in by_key)]
    return lines + [""]


def write_markdown_report(path: str | Path, rows: list[dict]) -> None:
    """report.md: a header (commit, version, date), then one section per suite in the rows' order."""
    lines = ["# sceneloc benchmark", ""]
    if rows:
        lines += [f"commit `{rows[0]['commit'] or 'unknown'}`, sceneloc {rows[0]['sceneloc_version']}, "
                  f"{rows[0]['date']}, {rows[0]['cpu_count']} CPU cores", ""]
    for suite in dict.fromkeys(r["suite"] for r in rows):
        lines += _suite_section(suite, [r for r in rows if r["suite"] == suite])
    lines += [MEASUREMENT_NOTES, ""]
    write_text_atomic(path, "\n".join(lines))


def format_results_table(rows: list[dict]) -> Table:
    """A rich table of every row's headline numbers, for the terminal."""
    table = Table(title="sceneloc bench")
    for name in ("scene", "method", "median t / r", "5cm5°", "map s", "RSS MB", "map MB", "ms/query"):
        table.add_column(name, justify="left" if name in ("scene", "method") else "right")
    for r in rows:
        ms = r["query_ms_median"]
        table.add_row(f"{r['suite']}/{r['scene']}", r["method"],
                      f"{_error(r['median_t_cm'], ' cm')} / {_error(r['median_r_deg'], '°')}",
                      f"{r['recall']['5cm5deg'] * 100:.0f} %", f"{r['map_s']:.1f}", f"{r['map_peak_rss_mb']:.0f}",
                      f"{r['map_bytes'] / 1e6:.2f}", f"{ms:.0f}" if _finite(ms) else "–")
    return table
