"""The `sceneloc` command on bad input: one error line naming the file and the problem, exit code 2, no traceback,
and nothing written (no map, poses file, report or leftover temporary file).

Most cases run `sceneloc.cli.main` in-process (the real entry point, which turns InputError into the error line);
three representative ones run the installed `sceneloc` script in a subprocess."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from conftest import run_cli, run_script
from sceneloc.data.ace_folder import write_ace_frame
from sceneloc.geometry import Camera, Rigid3
from sceneloc.maps.scene_map import SceneMap

CAMERA = Camera(64, 48, 50.0, 50.0, 31.5, 23.5)
N_FRAMES = 4
# Seconds of mapping: enough to write a real map file, no accuracy needed here.
TINY_MAP = ["--set", "buffer_size=2000", "--iterations", "20", "--image-height", "64", "--set", "head.width=32"]
FAST_LOCALIZE = ["--set", "solver.max_iterations=100"]


def _write_scene(root: Path) -> Path:
    """An ACE folder of N_FRAMES random-texture frames f0..f3 on a short arc."""
    rng = np.random.default_rng(0)
    for i in range(N_FRAMES):
        rgb = rng.integers(0, 256, (CAMERA.height, CAMERA.width, 3), dtype=np.uint8)
        rotation = Rotation.from_euler("y", 5.0 * i, degrees=True).as_matrix()
        write_ace_frame(root, f"f{i}", rgb, CAMERA, Rigid3(rotation, np.array([0.1 * i, 0.0, 1.0])))
    return root


def _assert_one_error_line(code: int, output: str, *expected: str) -> None:
    assert code == 2, output
    assert "Traceback" not in output, output
    errors = [line for line in output.splitlines() if "error" in line.lower()]
    assert len(errors) == 1, output
    for text in expected:
        assert text in errors[0], f"{text!r} not in {errors[0]!r}"


def _assert_nothing_written(folder: Path) -> None:
    """folder received no output at all (also no hidden temporary file)."""
    assert not folder.exists() or sorted(p.name for p in folder.iterdir()) == []


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> SimpleNamespace:
    """A valid ACE scene and a map of it (tiny config), made through the CLI; also the positive control that the
    happy path exits 0 and writes its outputs."""
    root = tmp_path_factory.mktemp("good")
    scene = _write_scene(root / "scene")
    map_file = root / "scene.map"
    code, output = run_cli("map", scene, "-o", map_file, *TINY_MAP)
    assert code == 0, output
    assert map_file.is_file() and [p.name for p in root.iterdir() if p.name.startswith(".")] == []
    return SimpleNamespace(scene=scene, map=map_file)


@pytest.fixture
def scene(tmp_path, good) -> Path:
    """A private copy of the valid scene, to break."""
    return Path(shutil.copytree(good.scene, tmp_path / "scene"))


def _write_matrix(path: Path, matrix) -> None:
    path.write_text("\n".join(" ".join(str(v) for v in row) for row in matrix) + "\n")


def _nerf_scene(root: Path, source: Path, wrong_frame: int | None) -> Path:
    """A transforms.json scene over the images of `source`; frame `wrong_frame` claims an 80x48 image."""
    root.mkdir()
    frames = []
    for i in range(N_FRAMES):
        shutil.copy(source / "rgb" / f"f{i}.color.png", root / f"f{i}.png")
        frame = {"file_path": f"f{i}.png", "transform_matrix": np.eye(4).tolist()}
        if i == wrong_frame:
            frame.update(w=80, h=48)
        frames.append(frame)
    (root / "transforms.json").write_text(json.dumps({"fl_x": 50.0, "frames": frames}))
    return root


# --- map: bad scenes, bad options ---------------------------------------------------------------------------------

def test_happy_path_localize_writes_one_line_per_image(good, tmp_path):
    out = tmp_path / "out" / "poses.txt"
    code, output = run_cli("localize", good.map, good.scene, "-o", out, *FAST_LOCALIZE)
    assert code == 0, output
    lines = [line for line in out.read_text().splitlines() if not line.startswith("#")]
    assert sorted(line.split()[0] for line in lines) == [f"f{i}" for i in range(N_FRAMES)]
    assert sorted(p.name for p in out.parent.iterdir()) == ["poses.txt", "poses.txt.json"]


def test_map_says_when_the_epoch_cap_shortens_training(good, tmp_path):
    map_file = tmp_path / "capped.map"
    code, output = run_cli("map", good.scene, "-o", map_file, *TINY_MAP, "--iterations", "1000")
    assert code == 0, output
    steps = SceneMap.load(map_file).metadata["training"]["steps"]
    assert steps < 1000
    assert f"training stopped after {steps:,} of 1,000 steps, at max_buffer_epochs=16 passes" \
        in " ".join(output.split())
    code, output = run_cli("map", good.scene, "-o", map_file, *TINY_MAP)
    assert code == 0 and "training stopped" not in output, output


def test_map_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    code, output = run_cli("map", tmp_path / "empty", "-o", tmp_path / "out" / "x.map", *TINY_MAP)
    _assert_one_error_line(code, output, str(tmp_path / "empty"), "folder is empty")
    _assert_nothing_written(tmp_path / "out")


def test_map_image_without_pose(scene, tmp_path):
    (scene / "poses" / "f2.pose.txt").unlink()
    code, output = run_cli("map", scene, "-o", tmp_path / "out" / "x.map", *TINY_MAP)
    _assert_one_error_line(code, output, str(scene / "rgb" / "f2.color.png"), "image has no pose file")
    _assert_nothing_written(tmp_path / "out")


def test_map_pose_without_image(scene, tmp_path):
    (scene / "rgb" / "f2.color.png").unlink()
    (scene / "calibration" / "f2.calibration.txt").unlink()
    code, output = run_cli("map", scene, "-o", tmp_path / "out" / "x.map", *TINY_MAP)
    _assert_one_error_line(code, output, str(scene / "poses" / "f2.pose.txt"), "pose file has no matching image")
    _assert_nothing_written(tmp_path / "out")


@pytest.mark.parametrize("matrix, problem", [
    ([[1, 0.2, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], "not orthonormal"),
    ([[1, 0, 0, "nan"], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], "NaN"),
], ids=["non-orthonormal", "nan"])
def test_map_invalid_pose(scene, tmp_path, matrix, problem):
    _write_matrix(scene / "poses" / "f1.pose.txt", matrix)
    code, output = run_cli("map", scene, "-o", tmp_path / "out" / "x.map", *TINY_MAP)
    _assert_one_error_line(code, output, str(scene / "poses" / "f1.pose.txt"), "invalid pose", problem)
    _assert_nothing_written(tmp_path / "out")


def test_map_truncated_image(scene, tmp_path):
    # The PNG header survives, so the scene reads; the error comes while encoding, after some frames are done.
    image = scene / "rgb" / "f1.color.png"
    image.write_bytes(image.read_bytes()[:100])
    code, output = run_cli("map", scene, "-o", tmp_path / "out" / "x.map", *TINY_MAP)
    _assert_one_error_line(code, output, str(image), "cannot read image")
    _assert_nothing_written(tmp_path / "out")


def test_map_image_size_differs_from_intrinsics(good, tmp_path):
    nerf = _nerf_scene(tmp_path / "nerf", good.scene, wrong_frame=2)
    code, output = run_cli("map", nerf, "-o", tmp_path / "out" / "x.map", *TINY_MAP)
    _assert_one_error_line(code, output, str(nerf / "f2.png"), "image is 64x48 but its intrinsics are for 80x48")
    _assert_nothing_written(tmp_path / "out")


def test_map_error_with_brackets_is_printed_verbatim(scene, tmp_path):
    # The message quotes "[[fx 0 cx] ...]", which rich would otherwise eat as markup.
    _write_matrix(scene / "calibration" / "f0.calibration.txt", [[50, 1, 31.5], [0, 50, 23.5], [0, 0, 1]])
    code, output = run_cli("map", scene, "-o", tmp_path / "out" / "x.map", *TINY_MAP)
    _assert_one_error_line(code, output, str(scene / "calibration" / "f0.calibration.txt"),
                           "expected a 3x3 K matrix [[fx 0 cx] [0 fy cy] [0 0 1]]")
    _assert_nothing_written(tmp_path / "out")


@pytest.mark.parametrize("options, expected", [
    (["--set", "nope=1"], ["--set nope", "unknown field 'nope'"]),
    (["--set", "head.nope=1"], ["--set head.nope", "unknown field 'nope'"]),
    (["--set", "iterations=many"], ["--set iterations", "cannot read 'many' as int"]),
    (["--encoder", "nope"], ["unknown encoder 'nope'", "xfeat"]),
    (["--iterations", "0"], ["iterations must be at least 1, got 0"]),
    (["--set", "batch_size=0"], ["batch_size must be at least 1, got 0"]),
], ids=["set-unknown", "set-unknown-nested", "set-bad-value", "encoder", "iterations-0", "batch-0"])
def test_map_bad_option(good, tmp_path, options, expected):
    code, output = run_cli("map", good.scene, "-o", tmp_path / "out" / "x.map", *TINY_MAP, *options)
    _assert_one_error_line(code, output, *expected)
    _assert_nothing_written(tmp_path / "out")


def test_map_output_in_unwritable_place(scene):
    target = scene / "rgb" / "f0.color.png" / "x.map"
    code, output = run_cli("map", scene, "-o", target, *TINY_MAP)
    _assert_one_error_line(code, output, str(target), "cannot write here")
    assert sorted(p.name for p in (scene / "rgb").iterdir()) == [f"f{i}.color.png" for i in range(N_FRAMES)]


# --- localize: bad maps, bad queries -----------------------------------------------------------------------------

@pytest.mark.parametrize("keep", [0.5, -100], ids=["half", "all-but-100-bytes"])
def test_localize_truncated_map(good, tmp_path, keep):
    data = good.map.read_bytes()
    bad = tmp_path / "truncated.map"
    bad.write_bytes(data[:int(len(data) * keep)] if keep > 0 else data[:keep])
    code, output = run_cli("localize", bad, good.scene, "-o", tmp_path / "out" / "poses.txt")
    _assert_one_error_line(code, output, str(bad), "not a sceneloc map")
    _assert_nothing_written(tmp_path / "out")


def test_localize_foreign_file_as_map(good, tmp_path):
    foreign = tmp_path / "picture.map"
    shutil.copy(good.scene / "rgb" / "f0.color.png", foreign)
    code, output = run_cli("localize", foreign, good.scene, "-o", tmp_path / "out" / "poses.txt")
    _assert_one_error_line(code, output, str(foreign), "not a sceneloc map")
    _assert_nothing_written(tmp_path / "out")


def test_localize_unreadable_query_image(good, scene, tmp_path):
    image = scene / "rgb" / "f3.color.png"
    image.write_bytes(b"this is not a PNG file")
    code, output = run_cli("localize", good.map, scene, "-o", tmp_path / "out" / "poses.txt", *FAST_LOCALIZE)
    _assert_one_error_line(code, output, str(image), "cannot read image header")
    _assert_nothing_written(tmp_path / "out")


def test_localize_query_size_differs_from_intrinsics(good, tmp_path):
    # The bad frame is the last one, so three images are localized before the error: still no partial poses file.
    nerf = _nerf_scene(tmp_path / "nerf", good.scene, wrong_frame=N_FRAMES - 1)
    code, output = run_cli("localize", good.map, nerf, "-o", tmp_path / "out" / "poses.txt", *FAST_LOCALIZE)
    _assert_one_error_line(code, output, str(nerf / f"f{N_FRAMES - 1}.png"), "intrinsics are for 80x48")
    _assert_nothing_written(tmp_path / "out")


# --- evaluate: bad poses files -----------------------------------------------------------------------------------

@pytest.mark.parametrize("text, problem", [
    ("f0 1 0 0 0 0 0 0 10\nf1 1 0 0 0 0 0\n", "line 2: expected 'name qw qx qy qz tx ty tz num_inliers'"),
    ("f0 1 0 0 0 0 0 0 10\nf1 2 0 0 0 0 0 0 4\n", "line 2: invalid pose for 'f1'"),
    ("f0 1 0 0 0 zero 0 0 10\n", "line 1: pose numbers or inlier count are not numbers"),
], ids=["missing-numbers", "non-unit-quaternion", "not-a-number"])
def test_evaluate_malformed_poses(good, tmp_path, text, problem):
    poses = tmp_path / "poses.txt"
    poses.write_text(text)
    code, output = run_cli("evaluate", poses, "--gt", good.scene, "-o", tmp_path / "out" / "report")
    _assert_one_error_line(code, output, str(poses), problem)
    _assert_nothing_written(tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["poses.txt"]


# --- the installed script, in a subprocess -----------------------------------------------------------------------

def test_subprocess_map_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    code, output = run_script("map", tmp_path / "empty", "-o", tmp_path / "out" / "x.map", columns=80)
    _assert_one_error_line(code, output, str(tmp_path / "empty"), "folder is empty")
    _assert_nothing_written(tmp_path / "out")


def test_subprocess_localize_truncated_map(good, tmp_path):
    bad = tmp_path / "truncated.map"
    bad.write_bytes(good.map.read_bytes()[:1000])
    code, output = run_script("localize", bad, good.scene, "-o", tmp_path / "out" / "poses.txt", columns=80)
    _assert_one_error_line(code, output, str(bad), "not a sceneloc map")
    _assert_nothing_written(tmp_path / "out")


def test_subprocess_evaluate_malformed_poses_long_path(good, tmp_path):
    # A path longer than the 80-column console: the error must still be one line.
    folder = tmp_path / ("a-rather-long-folder-name-" * 4)
    folder.mkdir()
    poses = folder / "poses.txt"
    poses.write_text("f0 1 0 0 0 0 0 0 10\nf1 1 0 0 0\n")
    code, output = run_script("evaluate", poses, "--gt", good.scene, "-o", tmp_path / "out" / "report", columns=80)
    _assert_one_error_line(code, output, str(poses), "line 2: expected")
    _assert_nothing_written(tmp_path / "out")


def test_multi_scene_map_and_localize_through_the_cli(tmp_path, good):
    other = _write_scene(tmp_path / "other")
    out = tmp_path / "out"
    code, output = run_cli("map", good.scene, other, "-o", out / "two.map", *TINY_MAP)
    _assert_one_error_line(code, output, "2 scene folders given: pass --multi")
    code, output = run_cli("map", "--multi", good.scene, other, "-o", out / "two.map",
                           "--set", "mapping.buffer_size=2000", "--iterations", "20", "--image-height", "64",
                           "--set", "model.width=32")
    assert code == 0, output
    code, output = run_cli("localize", out / "two.map", other, "-o", out / "p.txt", *FAST_LOCALIZE)
    _assert_one_error_line(code, output, "two.map", "a multi-scene map: pass --scene NAME or --scene auto")
    code, output = run_cli("localize", good.map, other, "-o", out / "p.txt", "--scene", "other")
    _assert_one_error_line(code, output, "--scene needs a multi-scene map")
    code, output = run_cli("localize", out / "two.map", other, "-o", out / "p.txt", "--scene", "nope")
    _assert_one_error_line(code, output, "the map holds no scene 'nope'")
    code, output = run_cli("localize", out / "two.map", other, "-o", out / "p.txt", "--scene", "auto",
                           *FAST_LOCALIZE)
    assert code == 0, output
    images = json.loads((out / "p.txt.json").read_text())["images"]
    assert len(images) == N_FRAMES
    assert all(set(d["details"]["scene_scores"]) == {"scene", "other"} for d in images), images[0]
