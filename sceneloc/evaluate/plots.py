"""Figures of evaluation results (matplotlib, drawn off-screen): cumulative error distributions and top-down
camera trajectories. Figures are built with matplotlib.figure.Figure, so no pyplot state or display is used."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, NullFormatter

from sceneloc.runtime.errors import InputError
from sceneloc.runtime.atomic import atomic_output
from sceneloc.geometry import Rigid3
from sceneloc.localize.estimate import PoseEstimate

# Errors of exactly 0 cannot sit on a log axis; they are drawn at this floor instead.
_LOG_FLOOR = {"t_err_cm": 1e-2, "r_err_deg": 1e-3}
# The 5 cm / 5 deg thresholds of the usual benchmark tables, drawn as dotted guides.
_MARKED = {"t_err_cm": 5.0, "r_err_deg": 5.0}


def save_figure(fig: Figure, path: str | Path) -> None:
    path = Path(path)
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".").lower() or "png", bbox_inches="tight")


def plot_error_cdf(results: dict[str, dict], path: str | Path) -> None:
    """Cumulative distributions of translation error (cm) and rotation error (deg), side by side on log x axes,
    one curve per label. results: label -> evaluate_poses() dict. The y axis is the percentage of *all* query
    images within the error, so failed images keep a curve below 100 %."""
    fig = Figure(figsize=(11, 4.2), dpi=120, layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, key, median_key, title, unit in ((axes[0], "t_err_cm", "median_t_cm", "Translation error", "cm"),
                                             (axes[1], "r_err_deg", "median_r_deg", "Rotation error", "deg")):
        curves = []
        for label, result in results.items():
            errors = np.array([p[key] for p in result["per_image"]], dtype=np.float64)
            finite = np.sort(np.maximum(errors[np.isfinite(errors)], _LOG_FLOOR[key]))
            median = result[median_key]
            legend = f"{label} (median {median:.3g} {unit})" if math.isfinite(median) else f"{label} (median ∞)"
            curves.append((finite, np.arange(1, len(finite) + 1) / max(len(errors), 1) * 100.0, legend))
        values = np.concatenate([c[0] for c in curves]) if curves else np.array([])
        lo = 10 ** math.floor(math.log10(values.min())) if len(values) else _LOG_FLOOR[key]
        hi = 10 ** math.ceil(math.log10(max(values.max(), _MARKED[key] * 2))) if len(values) else 100.0
        if key == "r_err_deg":
            hi = min(hi, 180.0)  # no rotation error is larger
        for finite, share, legend in curves:
            # Each curve rises from 0 % at its smallest error and stays flat up to the right edge; a method that
            # localised nothing keeps its (empty) legend entry.
            x = np.concatenate([finite[:1], finite, [hi]]) if len(finite) else finite
            y = np.concatenate([[0.0], share, share[-1:]]) if len(finite) else finite
            ax.step(x, y, where="post", linewidth=1.8, label=legend)
        ax.set_xscale("log")
        ax.set_xlim(lo, hi)
        ax.set_ylim(0, 100)
        ax.axvline(_MARKED[key], color="0.4", linestyle=":", linewidth=1)
        ax.text(_MARKED[key], 2, f" {_MARKED[key]:g} {unit}", color="0.3", fontsize=8)
        ax.set_xlabel(f"{title.lower()} ({unit}, log scale)")
        ax.set_ylabel("query images within error (%)")
        ax.set_title(title)
        ax.grid(True, which="major", alpha=0.4)
        ax.grid(True, which="minor", alpha=0.12)
        ax.legend(loc="upper left", fontsize=8)
    save_figure(fig, path)


def plot_trajectory(truth: dict[str, Rigid3], estimates: list[PoseEstimate], path: str | Path) -> None:
    """Top-down view of ground-truth vs estimated camera centres on the two world axes along which the
    ground-truth centres spread most, with a thin line from each estimate to its ground truth. The view is fitted
    to the ground truth; estimates far outside it are counted in the title. Failed images are marked at their
    ground-truth position. Raises InputError for an estimate without ground truth."""
    if not truth:
        raise InputError(None, "no ground-truth poses to plot")
    names = sorted(truth)
    gt = np.array([truth[n].center for n in names])
    index = {n: i for i, n in enumerate(names)}
    est_pts, gt_of_est, failed = [], [], []
    for est in estimates:
        if est.name not in index:
            raise InputError(None, f"estimated image {est.name!r} has no ground-truth pose")
        if est.cam_from_world is None:
            failed.append(gt[index[est.name]])
        else:
            est_pts.append(est.cam_from_world.center)
            gt_of_est.append(gt[index[est.name]])

    # Ties (e.g. a single camera) fall back to the x-z plane, the floor of a y-down (OpenCV-like) world.
    axes = np.sort(np.lexsort(([1, 0, 1], gt.max(0) - gt.min(0)))[-2:])
    est_2d = np.array(est_pts).reshape(-1, 3)[:, axes]
    gt_2d, gt_of_est_2d, failed_2d = gt[:, axes], np.array(gt_of_est).reshape(-1, 3)[:, axes], \
        np.array(failed).reshape(-1, 3)[:, axes]

    lo, hi = gt_2d.min(0), gt_2d.max(0)
    margin = max(0.15 * float((hi - lo).max()), 0.25)
    lo, hi = lo - margin, hi + margin
    outside = int(np.sum(np.any((est_2d < lo) | (est_2d > hi), axis=1)))

    span = hi - lo
    width = 7.5
    height = float(np.clip(width * span[1] / span[0], 3.5, 10.0))
    fig = Figure(figsize=(width, height + 0.8), dpi=120, layout="constrained")
    ax = fig.subplots()
    ax.add_collection(LineCollection(np.stack([est_2d, gt_of_est_2d], 1), colors="tab:red", linewidths=0.6,
                                     alpha=0.7, label="estimate to ground truth"))
    # Names sort in capture order for the usual frame-NNNNNN naming, so the line shows the trajectory.
    ax.plot(gt_2d[:, 0], gt_2d[:, 1], color="0.6", linewidth=0.6, zorder=2)
    ax.scatter(gt_2d[:, 0], gt_2d[:, 1], s=9, c="black", label=f"ground truth ({len(gt_2d)})", zorder=3)
    ax.scatter(est_2d[:, 0], est_2d[:, 1], s=9, c="tab:blue", label=f"estimate ({len(est_2d)})", zorder=4)
    if len(failed_2d):
        ax.scatter(failed_2d[:, 0], failed_2d[:, 1], s=30, marker="x", c="tab:orange",
                   label=f"failed ({len(failed_2d)})", zorder=5)
    ax.set_xlim(lo[0], hi[0])
    ax.set_ylim(lo[1], hi[1])
    ax.set_aspect("equal", adjustable="box")
    axis_names = "xyz"
    ax.set_xlabel(f"world {axis_names[axes[0]]} (m)")
    ax.set_ylabel(f"world {axis_names[axes[1]]} (m)")
    title = f"Camera centres, top-down ({axis_names[axes[0]]}-{axis_names[axes[1]]} plane)"
    if outside:
        title += f"\n{outside} estimate(s) outside this view"
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    save_figure(fig, path)


def plot_recall_against_size(rows: list[dict], path: str | Path, family_marker: str = "-budget-") -> None:
    """Recall at (5 cm, 5 deg) against map size (MB, log axis) of one scene's benchmark rows (bench result dicts:
    method, map_bytes, recall). Methods named "<family><family_marker><setting>" join their family's plain method
    in one line, ordered by size (the budget curve); every other method is a lone labelled point."""
    families: dict[str, list[tuple[float, float]]] = {}
    for row in rows:
        family = row["method"].split(family_marker)[0]
        families.setdefault(family, []).append((row["map_bytes"] / 1e6, row["recall"]["5cm5deg"] * 100.0))
    fig = Figure(figsize=(6.5, 4.2), dpi=120, layout="constrained")
    ax = fig.subplots()
    for family, points in families.items():
        size, recall = np.array(sorted(points)).T
        ax.plot(size, recall, marker="o", linewidth=1.6 if len(points) > 1 else 0, label=family)
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_ylim(0, 102)
    ax.set_xlabel("map size (MB, log scale)")
    ax.set_ylabel("recall at (5 cm, 5°) (%)")
    ax.grid(True, which="major", alpha=0.4)
    ax.grid(True, which="minor", alpha=0.12)
    ax.legend(loc="lower right", fontsize=8)
    save_figure(fig, path)
