"""The copyroom scan rendered along its real trajectory (../shared/data/copyroom): geometry, colour against the raw
OBJ + atlas, invalid poses, the mapping/query split, the written ACE root and the cached benchmark scene."""

from __future__ import annotations

import zipfile
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import open3d as o3d
import pytest

from sceneloc.bench.scan_scenes import CopyroomSceneSpec, copyroom_key
from sceneloc.data import read_scene
from sceneloc.data.copyroom import (POSES_ZIP, SCAN_FILE, CopyroomConfig, read_trajectory, split_trajectory,
                                    write_copyroom_scene)
from sceneloc.data.scan_render import load_textured_mesh, render_scan
from sceneloc.runtime.errors import InputError
from sceneloc.geometry import Camera

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
COPYROOM = DATA / "copyroom"
pytestmark = pytest.mark.skipif(not (COPYROOM / POSES_ZIP).is_file(), reason=f"{COPYROOM} not present")

SAMPLE_FRAMES = (0, 1000, 2000, 3000, 4000)
"""Capture indices spread over both loops of the trajectory."""
TINY = CopyroomConfig(n_map=3, n_query=2, width=32, height=24)


@pytest.fixture(scope="module")
def mesh():
    return load_textured_mesh(COPYROOM / SCAN_FILE)


@pytest.fixture(scope="module")
def trajectory():
    return read_trajectory(COPYROOM / POSES_ZIP)


@pytest.fixture(scope="module")
def camera(trajectory):
    return trajectory.camera.scaled(160, 120)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    out = tmp_path_factory.mktemp("copyroom") / "scene"
    return write_copyroom_scene(COPYROOM, out, CopyroomConfig(n_map=4, n_query=3, width=80, height=60),
                                show_progress=False)


def pixel_grid(camera: Camera) -> np.ndarray:
    """(H*W, 2) pixel centres, row-major."""
    u, v = np.meshgrid(np.arange(camera.width), np.arange(camera.height))
    return np.stack([u.ravel(), v.ravel()], 1).astype(np.float64)


