"""Point-cloud export (keypoint paper, section 6) and its evaluation against a mesh: the PLY round trip, the filters
as pure functions on planted cases, the cloud metrics on a case with a known answer, export from a real tiny map,
and the `export points` / `evaluate-cloud` commands."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import open3d as o3d
import pytest
import torch
from matplotlib.image import imread
from scipy.spatial.transform import Rotation

from conftest import run_cli
from sceneloc.data import Scene, read_scene
from sceneloc.data.synthetic import PRESETS, render_scene_to_folder
from sceneloc.runtime.errors import InputError
from sceneloc.evaluate.cloud import (CloudEvalConfig, evaluate_cloud, read_mesh, render_cloud_png,
                                     up_from_cameras, write_cloud_report)
from sceneloc.export.points import (PointCloud, PointExportConfig, consistency_mask, depth_mask, export_points,
                                    lookup_coordinates, ply_bytes, read_ply, rotation_homography, write_ply)
from sceneloc.geometry import Camera, Rigid3
from sceneloc.localize.loop import Prediction
from sceneloc.mapping import MappingConfig, build_scene_map
from sceneloc.maps.scene_map import SceneMap
from sceneloc.nn.heads import RegressionHead

UNFILTERED = PointExportConfig(use_keypoints=False, consistency=False, min_depth=-np.inf, max_depth=np.inf)

pytestmark = pytest.mark.usefixtures("one_thread")
"""One torch thread for every test here (conftest.torch_threads)."""


def _unit_square() -> o3d.t.geometry.TriangleMesh:
    mesh = o3d.t.geometry.TriangleMesh()
    mesh.vertex.positions = o3d.core.Tensor(np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]], np.float32))
    mesh.triangle.indices = o3d.core.Tensor(np.array([[0, 1, 2], [0, 2, 3]], np.int32))
    return mesh


# --- PLY file -------------------------------------------------------------------------------------------------


def test_ply_round_trip_is_exact(tmp_path):
    rng = np.random.default_rng(0)
    xyz = (rng.normal(size=(5000, 3)) * [1.0, 1e3, 1e-3]).astype(np.float32)
    rgb = rng.integers(0, 256, (5000, 3), dtype=np.uint8)
    path = tmp_path / "cloud.ply"
    write_ply(path, PointCloud(xyz, rgb))
    back = read_ply(path)
    assert back.xyz.dtype == np.float32 and back.rgb.dtype == np.uint8
    assert np.array_equal(back.xyz, xyz)
    assert np.array_equal(back.rgb, rgb)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cloud.ply"]  # no temporary file left


def test_ply_bytes_are_the_file_write_ply_writes(tmp_path):
    """The service's in-memory PLY: byte for byte what write_ply (Open3D) writes, read back exactly."""
    rng = np.random.default_rng(1)
    cloud = PointCloud(rng.normal(size=(300, 3)).astype(np.float32), rng.integers(0, 256, (300, 3), dtype=np.uint8))
    (tmp_path / "mem.ply").write_bytes(ply_bytes(cloud))
    back = read_ply(tmp_path / "mem.ply")
    assert np.array_equal(back.xyz, cloud.xyz) and np.array_equal(back.rgb, cloud.rgb)
    write_ply(tmp_path / "o3d.ply", cloud)
    assert (tmp_path / "o3d.ply").read_bytes()[-300 * 15:] == ply_bytes(cloud)[-300 * 15:]  # the same vertex rows
    empty = ply_bytes(PointCloud(np.zeros((0, 3), np.float32), np.zeros((0, 3), np.uint8)))
    assert b"element vertex 0\n" in empty and empty.endswith(b"end_header\n")


def test_ply_errors_name_the_file(tmp_path):
    with pytest.raises(InputError, match="missing.ply: point cloud file not found"):
        read_ply(tmp_path / "missing.ply")
    (tmp_path / "text.ply").write_text("not a ply\n")
    with pytest.raises(InputError, match="text.ply: not a PLY file"):
        read_ply(tmp_path / "text.ply")
    (tmp_path / "cut.ply").write_bytes(b"ply\nformat binary_little_endian 1.0\nelement vert")
    with pytest.raises(InputError, match="cut.ply: PLY file has no readable points"):
        read_ply(tmp_path / "cut.ply")
    with pytest.raises(InputError, match="empty.ply: the point cloud is empty"):
        write_ply(tmp_path / "empty.ply", PointCloud(np.zeros((0, 3), np.float32), np.zeros((0, 3), np.uint8)))
    assert not (tmp_path / "empty.ply").exists()


