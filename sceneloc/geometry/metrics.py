"""Pose-error metrics between an estimated and a ground-truth `cam_from_world`."""

from __future__ import annotations

import numpy as np

from sceneloc.geometry.rigid import Rigid3


def pose_errors(estimate: Rigid3, truth: Rigid3) -> tuple[float, float]:
    """Returns (translation error in metres between camera centres, rotation error in degrees)."""
    t_err = float(np.linalg.norm(estimate.center - truth.center))
    r_rel = estimate.rotation @ truth.rotation.T
    cos = np.clip((np.trace(r_rel) - 1.0) / 2.0, -1.0, 1.0)
    return t_err, float(np.degrees(np.arccos(cos)))
