"""Cameras, rigid transforms and pose errors against hand-computed values."""

import numpy as np
import pytest

from sceneloc.geometry import Camera, Rigid3, pose_errors


def test_projection_hand_computed():
    cam = Camera(640, 480, fx=500.0, fy=400.0, cx=320.0, cy=240.0)
    uv = cam.project(np.array([[1.0, -0.5, 2.0]]))
    np.testing.assert_allclose(uv, [[320 + 500 * 0.5, 240 - 400 * 0.25]])


def test_projection_round_trip_with_general_intrinsics():
    cam = Camera(640, 480, fx=512.3, fy=530.9, cx=301.2, cy=255.7)
    rng = np.random.default_rng(0)
    pixels = rng.uniform([0, 0], [640, 480], size=(100, 2))
    depth = rng.uniform(0.2, 20, size=100)
    points = cam.unproject(pixels, depth)
    np.testing.assert_allclose(points[:, 2], depth)
    np.testing.assert_allclose(cam.project(points), pixels, atol=1e-9)


def test_scaled_camera_keeps_pixel_centres():
    cam = Camera(640, 480, fx=500.0, fy=500.0, cx=319.5, cy=239.5)  # exact image centre (OpenCV convention)
    half = cam.scaled(320, 240)
    assert (half.fx, half.fy) == (250.0, 250.0)
    assert (half.cx, half.cy) == (159.5, 119.5)


def test_rigid_hand_computed_rotation_about_z():
    # 90 degrees about z: x -> y. cam_from_world with translation (1, 2, 3).
    r = np.array([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]])
    t = Rigid3(r, np.array([1.0, 2, 3]))
    np.testing.assert_allclose(t.apply(np.array([[1.0, 0, 0]])), [[1, 3, 3]])
    np.testing.assert_allclose(t.center, -r.T @ [1, 2, 3])
    np.testing.assert_allclose(t.qvec_wxyz, [np.cos(np.pi / 4), 0, 0, np.sin(np.pi / 4)], atol=1e-12)
    np.testing.assert_allclose((t * t.inverse()).matrix(), np.eye(4), atol=1e-12)


def test_quaternion_round_trip():
    rng = np.random.default_rng(1)
    for _ in range(20):
        q = rng.normal(size=4)
        q /= np.linalg.norm(q)
        q *= np.sign(q[0])
        t = Rigid3.from_qvec_tvec(q, rng.normal(size=3))
        np.testing.assert_allclose(t.qvec_wxyz, q, atol=1e-12)


@pytest.mark.parametrize("matrix, message", [
    (np.diag([1.0, 1.0, 2.0, 1.0]), "not orthonormal"),
    (np.diag([1.0, 1.0, -1.0, 1.0]), "not orthonormal"),
    (np.full((4, 4), np.nan), "NaN"),
    (np.eye(3), "4x4 or 3x4"),
])
def test_from_matrix_rejects_bad_poses(matrix, message):
    with pytest.raises(ValueError, match=message):
        Rigid3.from_matrix(matrix)


def test_pose_errors_hand_computed():
    truth = Rigid3.identity()
    angle = np.radians(3.0)
    r = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    # Rotation only about the origin camera: the centre stays at 0.
    t_err, r_err = pose_errors(Rigid3(r, np.zeros(3)), truth)
    assert t_err == pytest.approx(0.0, abs=1e-12)
    assert r_err == pytest.approx(3.0, abs=1e-9)
    t_err, r_err = pose_errors(Rigid3(np.eye(3), np.array([0.03, -0.04, 0.0])), truth)
    assert t_err == pytest.approx(0.05)
    assert r_err == pytest.approx(0.0, abs=1e-6)
