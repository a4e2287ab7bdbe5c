"""RANSAC-PnP on synthetic correspondences with a known pose: both backends, heavy outlier ratios, failures."""

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from sceneloc.runtime.errors import InputError
from sceneloc.geometry import Camera, Rigid3, pose_errors
from sceneloc.solve import SolverConfig, solve_pnp

# fx != fy and an off-centre principal point, so that a backend mixing them up cannot pass.
CAMERA = Camera(640, 480, fx=510.0, fy=560.0, cx=300.0, cy=262.0)


def make_problem(outlier_ratio: float, n: int = 1000, seed: int = 0):
    """n correspondences, the first round(outlier_ratio * n) outliers: wrong scene coordinates drawn in the scene's
    bounding box, as a regression network makes them. Inliers carry 0.5 px Gaussian noise."""
    rng = np.random.default_rng(seed)
    truth = Rigid3(Rotation.from_rotvec(rng.normal(size=3) * 0.6).as_matrix(), rng.normal(size=3))
    pixels = rng.uniform([0, 0], [CAMERA.width - 1, CAMERA.height - 1], (n, 2))
    points3d = truth.inverse().apply(CAMERA.unproject(pixels, rng.uniform(0.8, 6.0, n)))
    points2d = pixels + rng.normal(scale=0.5, size=(n, 2))
    k = int(round(outlier_ratio * n))
    points3d[:k] = rng.uniform(points3d.min(0), points3d.max(0), (k, 3))
    return points2d, points3d, truth, k


@pytest.mark.parametrize("outlier_ratio", [0.5, 0.8])
@pytest.mark.parametrize("backend", ["poselib", "opencv"])
def test_recovers_pose_with_outliers(backend, outlier_ratio):
    points2d, points3d, truth, k = make_problem(outlier_ratio)
    result = solve_pnp(points2d, points3d, CAMERA, SolverConfig(backend=backend))
    assert result.cam_from_world is not None
    t_err, r_err = pose_errors(result.cam_from_world, truth)
    assert t_err < 0.01 and r_err < 0.1
    assert result.inlier_ratio == pytest.approx(1 - outlier_ratio, abs=0.02)
    assert result.num_inliers == result.inlier_mask.sum()
    assert result.inlier_mask.shape == (len(points2d),)
    assert result.inlier_mask[k:].mean() > 0.99  # true inliers found
    assert result.inlier_mask[:k].mean() < 0.02  # outliers rejected
    if backend == "poselib":
        assert result.iterations >= SolverConfig().min_iterations


def test_unrefined_solution_is_still_accurate():
    points2d, points3d, truth, _ = make_problem(0.5, seed=1)
    result = solve_pnp(points2d, points3d, CAMERA, SolverConfig(refine=False))
    t_err, r_err = pose_errors(result.cam_from_world, truth)
    assert t_err < 0.01 and r_err < 0.1


@pytest.mark.parametrize("backend", ["poselib", "opencv"])
def test_non_finite_rows_are_never_inliers(backend):
    points2d, points3d, truth, _ = make_problem(0.5, seed=2)
    points3d[-10:-5] = np.nan
    points2d[-5:] = np.inf
    result = solve_pnp(points2d, points3d, CAMERA, SolverConfig(backend=backend))
    assert not result.inlier_mask[-10:].any()
    t_err, r_err = pose_errors(result.cam_from_world, truth)
    assert t_err < 0.01 and r_err < 0.1


@pytest.mark.parametrize("backend", ["poselib", "opencv"])
def test_too_few_points_gives_no_pose(backend):
    points2d, points3d, _, _ = make_problem(0.0, n=3)
    result = solve_pnp(points2d, points3d, CAMERA, SolverConfig(backend=backend))
    assert result.cam_from_world is None
    assert result.num_inliers == 0 and result.inlier_mask.shape == (3,) and not result.inlier_mask.any()


@pytest.mark.parametrize("backend", ["poselib", "opencv"])
def test_all_outliers_gives_no_pose_or_few_inliers(backend):
    points2d, points3d, _, _ = make_problem(1.0, n=500, seed=3)
    result = solve_pnp(points2d, points3d, CAMERA, SolverConfig(backend=backend, max_iterations=2000))
    assert result.cam_from_world is None or result.inlier_ratio < 0.05


def test_bad_config_is_an_input_error():
    with pytest.raises(InputError, match="backend"):
        SolverConfig(backend="magic")
    with pytest.raises(InputError, match="threshold"):
        SolverConfig(inlier_threshold_px=0)
    with pytest.raises(InputError, match="iterations"):
        SolverConfig(min_iterations=500, max_iterations=100)
