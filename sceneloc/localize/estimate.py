"""PoseEstimate, the record of one localised image: what the localize loop returns, the poses writers store and
evaluate scores. Kept free of torch so that readers of poses files (the benchmark's child processes, evaluate) do not
load it."""

from __future__ import annotations

from dataclasses import dataclass, field

from sceneloc.geometry import Rigid3

__all__ = ["PoseEstimate"]


@dataclass
class PoseEstimate:
    """The localisation result of one query image; cam_from_world is None when it failed. The poses file writers
    (sceneloc/export) store it; evaluate compares it with ground truth."""

    name: str
    cam_from_world: Rigid3 | None
    num_inliers: int = 0
    inlier_ratio: float = 0.0
    details: dict = field(default_factory=dict)
    """Free per-image extras (time_ms, iterations, ...); must be JSON-serialisable (numpy scalars/arrays are
    converted)."""