# --- filters as pure functions ----------------------------------------------------------------------------------


def test_consistency_mask_removes_planted_outliers():
    rng = np.random.default_rng(1)
    first = rng.uniform(-3, 3, (2000, 3))
    noise = rng.normal(size=(2000, 3))
    noise *= (rng.uniform(0, 0.095, 2000) / np.linalg.norm(noise, axis=1))[:, None]  # agreeing: < 0.095 m apart
    second = first + noise
    outliers = rng.choice(2000, 300, replace=False)
    direction = rng.normal(size=(300, 3))
    second[outliers] = first[outliers] + direction / np.linalg.norm(direction, axis=1, keepdims=True) * \
        rng.uniform(0.105, 2.0, (300, 1))
    second[outliers[:20]] = np.nan  # the cell left the rotated image: cannot be confirmed
    keep = consistency_mask(first, second, 0.1)
    expected = np.ones(2000, bool)
    expected[outliers] = False
    assert np.array_equal(keep, expected)


def test_keypoint_filter_keeps_the_top_fraction_or_the_confident_cells():
    from sceneloc.export.points import PointExportConfig, _keypoint_mask

    prob = np.array([0.1, 0.95, 0.3, 0.2, 0.6, 0.05, 0.4, 0.91])
    assert _keypoint_mask(prob, PointExportConfig(keypoint_top_fraction=0.25)).nonzero()[0].tolist() == [1, 7]
    assert _keypoint_mask(prob, PointExportConfig(keypoint_top_fraction=0.5)).nonzero()[0].tolist() == [1, 4, 6, 7]
    threshold = PointExportConfig(keypoint_top_fraction=None, keypoint_min_probability=0.5)
    assert _keypoint_mask(prob, threshold).nonzero()[0].tolist() == [1, 4, 7]
    with pytest.raises(ValueError, match="keypoint_top_fraction must be in"):
        PointExportConfig(keypoint_top_fraction=0.0).validate()


def test_depth_mask_uses_camera_frame_depth():
    cam_from_world = Rigid3(Rotation.from_euler("xyz", [20, -35, 110], degrees=True).as_matrix(),
                            np.array([0.5, -1.0, 2.0]))
    z = np.array([-1.0, 0.0, 0.05, 0.1001, 0.5, 3.0, 9.99, 9.9999, 10.0001, 100.0])
    points_cam = np.stack([np.linspace(-2, 2, len(z)), np.linspace(1, -1, len(z)), z], 1)
    points_world = cam_from_world.inverse().apply(points_cam)
    keep = depth_mask(points_world, cam_from_world, 0.1, 10.0)
    assert keep.tolist() == [False, False, False, True, True, True, True, True, False, False]


def test_rotation_homography_is_the_rotated_camera():
    camera = Camera(160, 120, 140.0, 141.4, 81.0, 58.5)
    homography = rotation_homography(camera, 20.0)
    pixels = np.array([[0.0, 0.0], [159.0, 119.0], [40.0, 90.0], [camera.cx, camera.cy]])
    mapped = (np.c_[pixels, np.ones(4)] @ homography.T)
    mapped = mapped[:, :2] / mapped[:, 2:]
    rotation = Rotation.from_euler("z", 20.0, degrees=True).as_matrix()
    expected = camera.project(camera.unproject(pixels) @ rotation.T)
    assert np.allclose(mapped, expected, atol=1e-9)
    assert np.allclose(mapped[3], [camera.cx, camera.cy])  # turns about the principal point


