"""Benchmark scene specs: degraded query variants of a rendered scene (bench/variant_scenes.py) and the real-data
scenes (bench/real_scenes.py) built from ../shared/data: folds, poses, intrinsics, depth, the cache, and the error
when the data is not there."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from sceneloc.bench.real_scenes import (FOUNTAIN_P11, HERZJESU_P8, REAL_SCENES, SLAMBOOK, SLAMBOOK_CAMERA,
                                        STAIRS_7SCENES, read_strecha_camera)
from sceneloc.bench.scenes import SyntheticSceneSpec
from sceneloc.bench.variant_scenes import DegradedQueriesSpec
from sceneloc.data import read_scene
from sceneloc.data.degrade import DEGRADATIONS, DegradationConfig
from sceneloc.runtime.errors import InputError
from sceneloc.geometry import Camera, Rigid3

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
"""The project's shared real data, beside the checkout (../shared/data)."""
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"real data not found at {DATA}")


def _same_poses(a: Rigid3 | None, b: Rigid3 | None) -> bool:
    return a is None and b is None or np.allclose(a.matrix(), b.matrix(), atol=1e-12)


# ---------------------------------------------------------------- degraded query variants


@pytest.fixture(scope="module")
def tiny_variants(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    spec = DegradedQueriesSpec(SyntheticSceneSpec("tiny-room"))
    return cache, spec, spec.prepare(cache, show_progress=False)


def test_variants_hold_the_base_queries_degraded(tiny_variants):
    cache, spec, prepared = tiny_variants
    assert spec.name == prepared.name == "tiny-room"
    assert [name for name, _ in prepared.query_variants] == list(DEGRADATIONS)
    base = read_scene(prepared.root, split="test")
    assert len(base.frames) == 20
    for name, root in prepared.query_variants:
        assert root.parent == cache / "scenes" and root.name.startswith(f"{prepared.root.name}+{name}-")
        assert sorted(p.name for p in root.iterdir()) == ["test"]
        variant = read_scene(root, split="test")
        assert [f.name for f in variant.frames] == [f.name for f in base.frames]
        differences = []
        for ours, theirs in zip(variant.frames, base.frames):
            assert ours.camera == theirs.camera
            assert _same_poses(ours.cam_from_world, theirs.cam_from_world)
            # Depth is the base's file, shared by a hard link.
            assert os.path.samefile(ours.depth_path, theirs.depth_path)
            differences.append(np.abs(ours.load_rgb().astype(int) - theirs.load_rgb()).mean())
        assert min(differences) > 1.0, name
        with pytest.raises(InputError, match="train"):
            read_scene(root, split="train")


def test_variants_come_from_the_cache_and_follow_the_config(tiny_variants):
    cache, spec, prepared = tiny_variants
    assert not prepared.from_cache
    again = spec.prepare(cache, show_progress=False)
    assert again.from_cache and again.query_variants == prepared.query_variants and again.root == prepared.root
    # Another JPEG quality is another JPEG variant; the other degradations are untouched.
    stronger = DegradedQueriesSpec(spec.base, ("noise", "jpeg"), DegradationConfig(jpeg_quality=5))
    changed = dict(stronger.prepare(cache, show_progress=False).query_variants)
    before = dict(prepared.query_variants)
    assert changed["noise"] == before["noise"]
    assert changed["jpeg"] != before["jpeg"]
    frame = "frame-000003"
    jpeg5, jpeg20 = (cv2.imread(str(root / "test" / "rgb" / f"{frame}.color.png")) for root in
                     (changed["jpeg"], before["jpeg"]))
    original = cv2.imread(str(prepared.root / "test" / "rgb" / f"{frame}.color.png"))
    assert cv2.PSNR(jpeg5, original) < cv2.PSNR(jpeg20, original) - 2


def test_unknown_degradation_is_rejected():
    with pytest.raises(ValueError, match="fog"):
        DegradedQueriesSpec(SyntheticSceneSpec("tiny-room"), ("blur", "fog"))


@needs_data
def test_variants_of_a_sevenscenes_base(tmp_path):
    """A base in the 7-Scenes layout (JPEG images, no depth) gives ACE variants with the same names and poses."""
    prepared = DegradedQueriesSpec(STAIRS_7SCENES, ("blur",)).prepare(tmp_path, False, DATA)
    base = read_scene(prepared.root, split="test")
    ((name, root),) = prepared.query_variants
    variant = read_scene(root, split="test")
    assert [f.name for f in variant.frames] == [f.name for f in base.frames] == [
        f"seq-0{s}-frame-00000{i}" for s in (1, 4) for i in range(3)]
    for ours, theirs in zip(variant.frames, base.frames):
        assert ours.camera == theirs.camera and ours.depth_path is None
        assert _same_poses(ours.cam_from_world, theirs.cam_from_world)


# ---------------------------------------------------------------- real scenes


@needs_data
def test_stairs_is_read_in_place(tmp_path):
    prepared = STAIRS_7SCENES.prepare(tmp_path, False, DATA)
    assert prepared.root == DATA / "sevenscenes_stairs_slice"
    assert (prepared.name, prepared.seed, prepared.resolution, prepared.folds) == ("stairs-7scenes", 0, (640, 480), ())
    assert len(read_scene(prepared.root, split="train").frames) == 6
    assert len(read_scene(prepared.root, split="test").frames) == 6
    assert not (tmp_path / "scenes").exists()


def _ground_truth_camera(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[int, int]]:
    """K (3, 3), R camera-to-world (3, 3), C (3,), (w, h) straight from a Strecha .camera file."""
    rows = np.array(path.read_text().split(), dtype=np.float64)
    return rows[:9].reshape(3, 3), rows[12:21].reshape(3, 3), rows[21:24], (int(rows[24]), int(rows[25]))


@needs_data
@pytest.mark.parametrize("spec, folder, count", [(FOUNTAIN_P11, "fountain-P11", 11), (HERZJESU_P8, "Herz-Jesus-P8", 8)])
def test_strecha_leave_one_out_folds(tmp_path, spec, folder, count):
    prepared = spec.prepare(tmp_path, False, DATA)
    assert (prepared.seed, prepared.resolution, len(prepared.folds)) == (0, (1536, 1024), count)
    names = [f"{i:04d}" for i in range(count)]
    for held_out, fold in zip(names, prepared.folds):
        assert fold.name == f"fold-{held_out}"
        train, test = read_scene(fold, split="train"), read_scene(fold, split="test")
        assert [f.name for f in train.frames] == [n for n in names if n != held_out]
        (query,) = test.frames
        assert query.name == held_out and query.depth_path is None
        k, rotation, centre, (w, h) = _ground_truth_camera(
            DATA / "strecha" / folder / "gt_dense_cameras" / f"{held_out}.jpg.camera")
        # Half size in OpenCV's pixel convention: f / 2 and (c + 0.5) / 2 - 0.5.
        assert (w, h) == (3072, 2048)
        np.testing.assert_allclose(query.camera.K, [[k[0, 0] / 2, 0, (k[0, 2] + 0.5) / 2 - 0.5],
                                                    [0, k[1, 1] / 2, (k[1, 2] + 0.5) / 2 - 0.5], [0, 0, 1]],
                                   atol=1e-9)
        world_from_cam = query.cam_from_world.inverse()
        np.testing.assert_allclose(world_from_cam.translation, centre, atol=1e-9)
        np.testing.assert_allclose(world_from_cam.rotation, rotation, atol=2e-6)
        assert os.path.samefile(query.rgb_path, prepared.root / "frames" / "rgb" / query.rgb_path.name)
    image = read_scene(prepared.folds[0], split="test").frames[0].load_rgb()
    original = cv2.cvtColor(cv2.imread(str(DATA / "strecha" / folder / "images" / "0000.jpg")), cv2.COLOR_BGR2RGB)
    assert cv2.PSNR(image, cv2.resize(original, (1536, 1024), interpolation=cv2.INTER_AREA)) > 45
    again = spec.prepare(tmp_path, False, DATA)
    assert again.from_cache and again.folds == prepared.folds and not prepared.from_cache


@needs_data
def test_slambook_folds_keep_depth_and_poses(tmp_path):
    prepared = SLAMBOOK.prepare(tmp_path, False, DATA)
    assert (prepared.name, prepared.resolution, len(prepared.folds)) == ("slambook", (640, 480), 5)
    lines = (DATA / "slambook_rgbd" / "pose.txt").read_text().split("\n")
    for i, fold in enumerate(prepared.folds, start=1):
        assert len(read_scene(fold, split="train").frames) == 4
        (query,) = read_scene(fold, split="test").frames
        assert query.name == str(i) and query.camera == SLAMBOOK_CAMERA
        tx, ty, tz, qx, qy, qz, qw = map(float, lines[i - 1].split())
        np.testing.assert_allclose(query.cam_from_world.center, [tx, ty, tz], atol=1e-12)
        # The file's quaternion is the camera-to-world rotation.
        np.testing.assert_allclose(query.cam_from_world.inverse().qvec_wxyz, np.array([qw, qx, qy, qz]) * np.sign(qw),
                                   atol=1e-5)
        raw = cv2.imread(str(DATA / "slambook_rgbd" / "depth" / f"{i}.pgm"), cv2.IMREAD_ANYDEPTH)
        np.testing.assert_allclose(query.load_depth(), raw / 1000.0, atol=1e-6)
        assert (raw > 0).mean() > 0.5
        rgb = cv2.cvtColor(cv2.imread(str(DATA / "slambook_rgbd" / "color" / f"{i}.png")), cv2.COLOR_BGR2RGB)
        np.testing.assert_array_equal(query.load_rgb(), rgb)


@pytest.mark.parametrize("spec", REAL_SCENES, ids=lambda s: s.name)
def test_missing_data_root_says_what_to_set(tmp_path, spec):
    with pytest.raises(InputError, match=rf"^set SCENELOC_DATA \(or pass --data-root\) to the folder holding "
                                         rf"{spec.subdir}/$"):
        spec.prepare(tmp_path, False, None)
    with pytest.raises(InputError, match=rf"{tmp_path / 'empty' / spec.subdir}.*missing; set SCENELOC_DATA"):
        spec.prepare(tmp_path, False, tmp_path / "empty")
    assert spec.seed == 0


def test_strecha_camera_file_with_distortion_is_rejected(tmp_path):
    path = tmp_path / "0000.jpg.camera"
    path.write_text("100 0 50\n0 100 40\n0 0 1\n0.1 0 0\n1 0 0\n0 1 0\n0 0 1\n1 2 3\n100 80\n")
    with pytest.raises(InputError, match=r"0000\.jpg\.camera.*distortion"):
        read_strecha_camera(path)
    path.write_text("100 0 50\n0 100 40\n0 0 1\n0 0 0\n1 0 0\n0 1 0\n0 0 1\n1 2 3\n100 80\n")
    camera, cam_from_world = read_strecha_camera(path)
    assert camera == Camera(100, 80, 100.0, 100.0, 50.0, 40.0)
    np.testing.assert_allclose(cam_from_world.center, [1, 2, 3])
    path.write_text("100 0 50\n0 100 40\n0 0 1\n")
    with pytest.raises(InputError, match="26 numbers"):
        read_strecha_camera(path)


def test_translated_scene_moves_poses_and_mesh_only(tmp_path):
    import open3d as o3d

    from sceneloc.bench.variant_scenes import TranslatedSceneSpec

    base_spec = SyntheticSceneSpec("tiny-room")
    spec = TranslatedSceneSpec(base_spec, (1000.0, 0.0, -2.5))
    moved = spec.prepare(tmp_path, show_progress=False)
    base = base_spec.prepare(tmp_path, show_progress=False)
    assert moved.name == "tiny-room@1000_0_-2.5m" and moved.root != base.root
    for split in ("train", "test"):
        a, b = read_scene(base.root, split=split), read_scene(moved.root, split=split)
        assert [f.name for f in a.frames] == [f.name for f in b.frames]
        for fa, fb in zip(a.frames, b.frames):
            np.testing.assert_allclose(fb.cam_from_world.center, fa.cam_from_world.center + [1000.0, 0.0, -2.5],
                                       atol=1e-9)
            np.testing.assert_allclose(fb.cam_from_world.rotation, fa.cam_from_world.rotation, atol=1e-12)
            assert fb.rgb_path.read_bytes() == fa.rgb_path.read_bytes()
    # The ground-truth mesh moves with the cameras.
    mesh_a = np.asarray(o3d.io.read_triangle_mesh(str(base.root / "mesh.ply")).vertices)
    mesh_b = np.asarray(o3d.io.read_triangle_mesh(str(moved.root / "mesh.ply")).vertices)
    np.testing.assert_allclose(mesh_b - mesh_a, np.tile([1000.0, 0.0, -2.5], (len(mesh_a), 1)), atol=1e-6)
    assert spec.prepare(tmp_path, show_progress=False).from_cache
