"""RANSAC-PnP: a camera pose from 2D-3D correspondences, with poselib or OpenCV's USAC behind one interface.

Both backends use adaptive stopping (the number of hypotheses follows the best inlier ratio found so far), so
80-90 % outliers are handled, unlike a fixed budget of a few dozen hypotheses. Whatever the backend, the
returned inlier mask is recomputed from the final pose with one rule (point in front of the camera and
reprojection error below the threshold, in pixels), so inlier counts are comparable across backends.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np
import poselib

from sceneloc.runtime.errors import InputError
from sceneloc.geometry import Camera, Rigid3

BACKENDS = ("poselib", "opencv")
MIN_POINTS = 4
"""A pose is over-determined only from 4 correspondences on: fewer inputs or fewer final inliers give no pose."""


@dataclass
class SolverConfig:
    """RANSAC-PnP settings (shared by both backends unless a field says otherwise)."""

    backend: str = "poselib"
    """"poselib" (LO-RANSAC with P3P, then robust Levenberg-Marquardt) or "opencv" (cv2.solvePnPRansac with
    USAC_MAGSAC, then cv2.solvePnPRefineLM)."""
    inlier_threshold_px: float = 10.0
    """Maximum reprojection error of an inlier, in pixels of the image the 2D points live in. 10 px suits
    640x480 images (DSAC*/ACE); scale it with the image size."""
    max_iterations: int = 10000
    """Cap on the number of RANSAC hypotheses; adaptive stopping usually ends much earlier."""
    min_iterations: int = 100
    """Hypotheses drawn before adaptive stopping may end the loop (poselib only: OpenCV's USAC has no such
    setting)."""
    confidence: float = 0.999
    """Probability of having drawn at least one all-inlier sample, for adaptive stopping."""
    refine: bool = True
    """Non-linear least-squares refinement of the pose on the RANSAC inliers (poselib: Cauchy-robust bundle
    adjustment; OpenCV: solvePnPRefineLM). poselib's local optimisation inside RANSAC runs either way."""
    seed: int = 0
    """Random seed of the hypothesis sampler (poselib only: OpenCV's USAC uses a fixed internal seed)."""

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise InputError(None, f"unknown PnP backend {self.backend!r} (expected one of {', '.join(BACKENDS)})")
        if not self.inlier_threshold_px > 0:
            raise InputError(None, f"PnP inlier threshold must be > 0 px, got {self.inlier_threshold_px}")
        if not 0 < self.confidence < 1:
            raise InputError(None, f"PnP confidence must be in (0, 1), got {self.confidence}")
        if not 1 <= self.min_iterations <= self.max_iterations:
            raise InputError(None, f"PnP iterations need 1 <= min ({self.min_iterations}) <= max "
                                   f"({self.max_iterations})")


@dataclass
class PnPResult:
    """Outcome of one solve. cam_from_world is None when no pose was found (then the counts may be zero)."""

    cam_from_world: Rigid3 | None
    num_inliers: int
    inlier_ratio: float
    """num_inliers / number of finite input correspondences (rows with NaN are not correspondences: a structure
    map's unmatched keypoints)."""
    iterations: int
    """RANSAC hypotheses drawn; -1 where the backend does not report it (OpenCV's USAC)."""
    inlier_mask: np.ndarray = field(repr=False)
    """(N,) bool over the input correspondences, from the final pose."""


def solve_pnp(points2d: np.ndarray, points3d: np.ndarray, camera: Camera, config: SolverConfig) -> PnPResult:
    """Estimates cam_from_world from correspondences.

    points2d: (N, 2) float64 pixels (OpenCV convention, in the image `camera` describes);
    points3d: (N, 3) float64 world points. Rows with NaN/inf are never inliers. Never raises on a failed solve:
    fewer than 4 usable points, or no pose supported by 4 inliers, gives cam_from_world None.
    """
    points2d = np.asarray(points2d, dtype=np.float64).reshape(-1, 2)
    points3d = np.asarray(points3d, dtype=np.float64).reshape(-1, 3)
    if len(points2d) != len(points3d):
        raise ValueError(f"{len(points2d)} 2D points but {len(points3d)} 3D points")
    n = len(points2d)
    finite = np.isfinite(points2d).all(1) & np.isfinite(points3d).all(1)
    if finite.sum() < MIN_POINTS:
        return PnPResult(None, 0, 0.0, 0, np.zeros(n, dtype=bool))
    p2, p3 = np.ascontiguousarray(points2d[finite]), np.ascontiguousarray(points3d[finite])
    solve = _solve_poselib if config.backend == "poselib" else _solve_opencv
    cam_from_world, iterations = solve(p2, p3, camera, config)
    mask = np.zeros(n, dtype=bool)
    if cam_from_world is not None:
        mask[finite] = _inliers(cam_from_world, p2, p3, camera, config.inlier_threshold_px)
    num_inliers = int(mask.sum())
    if num_inliers < MIN_POINTS:
        cam_from_world = None
    return PnPResult(cam_from_world, num_inliers, num_inliers / int(finite.sum()), iterations, mask)


def _solve_poselib(p2: np.ndarray, p3: np.ndarray, camera: Camera, config: SolverConfig
                   ) -> tuple[Rigid3 | None, int]:
    pl_camera = poselib.Camera("PINHOLE", [camera.fx, camera.fy, camera.cx, camera.cy], camera.width, camera.height)
    ransac_opt = {"max_reproj_error": config.inlier_threshold_px, "max_iterations": config.max_iterations,
                  "min_iterations": config.min_iterations, "success_prob": config.confidence, "seed": config.seed}
    # poselib refines on the RANSAC inliers inside estimate_absolute_pose; zero iterations switches that off.
    bundle_opt = {} if config.refine else {"max_iterations": 0}
    pose, info = poselib.estimate_absolute_pose(p2, p3, pl_camera, ransac_opt, bundle_opt)
    if info["num_inliers"] < MIN_POINTS or not np.all(np.isfinite(pose.Rt)):
        return None, int(info["iterations"])
    return Rigid3(np.array(pose.R), np.array(pose.t).reshape(3)), int(info["iterations"])


def _solve_opencv(p2: np.ndarray, p3: np.ndarray, camera: Camera, config: SolverConfig
                  ) -> tuple[Rigid3 | None, int]:
    K = camera.K
    try:
        ok, rvec, tvec, inliers = cv2.solvePnPRansac(
            p3, p2, K, None, iterationsCount=config.max_iterations, reprojectionError=config.inlier_threshold_px,
            confidence=config.confidence, flags=cv2.USAC_MAGSAC)
    except cv2.error:
        return None, -1
    if not ok or inliers is None or len(inliers) < MIN_POINTS:
        return None, -1
    if config.refine:
        idx = inliers.ravel()
        rvec, tvec = cv2.solvePnPRefineLM(p3[idx], p2[idx], K, None, rvec, tvec)
    return Rigid3(cv2.Rodrigues(rvec)[0], tvec.reshape(3)), -1


def _inliers(cam_from_world: Rigid3, p2: np.ndarray, p3: np.ndarray, camera: Camera, threshold_px: float
             ) -> np.ndarray:
    """(N,) bool: in front of the camera and reprojecting within threshold_px."""
    points_cam = cam_from_world.apply(p3)
    in_front = points_cam[:, 2] > 1e-9
    with np.errstate(divide="ignore", invalid="ignore"):
        err = np.linalg.norm(camera.project(points_cam) - p2, axis=1)
    return in_front & (err < threshold_px)