def test_lookup_is_bilinear_and_refuses_outside_and_untrusted_cells():
    camera = Camera(40, 24, 30.0, 30.0, 19.5, 11.5)
    u, v = np.meshgrid(np.arange(5) * 8 + 3.5, np.arange(3) * 8 + 3.5)
    pixels = np.stack([u.ravel(), v.ravel()], 1)
    affine = lambda p: np.stack([p[:, 0], p[:, 1], 2 * p[:, 0] - 0.5 * p[:, 1] + 1], 1)  # noqa: E731
    prediction = Prediction(pixels, affine(pixels), camera, None)
    query = np.array([[5.0, 6.0], [20.25, 15.5], [35.5, 19.5], [-3.0, 10.0], [10.0, 24.0]])
    out = lookup_coordinates(prediction, query)
    assert np.allclose(out[:3], affine(query[:3]), atol=1e-4)  # bilinear is exact on an affine field
    assert np.isnan(out[3:]).all()  # outside the image
    valid = np.ones((24, 40), bool)
    valid[:, :8] = False  # the first column of cells shows the black border of a rotated image
    out = lookup_coordinates(prediction, np.array([[7.0, 10.0], [13.0, 10.0]]), valid)
    assert np.isnan(out[0]).all()
    assert np.allclose(out[1], affine(np.array([[13.0, 10.0]]))[0], atol=1e-4)
    # Every pixel of the image at once (depth completion's lookup): more than cv2.remap's 32,767 per row.
    dense = np.stack(np.meshgrid(np.linspace(4, 35, 300), np.linspace(4, 19, 200)), -1).reshape(-1, 2)
    assert np.allclose(lookup_coordinates(prediction, dense), affine(dense), atol=1e-3)


# --- cloud metrics -------------------------------------------------------------------------------------------


def test_cloud_metrics_on_a_known_case(tmp_path):
    """A 21 x 21 grid on the unit square (5 cm spacing, so every mesh point is within 3.6 cm of it) plus 49
    outliers 0.3 m above the square: precision 441/490 = 0.9, recall 1, mean accuracy 49 * 0.3 / 490 = 0.03 m."""
    g = np.linspace(0, 1, 21)
    grid = np.stack(np.meshgrid(g, g), -1).reshape(-1, 2)
    rng = np.random.default_rng(2)
    outliers = np.c_[rng.uniform(0.1, 0.9, (49, 2)), np.full(49, 0.3)]
    xyz = np.concatenate([np.c_[grid, np.zeros(len(grid))], outliers]).astype(np.float32)
    cloud = PointCloud(xyz, np.zeros_like(xyz, dtype=np.uint8))
    result = evaluate_cloud(cloud, _unit_square(), CloudEvalConfig(tau=0.05, n_mesh_samples=100_000, seed=0))
    assert result["n_points"] == 490
    assert result["precision"] == 441 / 490
    assert result["recall"] == 1.0
    assert result["fscore"] == pytest.approx(2 * 0.9 / 1.9)
    assert result["accuracy_mean_m"] == pytest.approx(0.03, abs=1e-6)
    assert result["accuracy_median_m"] == pytest.approx(0.0, abs=1e-6)
    # Mean distance of a uniform point in a square cell of side h to its nearest corner:
    # h / 2 * (sqrt 2 + asinh 1) / 3.
    assert result["completeness_mean_m"] == pytest.approx(0.025 * (np.sqrt(2) + np.arcsinh(1)) / 3, rel=0.01)
    again = evaluate_cloud(cloud, _unit_square(), CloudEvalConfig(n_mesh_samples=100_000, seed=0))
    other = evaluate_cloud(cloud, _unit_square(), CloudEvalConfig(n_mesh_samples=100_000, seed=1))
    assert again == result
    assert other["completeness_mean_m"] != result["completeness_mean_m"]
    # At tau = 1 cm only the quarter discs of radius 1 cm around the grid points count as recalled.
    strict = evaluate_cloud(cloud, _unit_square(), CloudEvalConfig(tau=0.01, n_mesh_samples=100_000))
    assert strict["precision"] == 441 / 490
    assert strict["recall"] == pytest.approx(np.pi * 0.01 ** 2 / 4 / 0.025 ** 2, rel=0.03)

    written = write_cloud_report(result, tmp_path / "run.v1")
    assert [p.name for p in written] == ["run.v1.json", "run.v1.md"]
    assert json.loads(written[0].read_text())["precision"] == 441 / 490
    assert "| precision (< 5 cm) | 90.0 % |" in written[1].read_text()


def test_read_mesh_errors_name_the_file(tmp_path):
    with pytest.raises(InputError, match="nothing.obj: mesh file not found"):
        read_mesh(tmp_path / "nothing.obj")
    (tmp_path / "bad.obj").write_text("garbage\n")
    with pytest.raises(InputError, match="bad.obj: "):
        read_mesh(tmp_path / "bad.obj")
    path = tmp_path / "square.ply"
    o3d.t.io.write_triangle_mesh(str(path), _unit_square())
    assert len(read_mesh(path).triangle.indices) == 2


