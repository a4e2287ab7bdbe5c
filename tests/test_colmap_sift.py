"""The colmap-sift peer on the tiny rendered room: points on the true surfaces, queries localized within a few cm,
the COLMAP pixel convention, pose-based pairs, and its map file."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from sceneloc.data import read_scene
from sceneloc.runtime.errors import InputError
from sceneloc.evaluate import evaluate_poses
from sceneloc.geometry import Camera, Rigid3
from sceneloc.mapping.structure.features import colmap_camera
from sceneloc.mapping.structure.triangulate import pose_pairs
from sceneloc.peers.colmap_sift import ColmapSiftConfig, SiftMap, localize_scene


@pytest.fixture(scope="module")
def room_and_map(tiny_room_sift):
    return tiny_room_sift


def test_triangulated_points_lie_on_the_room_surfaces(room_and_map):
    rendered, sift_map = room_and_map
    assert len(sift_map.points) > 500
    assert sift_map.metadata["n_points"] == len(sift_map.points)
    distance = rendered.room.distance_to_surface(sift_map.points)
    # 160x120 images: one pixel spans ~1 cm at 2 m, so most points sit within a few mm of the mesh.
    assert np.median(distance) < 0.01
    assert np.mean(distance < 0.05) > 0.85


def test_queries_are_localized_within_a_few_cm(room_and_map):
    rendered, sift_map = room_and_map
    queries = read_scene(rendered.root, split="test")
    estimates = localize_scene(sift_map, queries, ColmapSiftConfig(), show_progress=False)
    result = evaluate_poses(estimates, {f.name: f.cam_from_world for f in queries.frames})
    assert result["median_t_cm"] < 2.0 and result["median_r_deg"] < 1.0
    assert result["recall"]["5cm5deg"] >= 0.8
    ok = [e for e in estimates if e.cam_from_world is not None]
    assert all(e.num_inliers >= ColmapSiftConfig().min_inliers for e in ok)
    assert all(e.details["n_matches"] >= e.num_inliers for e in ok)


def test_colmap_camera_shifts_the_principal_point_by_half_a_pixel():
    camera = Camera(160, 120, 140.0, 141.4, 81.0, 58.5)
    points = np.array([[0.3, -0.2, 2.0], [-1.0, 0.5, 4.0]])
    colmap_pixels = np.array([colmap_camera(camera).img_from_cam(p) for p in points])
    np.testing.assert_allclose(colmap_pixels, camera.project(points) + 0.5, atol=1e-9)


def test_pose_pairs_follow_distance_and_viewing_direction():
    ahead = Rotation.identity().as_matrix()
    behind = Rotation.from_euler("y", 180, degrees=True).as_matrix()
    # Four cameras on the x axis looking along +z, then one among them looking back along -z.
    poses = [Rigid3(ahead, -ahead @ np.array([x, 0.0, 0.0])) for x in (0.0, 0.1, 0.3, 0.6)]
    poses.append(Rigid3(behind, -behind @ np.array([0.2, 0.0, 0.0])))
    assert pose_pairs(poses, num_neighbors=1, max_angle_deg=60) == [(0, 1), (1, 2), (2, 3)]
    assert pose_pairs(poses, num_neighbors=2, max_angle_deg=60) == [(0, 1), (0, 2), (1, 2), (1, 3), (2, 3)]
    # With no limit on the viewing direction, the backward camera (x = 0.2) pairs with its nearest (x = 0.3).
    assert pose_pairs(poses, num_neighbors=1, max_angle_deg=180) == [(0, 1), (2, 3), (2, 4)]


def test_map_file_round_trip_and_foreign_files(room_and_map, tmp_path):
    _, sift_map = room_and_map
    path = tmp_path / "room.sift.safetensors"
    sift_map.save(path)
    loaded = SiftMap.load(path)
    np.testing.assert_array_equal(loaded.points, sift_map.points)
    np.testing.assert_array_equal(loaded.descriptors, sift_map.descriptors)
    assert loaded.metadata["config"] == sift_map.metadata["config"]
    assert path.stat().st_size < 150 * len(sift_map.points) + 4096  # 140 bytes per point plus the header

    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a map")
    with pytest.raises(InputError, match="garbage.safetensors: not a colmap-sift map"):
        SiftMap.load(garbage)
    with pytest.raises(InputError, match="missing.safetensors: map file does not exist"):
        SiftMap.load(tmp_path / "missing.safetensors")
