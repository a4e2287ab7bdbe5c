"""Bad input the review of issue 13 found mishandled (a traceback, a silent acceptance, a late or misleading error):
each case must end with exit code 2 and one error line naming the file and the problem, before any long work, and
leave no output behind.

The inputs are tiny and made here; the map files are the committed fixtures of tests/data (no mapping runs, except
where the bad image is only found while encoding). Most cases run `sceneloc.cli.main` in-process; those where the
old behaviour was a crash of the whole process run the installed script in a subprocess."""

from __future__ import annotations

import json
import os
import shutil
import struct
import zlib
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import open3d as o3d
import pycolmap
import pytest
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from conftest import run_cli, run_script
from sceneloc.data import read_scene
from sceneloc.data.ace_folder import write_ace_frame
from sceneloc.data.scene import Frame, image_size, read_image
from sceneloc.data.synthetic import PRESETS, render_scene_to_folder
from sceneloc.runtime.errors import InputError
from sceneloc.export.points import PointCloud, write_ply
from sceneloc.geometry import Camera, Rigid3

pycolmap.logging.minloglevel = 2
MAPS = Path(__file__).parent / "data" / "maps_5b85055"
SINGLE_MAP, MULTI_MAP = MAPS / "single_v1.map", MAPS / "multi_v2.multimap"
CAMERA = Camera(64, 48, 50.0, 50.0, 31.5, 23.5)
TINY_MAP = ["--set", "buffer_size=2000", "--iterations", "20", "--image-height", "48", "--set", "head.width=32"]


# --- helpers ------------------------------------------------------------------------------------------------------

def _assert_refused(code: int, output: str, *expected: str) -> None:
    """Exit code 2, no traceback, exactly one error line, holding every `expected` text."""
    assert code == 2, output
    assert "Traceback" not in output, output
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, output
    for text in expected:
        assert text in errors[0], f"{text!r} not in {errors[0]!r}"


def _assert_empty(folder: Path) -> None:
    """Nothing was written into `folder` (no hidden temporary file either)."""
    assert not folder.exists() or sorted(p.name for p in folder.iterdir()) == []


def _ace_scene(root: Path, n: int = 4, depth: bool = False, posed: bool = True, names=None) -> Path:
    """An ACE folder of n random-texture 64x48 frames f0.. (or `names`), optionally with depth and without poses."""
    rng = np.random.default_rng(0)
    for i, name in enumerate(names or [f"f{i}" for i in range(n)]):
        rgb = rng.integers(0, 256, (CAMERA.height, CAMERA.width, 3), dtype=np.uint8)
        pose = Rigid3(np.eye(3), np.array([0.1 * i, 0.0, 1.0])) if posed else None
        write_ace_frame(root, name, rgb, CAMERA, pose, np.full((CAMERA.height, CAMERA.width), 2.0) if depth else None)
    return root