# --- export from a real map ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """tiny-room with 8 mapping frames, a 300-step map of it, and its ground-truth mesh."""
    root = tmp_path_factory.mktemp("tiny-room")
    rendered = render_scene_to_folder(dataclasses.replace(PRESETS["tiny-room"], n_map=8, n_query=2), root,
                                      progress=False)
    scene = read_scene(root, split="train")
    scene_map, _ = build_scene_map(scene, MappingConfig(iterations=300, image_height=120, buffer_size=20000),
                                   torch.device("cpu"), False)
    map_path = root / "tiny.map"
    scene_map.save(map_path)
    mesh = read_mesh(root / "mesh.ply") if (root / "mesh.ply").exists() else rendered.room.mesh()
    return dataclasses.make_dataclass("Tiny", ["root", "scene", "map", "map_path", "mesh"])(
        root, scene, scene_map, map_path, mesh)


def test_export_filters_make_a_more_accurate_cloud(tiny, tmp_path):
    device = torch.device("cpu")
    raw = export_points(tiny.map, tiny.scene, UNFILTERED, device, False)
    filtered = export_points(tiny.map, tiny.scene, PointExportConfig(), device, False)
    assert tiny.map.keypoint_net is None  # so no keypoint filter: the other two did the work
    per_frame = (120 // 8) * (160 // 8)  # stride-8 cells of a 160 x 120 working image
    cells = 8 * per_frame
    assert raw.counts == {"frames": 8, "cells": cells, "failed_depth": 0, "kept": cells}
    assert set(filtered.counts) == {"frames", "cells", "failed_consistency", "failed_depth", "kept"}
    assert 0 < filtered.counts["kept"] < raw.counts["kept"]
    assert filtered.counts["failed_consistency"] > 0
    assert len(filtered.xyz) == filtered.counts["kept"] and filtered.xyz.dtype == np.float32
    assert filtered.rgb.dtype == np.uint8 and filtered.rgb.max() > 0 and len(np.unique(filtered.rgb, axis=0)) > 50

    # Against two baselines computed here: the unfiltered cloud, and the unfiltered cloud of the same map with its head
    # untrained. Measured (seeds 0 and 1, bf16 and fp32; docs/BENCHMARKS.md, section 11): median accuracy raw
    # 4.4-5.2 cm, filtered 1.5-2.2 cm, untrained 88 cm; precision (< 5 cm) raw 0.49-0.54, filtered 0.86-0.92,
    # untrained 0.
    torch.manual_seed(0)
    untrained_map = dataclasses.replace(tiny.map, head=RegressionHead(
        tiny.map.head.input_layer.in_features, tiny.map.head.config, tiny.map.head.mean.clone()).eval())
    untrained = export_points(untrained_map, tiny.scene, UNFILTERED, device, False)
    config = CloudEvalConfig(n_mesh_samples=20_000)
    raw_eval, filtered_eval, untrained_eval = (evaluate_cloud(cloud, tiny.mesh, config)
                                               for cloud in (raw, filtered, untrained))
    assert raw_eval["accuracy_median_m"] < 0.2 * untrained_eval["accuracy_median_m"], (raw_eval, untrained_eval)
    assert raw_eval["precision"] > untrained_eval["precision"] + 0.3, (raw_eval, untrained_eval)
    assert filtered_eval["accuracy_median_m"] < 0.6 * raw_eval["accuracy_median_m"], (filtered_eval, raw_eval)
    assert filtered_eval["precision"] > raw_eval["precision"] + 0.2, (filtered_eval, raw_eval)

    strided = export_points(tiny.map, tiny.scene, dataclasses.replace(UNFILTERED, frame_stride=3), device, False)
    assert strided.counts["frames"] == 3 and len(strided.xyz) == 3 * per_frame
    first = Scene(tiny.scene.name, tiny.scene.root, tiny.scene.frames[:1])
    band = export_points(tiny.map, first, dataclasses.replace(UNFILTERED, min_depth=1.0, max_depth=1.5), device,
                         False)
    depth = first.frames[0].cam_from_world.apply(band.xyz)[:, 2]
    assert 0 < len(band.xyz) < per_frame and band.counts["failed_depth"] == per_frame - len(band.xyz)
    assert depth.min() > 1.0 - 1e-5 and depth.max() < 1.5 + 1e-5
    nothing = export_points(tiny.map, first, dataclasses.replace(UNFILTERED, min_depth=100, max_depth=101), device,
                            False)
    assert nothing.xyz.shape == (0, 3) and nothing.rgb.shape == (0, 3) and nothing.counts["kept"] == 0

    png = tmp_path / "cloud.png"
    render_cloud_png(filtered, png, up=up_from_cameras([f.cam_from_world for f in tiny.scene.frames]))
    image = imread(png)
    assert image.ndim == 3 and image.shape[0] > 300 and image[..., :3].std() > 0.01


def test_up_from_cameras_points_against_image_y():
    # Cameras looking horizontally in a z-up world: image y (down) is world -z.
    poses = [Rigid3(Rotation.from_euler("x", 90, degrees=True).as_matrix() @
                    Rotation.from_euler("z", yaw, degrees=True).as_matrix(), np.zeros(3)) for yaw in (0, 90, 200)]
    assert np.allclose(up_from_cameras(poses), [0, 0, 1], atol=1e-9)
    assert up_from_cameras([]) is None


# --- command line ---------------------------------------------------------------------------------------------


def test_cli_export_and_evaluate(tiny, tmp_path):
    cloud_path = tmp_path / "out" / "cloud.ply"
    code, output = run_cli("export", "points", tiny.map_path, tiny.root, "-o", cloud_path, "--png",
                        tmp_path / "out" / "cloud.png", "--device", "cpu", "--stride", "2")
    assert code == 0, output
    cloud = read_ply(cloud_path)
    assert f"kept {len(cloud.xyz):,} of {4 * 300:,} points from 4 frames" in output
    assert (tmp_path / "out" / "cloud.png").stat().st_size > 10_000

    mesh_path = tmp_path / "mesh.ply"
    o3d.t.io.write_triangle_mesh(str(mesh_path), tiny.mesh)
    code, output = run_cli("evaluate-cloud", cloud_path, "--mesh", mesh_path, "-o", tmp_path / "eval" / "tiny",
                        "--samples", "5000")
    assert code == 0, output
    result = json.loads((tmp_path / "eval" / "tiny.json").read_text())
    assert result["n_points"] == len(cloud.xyz) and result["n_mesh_samples"] == 5000
    # The commands give exactly what the API gives: the cloud of the saved map (float16 weights), and its metrics.
    expected = export_points(SceneMap.load(tiny.map_path), tiny.scene, PointExportConfig(frame_stride=2),
                             torch.device("cpu"), False)
    assert np.array_equal(cloud.xyz, expected.xyz) and np.array_equal(cloud.rgb, expected.rgb)
    metrics = evaluate_cloud(expected, read_mesh(mesh_path), CloudEvalConfig(n_mesh_samples=5000))
    assert {k: result[k] for k in metrics} == metrics
    assert sorted(p.name for p in (tmp_path / "eval").iterdir()) == ["tiny.json", "tiny.md", "tiny.png"]


@pytest.mark.parametrize("args, expected", [
    (["export", "points", "{tmp}/missing.map", "{tmp}", "-o", "{tmp}/out/c.ply"], "missing.map"),
    (["export", "points", "{tmp}/missing.map", "{tmp}", "-o", "{tmp}/out/c.ply", "--stride", "0"], "frame_stride"),
    (["evaluate-cloud", "{tmp}/missing.ply", "--mesh", "{tmp}/m.ply", "-o", "{tmp}/out/e"], "missing.ply"),
])
def test_cli_bad_input_is_one_line(tmp_path, args, expected):
    code, output = run_cli(*[a.format(tmp=tmp_path) for a in args])
    assert code == 2, output
    assert "Traceback" not in output
    errors = [line for line in output.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and expected in errors[0], output
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_optional_fields_take_none_from_the_command_line():
    from sceneloc.runtime.config_overrides import apply_overrides
    from sceneloc.export.points import PointExportConfig

    assert apply_overrides(PointExportConfig(), ["keypoint_top_fraction=none"]).keypoint_top_fraction is None
    assert apply_overrides(PointExportConfig(), ["keypoint_top_fraction=0.4"]).keypoint_top_fraction == 0.4
    with pytest.raises(ValueError, match="cannot read 'x' as float"):
        apply_overrides(PointExportConfig(), ["keypoint_top_fraction=x"])
