"""Accuracy of estimated poses against ground truth: per-image errors, median errors and recall at thresholds."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from sceneloc.runtime.errors import InputError
from sceneloc.geometry import Rigid3, pose_errors
from sceneloc.localize.estimate import PoseEstimate

RECALL_THRESHOLDS: dict[str, tuple[float, float]] = {
    "1cm1deg": (0.01, 1), "2cm2deg": (0.02, 2), "5cm5deg": (0.05, 5),
    "10cm5deg": (0.10, 5), "25cm2deg": (0.25, 2), "50cm5deg": (0.5, 5),
}
"""Recall keys -> (translation threshold in metres, rotation threshold in degrees); an image counts when both
errors are strictly below (as ACE's evaluation does)."""


MIN_COVERAGE = 0.5
"""The smallest fraction of the ground-truth images a poses file must estimate to be scored (check_coverage)."""


def check_coverage(estimates: list[PoseEstimate], truth: dict[str, Rigid3], poses_path: str | Path,
                   gt_path: str | Path) -> None:
    """InputError naming both files when the estimates (named as the ground truth's frames) cover fewer than
    MIN_COVERAGE of the ground-truth images: those are the poses of another split or scene, and scoring them would
    count every other image as a failure, or compare them with the wrong poses where frame names repeat across
    splits (an ACE root's train/ and test/ both start at frame-000000). `localize` estimates every query image."""
    covered = sum(est.name in truth for est in estimates)
    if covered < MIN_COVERAGE * len(truth):
        raise InputError(poses_path, f"estimates {covered} of the {len(truth)} ground-truth images of {gt_path}, "
                                     f"fewer than {MIN_COVERAGE:.0%}: the poses of another split or scene? (check "
                                     f"--split and --gt)")


def evaluate_poses(estimates: list[PoseEstimate], truth: dict[str, Rigid3]) -> dict:
    """Compares estimates with ground-truth cam_from_world poses, keyed by image name.

    Returns {"n_query": len(truth), "n_failed": failed + missing, "n_missing", "median_t_cm", "median_r_deg",
    "recall": {key of RECALL_THRESHOLDS: fraction 0..1}, "per_image": [{name, status ("ok" | "failed" |
    "missing"), t_err_cm, r_err_deg, num_inliers, inlier_ratio}, ...] sorted by name}. Failed and missing images
    have infinite errors: they lower every recall and raise the medians (which are inf once half the images fail).
    Raises InputError when an estimate has no ground truth, an image is estimated twice, or truth is empty.
    """
    if not truth:
        raise InputError(None, "no ground-truth poses to evaluate against")
    by_name: dict[str, PoseEstimate] = {}
    for est in estimates:
        if est.name not in truth:
            raise InputError(None, f"estimated image {est.name!r} has no ground-truth pose")
        if est.name in by_name:
            raise InputError(None, f"image {est.name!r} was estimated twice")
        by_name[est.name] = est

    per_image = []
    for name in sorted(truth):
        est = by_name.get(name)
        if est is None or est.cam_from_world is None:
            t_err, r_err = math.inf, math.inf
            status = "missing" if est is None else "failed"
        else:
            t_err, r_err = pose_errors(est.cam_from_world, truth[name])
            status = "ok"
        per_image.append({"name": name, "status": status, "t_err_cm": t_err * 100.0, "r_err_deg": r_err,
                          "num_inliers": 0 if est is None else int(est.num_inliers),
                          "inlier_ratio": 0.0 if est is None else float(est.inlier_ratio)})

    t_cm = np.array([p["t_err_cm"] for p in per_image])
    r_deg = np.array([p["r_err_deg"] for p in per_image])
    recall = {key: float(np.mean((t_cm < t_m * 100.0) & (r_deg < r_max)))
              for key, (t_m, r_max) in RECALL_THRESHOLDS.items()}
    n_missing = sum(p["status"] == "missing" for p in per_image)
    return {
        "n_query": len(truth),
        "n_failed": sum(p["status"] != "ok" for p in per_image),
        "n_missing": n_missing,
        "median_t_cm": float(np.median(t_cm)),
        "median_r_deg": float(np.median(r_deg)),
        "recall": recall,
        "per_image": per_image,
    }

