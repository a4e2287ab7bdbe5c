"""Mapping augmentation: the warped image, its camera, the rotated pose and the source-to-augmented homography agree
with each other, and an unaugmented mapping view is pixel-for-pixel the query's image."""

import numpy as np
import pytest

from sceneloc.geometry import Camera, Rigid3
from sceneloc.mapping.augment import augment_image, prepare_image, rotate_pose


@pytest.mark.parametrize("rotation_deg", [0.0, 15.0])
def test_augmented_camera_pose_and_homography_agree(rotation_deg):
    camera = Camera(320, 240, fx=277.1, fy=279.9, cx=162.5, cy=117.5)  # fx != fy, off-centre principal point
    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 255, (240, 320, 3), dtype=np.uint8)
    cam_from_world = Rigid3(np.array([[0.0, 0, 1], [1, 0, 0], [0, 1, 0]]).T, np.array([0.3, -0.2, 1.0]))
    for _ in range(5):
        prepared = augment_image(rgb, camera, 480, rng, (2 / 3, 3 / 2), rotation_deg, 0.2, 0.2)
        assert prepared.rgb.shape[:2] == (prepared.camera.height, prepared.camera.width)
        world = cam_from_world.inverse().apply(camera.unproject(rng.uniform([40, 40], [280, 200], (50, 2)), 2.0))
        source_px = camera.project(cam_from_world.apply(world))
        augmented_cam = rotate_pose(cam_from_world, prepared.cam_rotation).apply(world)
        expected = prepared.camera.project(augmented_cam)
        mapped = np.c_[source_px, np.ones(50)] @ prepared.homography.T
        np.testing.assert_allclose(mapped[:, :2] / mapped[:, 2:], expected, atol=1e-6)
        if rotation_deg == 0.0:
            assert np.allclose(prepared.cam_rotation, np.eye(3)) and prepared.valid.all()


@pytest.mark.parametrize("source_height", [240, 960])
def test_unaugmented_mapping_view_is_the_query_image(source_height):
    camera = Camera(source_height * 4 // 3, source_height, 500.0, 500.0, source_height * 2 / 3, source_height / 2)
    rgb = np.random.default_rng(0).integers(0, 255, (camera.height, camera.width, 3), dtype=np.uint8)
    prepared = augment_image(rgb, camera, 480, np.random.default_rng(1), (1.0, 1.0), 0.0, 0.0, 0.0)
    query, query_camera = prepare_image(rgb, camera, 480)
    np.testing.assert_array_equal(prepared.rgb, query)
    assert prepared.camera == query_camera