def read_obj(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """By hand, independent of Open3D: vertices (V, 3), texture coordinates (T, 2), and per face the vertex and
    texture-coordinate indices (F, 3) each, 0-based."""
    v, vt, fv, ft = [], [], [], []
    for line in path.read_text().splitlines():
        parts = line.split()
        if parts and parts[0] == "v":
            v.append(parts[1:4])
        elif parts and parts[0] == "vt":
            vt.append(parts[1:3])
        elif parts and parts[0] == "f":
            corners = [c.split("/") for c in parts[1:]]
            fv.append([int(c[0]) - 1 for c in corners])
            ft.append([int(c[1]) - 1 for c in corners])
    return np.array(v, float), np.array(vt, float), np.array(fv), np.array(ft)


def bilinear(image: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """image (H, W, 3) sampled at OpenCV pixel coordinates x, y (N,) -> (N, 3), borders clamped."""
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    ax, ay = (x - x0)[:, None], (y - y0)[:, None]
    h, w = image.shape[:2]

    def at(yy, xx):
        return image[np.clip(yy, 0, h - 1), np.clip(xx, 0, w - 1)]
    return (1 - ay) * ((1 - ax) * at(y0, x0) + ax * at(y0, x0 + 1)) + ay * ((1 - ax) * at(y0 + 1, x0)
                                                                           + ax * at(y0 + 1, x0 + 1))


def test_depth_lands_on_the_mesh_and_coordinates_are_depth_times_ray(mesh, trajectory, camera, written):
    surface = o3d.t.geometry.RaycastingScene()
    surface.add_triangles(o3d.t.geometry.TriangleMesh.from_legacy(o3d.io.read_triangle_mesh(
        str(written.root / "mesh.ply"))))
    pixels = pixel_grid(camera)
    for index in SAMPLE_FRAMES:
        pose = trajectory.poses[index]
        view = render_scan(mesh, camera, pose)
        depth = view.depth.ravel().astype(np.float64)
        hit = depth > 0
        # A real hand-held view of a closed scan: most rays hit, at room distances.
        assert hit.mean() > 0.6 and 0.2 < depth[hit].min() and depth.max() < 6.0
        world = pose.inverse().apply(camera.unproject(pixels[hit], depth[hit]))
        distance = surface.compute_distance(o3d.core.Tensor(world.astype(np.float32))).numpy()
        assert distance.max() < 1e-3
        coords = view.scene_coords.reshape(-1, 3).astype(np.float64)
        assert np.abs(coords[hit] - world).max() < 1e-5
        assert np.all(coords[~hit] == 0) and np.all(view.rgb.reshape(-1, 3)[~hit] == 0)


def test_colour_is_the_atlas_texel_of_the_hit(mesh, trajectory, camera):
    """Each pixel's colour equals the raw JPEG atlas sampled at the OBJ texture coordinates of the hit point, all
    looked up by hand (OBJ v counts up from the image's bottom row)."""
    vertices, uvs, face_vertices, face_uvs = read_obj(COPYROOM / SCAN_FILE)
    atlas = cv2.cvtColor(cv2.imread(str(COPYROOM / "copyroom_c2000_opt_0_1024.jpg")), cv2.COLOR_BGR2RGB)
    height, width = atlas.shape[:2]
    surface = o3d.t.geometry.RaycastingScene()
    surface.add_triangles(o3d.core.Tensor(vertices.astype(np.float32)),
                          o3d.core.Tensor(face_vertices.astype(np.uint32)))
    for index in SAMPLE_FRAMES[::2]:
        view = render_scan(mesh, camera, trajectory.poses[index], supersampling=1)
        hit = view.depth > 0
        points = view.scene_coords[hit].astype(np.float64)
        face = surface.compute_closest_points(o3d.core.Tensor(points.astype(np.float32)))["primitive_ids"].numpy()
        a, b, c = (vertices[face_vertices[face, k]] for k in range(3))
        edges = np.stack([b - a, c - a], 2)
        st = np.linalg.solve(np.einsum("nki,nkj->nij", edges, edges),
                             np.einsum("nki,nk->ni", edges, points - a)[..., None])[..., 0]
        weights = np.c_[1 - st.sum(1), st]
        # Away from triangle edges, where texture charts may end.
        inner = (weights > 0.05).all(1)
        uv = np.einsum("nk,nkj->nj", weights, uvs[face_uvs[face]])
        expected = bilinear(atlas.astype(np.float64), uv[:, 0] * width - 0.5, (1 - uv[:, 1]) * height - 0.5)
        error = np.abs(view.rgb[hit].astype(np.float64) - expected).max(1)[inner]
        assert inner.sum() > 5000
        assert np.percentile(error, 99) <= 1.0
        # A real room: not mostly black or flat.
        assert view.rgb[hit].mean() > 60 and view.rgb[hit].std() > 15


def test_supersampling_changes_only_colour(mesh, trajectory, camera):
    sharp = render_scan(mesh, camera, trajectory.poses[2000], supersampling=1)
    smooth = render_scan(mesh, camera, trajectory.poses[2000], supersampling=3)
    np.testing.assert_array_equal(sharp.depth, smooth.depth)
    np.testing.assert_array_equal(sharp.scene_coords, smooth.scene_coords)
    diff = np.abs(sharp.rgb.astype(int) - smooth.rgb.astype(int))
    assert 0 < diff.mean() < 10


def test_invalid_poses_are_skipped_and_counted(trajectory, tmp_path):
    assert trajectory.invalid == [1655]
    assert len(trajectory.poses) == 4479 and trajectory.n_frames == 4480
    assert (trajectory.camera.width, trajectory.camera.height) == (640, 480)
    assert (trajectory.camera.fx, trajectory.camera.cx, trajectory.camera.cy) == (582.871, 320.0, 240.0)

    rigid = "1 0 0 0.5\n0 1 0 0\n0 0 1 0\n0 0 0 1\n"
    sheared = "1 0.2 0 0\n0 1 0 0\n0 0 1 0\n0 0 0 1\n"
    path = tmp_path / "poses.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("poses/info.txt", zipfile.ZipFile(COPYROOM / POSES_ZIP).read("copyroom_gt_poses/info.txt"))
        for i, text in enumerate([rigid, sheared, rigid, "1 2 3\n", rigid, "nan " * 16]):
            archive.writestr(f"poses/frame-{i:06d}.pose.txt", text)
    small = read_trajectory(path)
    assert small.invalid == [1, 3, 5] and sorted(small.poses) == [0, 2, 4]
    np.testing.assert_allclose(small.poses[2].center, [0.5, 0, 0])


def test_mapping_and_query_parts_are_separate_and_sized(trajectory):
    config = CopyroomConfig()
    mapping, query = split_trajectory(trajectory, config)
    assert len(set(mapping)) == config.n_map == 500 and len(set(query)) == config.n_query == 100
    assert mapping == sorted(mapping) and query == sorted(query)
    assert max(mapping) + config.gap_frames < min(query)
    assert 1655 not in mapping + query
    # Evenly spread over each part: the first mapping frame is the capture's first.
    assert mapping[0] == 0 and query[-1] == 4479
    with pytest.raises(InputError, match="query part has"):
        split_trajectory(trajectory, replace(config, n_query=5000))


def test_query_frames_view_the_mapped_region(mesh, trajectory):
    """Most query-frame surface points are seen by some mapping frame (projected inside it, depth consistent)."""
    mapping, query = split_trajectory(trajectory, CopyroomConfig())
    camera = trajectory.camera.scaled(64, 48)
    pixels = pixel_grid(camera)
    depths = {i: render_scan(mesh, camera, trajectory.poses[i], 1).depth for i in mapping[::5] + query[::4]}
    fractions = []
    for q in query[::4]:
        d = depths[q].ravel().astype(np.float64)
        world = trajectory.poses[q].inverse().apply(camera.unproject(pixels[d > 0], d[d > 0]))
        seen = np.zeros(len(world), bool)
        for m in mapping[::5]:
            in_cam = trajectory.poses[m].apply(world)
            z = np.maximum(in_cam[:, 2], 1e-6)
            uv = np.rint(camera.project(np.c_[in_cam[:, :2], z])).astype(int)
            inside = (in_cam[:, 2] > 0.1) & (uv[:, 0] >= 0) & (uv[:, 0] < 64) & (uv[:, 1] >= 0) & (uv[:, 1] < 48)
            seen_depth = np.zeros(len(world))
            seen_depth[inside] = depths[m][uv[inside, 1], uv[inside, 0]]
            seen |= inside & (np.abs(seen_depth - z) < 0.05 + 0.02 * z)
        fractions.append(seen.mean())
    assert np.mean(fractions) > 0.9 and np.min(fractions) > 0.6


def test_written_scene_is_an_ace_root(written):
    root = written.root
    assert sorted(p.name for p in root.iterdir()) == ["mesh.ply", "test", "train"]
    assert written.skipped == [1655]
    train, test = read_scene(root, split="train"), read_scene(root, split="test")
    assert [f.name for f in train.frames] == [f"frame-{i:06d}" for i in written.mapping]
    assert [f.name for f in test.frames] == [f"frame-{i:06d}" for i in written.query]
    assert not {f.name for f in train.frames} & {f.name for f in test.frames}
    trajectory = read_trajectory(COPYROOM / POSES_ZIP)
    for frame in train.frames + test.frames:
        assert frame.camera == written.camera and frame.camera.width == 80
        index = int(frame.name.split("-")[1])
        np.testing.assert_allclose(frame.cam_from_world.matrix(), trajectory.poses[index].matrix(), atol=1e-9)
        depth = frame.load_depth()
        assert (depth > 0).mean() > 0.5
        assert frame.load_rgb()[depth > 0].mean() > 60
    mesh = o3d.io.read_triangle_mesh(str(root / "mesh.ply"))
    vertices, _, face_vertices, _ = read_obj(COPYROOM / SCAN_FILE)
    corners = np.asarray(mesh.vertices)[np.asarray(mesh.triangles)]
    assert corners.shape == (30947, 3, 3) and np.abs(corners - vertices[face_vertices]).max() < 1e-6


def test_bad_inputs_are_input_errors(tmp_path, written):
    spec = CopyroomSceneSpec(config=TINY)
    with pytest.raises(InputError, match=r"set SCENELOC_DATA \(or pass --data-root\) to the folder holding copyroom/"):
        spec.prepare(tmp_path / "cache", show_progress=False, data_root=None)
    with pytest.raises(InputError, match="SCENELOC_DATA") as error:
        spec.prepare(tmp_path / "cache", show_progress=False, data_root=tmp_path)
    assert SCAN_FILE in str(error.value)

    broken = tmp_path / "broken"
    broken.mkdir()
    for source in COPYROOM.iterdir():
        (broken / source.name).symlink_to(source)
    (broken / POSES_ZIP).unlink()
    (broken / POSES_ZIP).write_bytes(b"not a zip")
    with pytest.raises(InputError, match="cannot read the zip") as error:
        write_copyroom_scene(broken, tmp_path / "out", TINY, show_progress=False)
    assert str(error.value).startswith(str(broken / POSES_ZIP))

    (broken / "copyroom_c2000_opt_0_1024.jpg").unlink()
    with pytest.raises(InputError, match="missing"):
        write_copyroom_scene(broken, tmp_path / "out", TINY, show_progress=False)
    (broken / "copyroom_c2000_opt_0_1024.jpg").write_bytes(b"")
    with pytest.raises(InputError, match="texture image could not be read"):
        load_textured_mesh(broken / SCAN_FILE)

    with pytest.raises(InputError, match="not an empty folder"):
        write_copyroom_scene(COPYROOM, written.root, TINY, show_progress=False)


def test_prepared_scene_is_cached_under_a_config_key(tmp_path):
    spec = CopyroomSceneSpec(config=TINY)
    first = spec.prepare(tmp_path, show_progress=False, data_root=DATA)
    second = spec.prepare(tmp_path, show_progress=False, data_root=DATA)
    assert not first.from_cache and second.from_cache and first.root == second.root
    assert first.root.name == f"copyroom-32x24-{copyroom_key(TINY, COPYROOM)}"
    assert first.resolution == (32, 24) and first.name == "copyroom"
    assert len(read_scene(first.root, split="test").frames) == 2
    other = replace(TINY, gap_frames=300)
    assert copyroom_key(other, COPYROOM) != copyroom_key(TINY, COPYROOM)
