"""sceneloc.geometry.batched (the training losses' projection) against the float64 numpy Camera and Rigid3."""

import numpy as np
import pytest
import torch

from sceneloc.geometry import Camera, Rigid3
from sceneloc.geometry.batched import pixel_rays, project, to_camera


@pytest.fixture
def rows():
    rng = np.random.default_rng(0)
    poses = [Rigid3.from_qvec_tvec(q / np.linalg.norm(q), t) for q, t in
             zip(rng.normal(size=(6, 4)), rng.normal(size=(6, 3)))]
    cameras = [Camera(640, 480, fx, fx * 1.1, 320 + dx, 240 - dx) for fx, dx in zip(rng.uniform(300, 600, 6),
                                                                                  rng.uniform(-20, 20, 6))]
    world = rng.normal(size=(6, 3)) * 3
    return poses, cameras, world


def test_to_camera_and_project_match_the_numpy_camera(rows):
    poses, cameras, world = rows
    cam_from_world = torch.tensor(np.stack([p.matrix()[:3] for p in poses]), dtype=torch.float64)
    K = torch.tensor(np.stack([c.K for c in cameras]), dtype=torch.float64)
    cam = to_camera(torch.tensor(world), cam_from_world)
    expected_cam = np.stack([p.apply(w[None])[0] for p, w in zip(poses, world)])
    np.testing.assert_allclose(cam.numpy(), expected_cam, atol=1e-12)
    in_front = expected_cam[:, 2] > 0.1
    pixels = project(cam, K, 0.1).numpy()
    expected_px = np.stack([c.project(x[None])[0] for c, x in zip(cameras, expected_cam)])
    np.testing.assert_allclose(pixels[in_front], expected_px[in_front], atol=1e-9)
    # Behind the camera the depth is clamped: finite pixels, never inf or nan.
    assert np.isfinite(pixels).all() and (~in_front).any()


def test_pixel_rays_reproject_to_their_pixels(rows):
    _, cameras, _ = rows
    K = torch.tensor(np.stack([c.K for c in cameras]), dtype=torch.float64)
    pixels = torch.tensor([[0.0, 0.0], [639.0, 479.0], [320.0, 240.0], [10.5, 400.0], [5.0, 5.0], [600.0, 20.0]],
                          dtype=torch.float64)
    rays = pixel_rays(pixels, K)
    np.testing.assert_allclose(rays[:, 2].numpy(), 1.0)
    np.testing.assert_allclose(project(rays * 2.5, K, 0.1).numpy(), pixels.numpy(), atol=1e-9)