def _png_header(path: Path, width: int, height: int) -> Path:
    """A PNG that declares width x height pixels but holds no pixel data: the header is all a reader sees before
    it decides to decode (a real 20000 x 20000 image would cost a gigabyte to make)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
                     + chunk(b"IEND", b""))
    return path


def _with_metadata(source: Path, target: Path, edit) -> Path:
    """A copy of the map file `source` whose JSON metadata went through edit(meta) (which may return a new value)."""
    with safe_open(str(source), framework="pt") as f:
        meta = json.loads(f.metadata()["sceneloc"])
    meta = edit(meta) or meta
    save_file(load_file(str(source)), str(target), metadata={"sceneloc": json.dumps(meta)})
    return target


def _colmap_model(root: Path, camera_line: str = "PINHOLE 64 48 50 50 32 24", binary: bool = True) -> Path:
    """root/sparse/0 holding a two-image model (text, or binary written by pycolmap) and root/images with them."""
    text = root / "text"
    text.mkdir(parents=True)
    (text / "cameras.txt").write_text(f"1 {camera_line}\n")
    (text / "images.txt").write_text("1 1 0 0 0 0 0 0 1 a.png\n10 20 -1\n2 1 0 0 0 0.1 0 0 1 b.png\n\n")
    (text / "points3D.txt").write_text("")
    model = root / "sparse" / "0"
    if binary:
        model.mkdir(parents=True)
        pycolmap.Reconstruction(str(text)).write_binary(str(model))
        shutil.rmtree(text)
    else:
        model.parent.mkdir(parents=True)
        text.rename(model)
    (root / "images").mkdir()
    for name in ("a.png", "b.png"):
        cv2.imwrite(str(root / "images" / name), np.zeros((48, 64, 3), np.uint8))
    return model


# --- images -------------------------------------------------------------------------------------------------------

def test_huge_image_is_refused_naming_it(tmp_path):
    scene = _ace_scene(tmp_path / "scene")
    huge = _png_header(scene / "rgb" / "f2.color.png", 20000, 20000)
    code, output = run_cli("map", scene, "-o", tmp_path / "out" / "x.map", *TINY_MAP)
    _assert_refused(code, output, str(huge), "too large to read")
    _assert_empty(tmp_path / "out")
    # The same on the paths that do not read the header first (a size given in transforms.json): decoding.
    with pytest.raises(InputError, match="f2.color.png: image is too large"):
        read_image(huge)
    with pytest.raises(InputError, match="f2.color.png: image header is too large"):
        image_size(huge)


def test_truncated_jpeg_is_refused_not_trained_on(tmp_path):
    scene = _ace_scene(tmp_path / "scene")
    png = scene / "rgb" / "f1.color.png"
    jpeg = png.with_suffix(".jpg")
    Image.open(png).save(jpeg, quality=95)
    png.unlink()
    data = jpeg.read_bytes()
    jpeg.write_bytes(data[:len(data) // 2])
    code, output = run_cli("map", scene, "-o", tmp_path / "out" / "x.map", *TINY_MAP)
    _assert_refused(code, output, str(jpeg), "truncated")
    _assert_empty(tmp_path / "out")


def test_depth_of_another_size_than_its_colour_image(tmp_path):
    scene = _ace_scene(tmp_path / "scene", depth=True)
    depth = scene / "depth" / "f2.depth.png"
    cv2.imwrite(str(depth), np.full((24, 32), 2000, np.uint16))
    code, output = run_cli("map", scene, "-o", tmp_path / "out" / "x.map", *TINY_MAP)
    _assert_refused(code, output, str(depth), "depth image is 32x24 but its colour image f2.color.png is 64x48")
    _assert_empty(tmp_path / "out")
    # Readers that do not compare headers (a NeRF depth_file_path): when the depth is loaded.
    frame = Frame("f2", scene / "rgb" / "f2.color.png", CAMERA, depth_path=depth)
    with pytest.raises(InputError, match="f2.depth.png: depth image is 32x24 but its colour image is 64x48"):
        frame.load_depth()


# --- poses and intrinsics -----------------------------------------------------------------------------------------

def test_3x4_pose_file_is_refused(tmp_path):
    scene = _ace_scene(tmp_path / "scene")
    pose = scene / "poses" / "f1.pose.txt"
    pose.write_text("1 0 0 0\n0 1 0 0\n0 0 1 0\n")
    code, output = run_cli("map", scene, "-o", tmp_path / "out" / "x.map", *TINY_MAP)
    _assert_refused(code, output, str(pose), "found 12 numbers (a 3x4 matrix")
    _assert_empty(tmp_path / "out")


def test_calibration_made_for_another_image_size(tmp_path):
    scene = _ace_scene(tmp_path / "scene")
    calibration = scene / "calibration" / "f0.calibration.txt"
    calibration.write_text("100 0 319.5\n0 100 239.5\n0 0 1\n")  # a 640x480 camera
    code, output = run_cli("map", scene, "-o", tmp_path / "out" / "x.map", *TINY_MAP)
    _assert_refused(code, output, str(calibration), "principal point (319.5, 239.5) lies outside the 64x48 image")
    _assert_empty(tmp_path / "out")


@pytest.mark.parametrize("angle", [0, -0.5, 3.5], ids=["zero", "negative", "over-pi"])
def test_nerf_field_of_view_out_of_range(tmp_path, angle):
    root = tmp_path / "nerf"
    root.mkdir()
    cv2.imwrite(str(root / "a.png"), np.zeros((48, 64, 3), np.uint8))
    (root / "transforms.json").write_text(json.dumps(
        {"camera_angle_x": angle, "frames": [{"file_path": "a.png", "transform_matrix": np.eye(4).tolist()}]}))
    code, output = run_cli("map", root, "-o", tmp_path / "out" / "x.map", *TINY_MAP)
    _assert_refused(code, output, str(root / "transforms.json"), "'camera_angle_x' is",
                    "must lie strictly between 0 and pi")
    _assert_empty(tmp_path / "out")


# --- COLMAP models ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("keep", [-8, 30], ids=["last-parameter-cut", "zeros-instead-of-focal"])
def test_truncated_cameras_bin(tmp_path, keep):
    """pycolmap reads both without complaint: the first with a wrong principal point, the second with a zero focal
    length (a LinAlgError in mapping before)."""
    model = _colmap_model(tmp_path / "scene")
    cameras = model / "cameras.bin"
    data = cameras.read_bytes()
    cameras.write_bytes(data[:keep])
    code, output = run_cli("map", tmp_path / "scene", "-o", tmp_path / "out" / "x.map", *TINY_MAP)
    _assert_refused(code, output, str(cameras), "truncated")
    _assert_empty(tmp_path / "out")


def test_truncated_images_bin_does_not_crash_the_process(tmp_path):
    """pycolmap aborted the whole process on this file (no exception to catch): a subprocess tells."""
    model = _colmap_model(tmp_path / "scene")
    images = model / "images.bin"
    images.write_bytes(images.read_bytes()[:12])
    code, output = run_script("map", tmp_path / "scene", "-o", tmp_path / "out" / "x.map")
    _assert_refused(code, output, str(images), "truncated")
    _assert_empty(tmp_path / "out")


def test_colmap_check_failure_is_one_plain_line(tmp_path):
    model = _colmap_model(tmp_path / "scene", camera_line="PINHOLE 64 48 50 50 32", binary=False)
    code, output = run_cli("map", tmp_path / "scene", "-o", tmp_path / "out" / "x.map", *TINY_MAP)
    _assert_refused(code, output, str(model / "cameras.txt"),
                    "a camera has the wrong number of parameters for its model")
    assert "Check failed" not in output and ".cc:" not in output, output
    _assert_empty(tmp_path / "out")


def test_colmap_zero_focal_length(tmp_path):
    model = _colmap_model(tmp_path / "scene", camera_line="PINHOLE 64 48 0 0 32 24", binary=False)
    code, output = run_cli("map", tmp_path / "scene", "-o", tmp_path / "out" / "x.map", *TINY_MAP)
    _assert_refused(code, output, str(model / "cameras.txt"), "camera 1: invalid intrinsics fx=0")
    _assert_empty(tmp_path / "out")


# --- map metadata -------------------------------------------------------------------------------------------------

def _drop(*keys):
    def edit(meta):
        target = meta
        for key in keys[:-1]:
            target = target[key]
        del target[keys[-1]]
    return edit


def _set(value, *keys):
    def edit(meta):
        target = meta
        for key in keys[:-1]:
            target = target[key]
        target[keys[-1]] = value
    return edit


@pytest.mark.parametrize("edit, problem", [
    (_drop("head"), "map metadata has no 'head'"),
    (_drop("encoder"), "map metadata has no 'encoder.name'"),
    (_set("20", "scene", "n_frames"), "map metadata 'scene.n_frames' is \"20\", not an integer"),
    (_set(1, "head", "nope"), "'head.nope' is not a setting of this sceneloc"),
    (_set("512", "head", "width"), '\'head.width\' is "512", not an integer'),
    (_set(-4, "head", "width"), "map tensors do not match its config"),
    (_set("120", "image_height"), "'image_height' is \"120\", not an integer"),
    (_set(4, "image_height"), "below one encoder cell"),
    (_set([1, 2], "mapping_config", "lr_max"), "'mapping_config.lr_max' is [1, 2], not a finite number"),
    (lambda meta: [meta], "map metadata is a JSON list, not an object"),
], ids=["no-head", "no-encoder", "n-frames-string", "unknown-key", "width-string", "width-negative", "height-string",
        "height-4", "lr-list", "not-an-object"])
def test_single_scene_map_with_bad_metadata(tmp_path, edit, problem):
    bad = _with_metadata(SINGLE_MAP, tmp_path / "bad.map", edit)
    code, output = run_cli("export", "points", bad, _ace_scene(tmp_path / "scene"), "-o", tmp_path / "out" / "c.ply")
    _assert_refused(code, output, str(bad), problem)
    _assert_empty(tmp_path / "out")


@pytest.mark.parametrize("edit, problem", [
    (_drop("scenes"), "map metadata has no 'scenes'"),
    (_set([{"n_frames": 3}], "scenes"), "'scenes' must list distinct {name, ...} objects"),
    (_set(True, "model", "width"), "'model.width' is true, not an integer"),
    (_set(-1, "model", "num_scra_layers"), "model.num_scra_layers must be at least 1"),
    (_drop("config"), "map metadata has no 'config'"),
    (_set(7, "config", "mapping"), "'config.mapping' is 7, not an object"),
    (_set(1, "config", "mapping", "nope"), "'config.mapping.nope' is not a setting of this sceneloc"),
    (_set("fast", "config", "mapping", "iterations"), '\'config.mapping.iterations\' is "fast", not an integer'),
], ids=["no-scenes", "scene-without-name", "width-bool", "negative-layers", "no-config", "mapping-number",
        "unknown-setting", "iterations-string"])
def test_multi_scene_map_with_bad_metadata_as_init(tmp_path, edit, problem):
    bad = _with_metadata(MULTI_MAP, tmp_path / "bad.multimap", edit)
    code, output = run_cli("map", "--multi", "--init", bad, _ace_scene(tmp_path / "scene"),
                           "-o", tmp_path / "out" / "x.multimap")
    _assert_refused(code, output, str(bad), problem)
    _assert_empty(tmp_path / "out")


def test_multi_scene_map_given_to_export_points_says_so(tmp_path):
    code, output = run_cli("export", "points", MULTI_MAP, _ace_scene(tmp_path / "scene"),
                           "-o", tmp_path / "out" / "c.ply")
    _assert_refused(code, output, str(MULTI_MAP), "is a multi-scene sceneloc map (from `sceneloc map --multi`), "
                                                  "not a single-scene sceneloc map")
    _assert_empty(tmp_path / "out")


# --- mapping settings ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("options, problem", [
    (["--set", "lr_max=-0.002"], "lr_max must be a positive number, got -0.002"),
    (["--set", "lr_end=0"], "lr_end must be a positive number, got 0.0"),
    (["--set", "keypoints.lr_start=nan"], "keypoints.lr_start must be a positive number, got nan"),
    (["--set", "head.num_blocks=-1"], "head.num_blocks must be at least 0, got -1"),
    (["--set", "head.layers_per_block=0"], "head.layers_per_block must be at least 1, got 0"),
    (["--set", "depth_loss_weight=-1"], "depth_loss_weight must be zero or positive, got -1.0"),
    (["--set", "weight_decay=-0.1"], "weight_decay must be zero or positive"),
    (["--set", "aug_brightness=1.5"], "aug_brightness must lie in [0, 1)"),
    (["--image-height", "4"], "image_height must be at least 8 (one encoder cell), got 4"),
    (["--multi", "--set", "mapping.lr_start=-1"], "lr_start must be a positive number, got -1.0"),
    (["--multi", "--set", "mapping.head.num_blocks=-2"], "head.num_blocks must be at least 0"),
    (["--multi", "--set", "model.num_scra_layers=-1"], "model.num_scra_layers must be at least 1"),
    (["--multi", "--keypoints"], "keypoints are for single-scene maps"),
], ids=["lr-negative", "lr-end-zero", "lr-nan", "blocks-negative", "layers-zero", "weight-negative",
        "decay-negative", "brightness", "height-4", "multi-lr", "multi-blocks", "multi-model", "multi-keypoints"])
def test_mapping_setting_that_cannot_work(tmp_path, options, problem):
    scene = _ace_scene(tmp_path / "scene")
    code, output = run_cli("map", scene, "-o", tmp_path / "out" / "x.map", *options)
    _assert_refused(code, output, problem)
    _assert_empty(tmp_path / "out")


# --- render -------------------------------------------------------------------------------------------------------

def test_render_into_a_place_that_cannot_be_a_folder(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    code, output = run_cli("render", "tiny-room", "-o", blocker / "scene")
    _assert_refused(code, output, str(blocker / "scene"), "cannot write here")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_render_into_a_read_only_folder(tmp_path):
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        code, output = run_cli("render", "tiny-room", "-o", folder / "scene")
    finally:
        folder.chmod(0o755)
    _assert_refused(code, output, str(folder / "scene"), "cannot write here")
    _assert_empty(folder)


@pytest.mark.parametrize("exists", [False, True], ids=["new-folder", "empty-folder"])
def test_failed_render_removes_the_folders_it_made(tmp_path, monkeypatch, exists):
    import sceneloc.data.synthetic.folder as folder_module

    calls = []

    def failing_render(*args, **kwargs):
        calls.append(1)
        if len(calls) > 2:
            raise KeyboardInterrupt  # what a user's Ctrl-C mid-render raises
        return real_render(*args, **kwargs)

    real_render = folder_module.render_view
    monkeypatch.setattr(folder_module, "render_view", failing_render)
    out = tmp_path / "scene"
    if exists:
        out.mkdir()
    with pytest.raises(KeyboardInterrupt):
        render_scene_to_folder(replace(PRESETS["tiny-room"], n_map=4, n_query=2), out, progress=False)
    assert len(calls) == 3
    if exists:
        _assert_empty(out)
    else:
        assert not out.exists()


# --- evaluate and evaluate-cloud ----------------------------------------------------------------------------------

def test_evaluate_refuses_poses_of_another_split(tmp_path):
    """An ACE root's train/ and test/ both number their frames from f0: test poses scored against --split train
    matched by name and were silently compared with the wrong poses."""
    root = tmp_path / "root"
    _ace_scene(root / "train")
    _ace_scene(root / "test", n=1)
    poses = tmp_path / "poses.txt"
    poses.write_text("f0 1 0 0 0 0 0 1 50\n")
    code, output = run_cli("evaluate", poses, "--gt", root, "--split", "train", "-o", tmp_path / "out" / "report")
    _assert_refused(code, output, str(poses), f"estimates 1 of the 4 ground-truth images of {root}",
                    "check --split and --gt")
    _assert_empty(tmp_path / "out")
    code, output = run_cli("evaluate", poses, "--gt", root, "--split", "test", "-o", tmp_path / "out" / "report")
    assert code == 0, output


def test_evaluate_image_without_ground_truth_names_both_files(tmp_path):
    scene = _ace_scene(tmp_path / "scene", n=2)
    poses = tmp_path / "poses.txt"
    poses.write_text("f0 1 0 0 0 0 0 1 50\nzz 1 0 0 0 0 0 1 50\n")
    code, output = run_cli("evaluate", poses, "--gt", scene, "-o", tmp_path / "out" / "report")
    _assert_refused(code, output, str(poses), "'zz' has no ground-truth pose in", str(scene))
    _assert_empty(tmp_path / "out")


def test_truncated_ply_in_evaluate_cloud(tmp_path):
    cloud = tmp_path / "cloud.ply"
    xyz = np.random.default_rng(0).random((50, 3)).astype(np.float32)
    write_ply(cloud, PointCloud(xyz, np.full((50, 3), 200, np.uint8)))
    cloud.write_bytes(cloud.read_bytes()[:-100])
    mesh = tmp_path / "mesh.ply"
    assert o3d.io.write_triangle_mesh(str(mesh), o3d.geometry.TriangleMesh.create_box())
    code, output = run_cli("evaluate-cloud", cloud, "--mesh", mesh, "-o", tmp_path / "out" / "e")
    _assert_refused(code, output, str(cloud), "truncated: its header declares 50 points")
    _assert_empty(tmp_path / "out")
    # A truncated mesh: its vertices are measured too (the faces' size is not in the header).
    mesh.write_bytes(mesh.read_bytes()[:200])
    cloud.write_bytes(b"")
    write_ply(cloud, PointCloud(xyz, np.full((50, 3), 200, np.uint8)))
    code, output = run_cli("evaluate-cloud", cloud, "--mesh", mesh, "-o", tmp_path / "out" / "e")
    _assert_refused(code, output, str(mesh), "truncated: its header declares 8 points or vertices")
    _assert_empty(tmp_path / "out")


# --- localize -----------------------------------------------------------------------------------------------------

def test_unstorable_image_name_is_refused_before_localizing(tmp_path):
    queries = _ace_scene(tmp_path / "queries", posed=False, names=["f0", "#f1"])
    out = tmp_path / "out" / "poses.txt"
    code, output = run_cli("localize", SINGLE_MAP, queries, "-o", out)
    _assert_refused(code, output, str(out), "image name '#f1' cannot be stored in a poses file")
    assert "localized" not in output, output
    _assert_empty(tmp_path / "out")


def test_readers_still_read_what_they_read(tmp_path):
    """Positive control of the checks above: good files of every kind pass them."""
    assert len(read_scene(_ace_scene(tmp_path / "ace", depth=True)).frames) == 4
    assert [f.name for f in read_scene(_colmap_model(tmp_path / "colmap").parents[1]).frames] == ["a", "b"]
    frame = read_scene(tmp_path / "ace").frames[0]
    assert frame.load_rgb().shape == (48, 64, 3) and frame.load_depth().shape == (48, 64)


def test_export_points_of_a_scene_coordinate_map_needs_its_images(tmp_path):
    code, out = run_cli("export", "points", MAPS / "single_v1.map", "-o", tmp_path / "cloud.ply")
    assert code == 2 and "single_v1.map: a scene-coordinate map: give the posed mapping images" in out
    assert not (tmp_path / "cloud.ply").exists()
