"""Formats users have (issue 13, part 5): the ACE, hloc and COLMAP images.txt poses files beside ours, written,
detected, read back exactly and evaluated (an hloc file cut from our poses file scores as the original); query
images without a posed layout, with cameras from hloc's intrinsics list or from EXIF; bad files give exit code 2 and
one line naming the file and the line."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pycolmap
import pytest
from PIL import Image
from scipy.spatial.transform import Rotation

from conftest import perturbed_pose, random_pose, run_cli
from sceneloc.data import read_scene
from sceneloc.data.ace_folder import write_ace_frame
from sceneloc.data.query_images import read_intrinsics_list, read_query_images
from sceneloc.runtime.errors import InputError
from sceneloc.export.pose_formats import FORMATS, detect_format, match_to_frames, read_pose_file, write_pose_file
from sceneloc.export.poses import write_poses
from sceneloc.geometry import Camera, Rigid3
from sceneloc.localize.estimate import PoseEstimate

CAMERA = Camera(32, 24, 30.0, 30.0, 15.5, 11.5)


@pytest.fixture
def estimates() -> list[PoseEstimate]:
    rng = np.random.default_rng(3)
    return [PoseEstimate("f0", random_pose(rng), 812),
            PoseEstimate("seq 1/frame-000001.color.png", random_pose(rng), 45), PoseEstimate("f2", None, 0),
            PoseEstimate("f3", random_pose(rng), 7)]


def _numbers(pose: Rigid3) -> str:
    return " ".join(repr(float(v)) for v in [*pose.qvec_wxyz, *pose.translation])


@pytest.mark.parametrize("fmt", FORMATS)
def test_each_format_is_written_detected_and_read_back_exactly(tmp_path, estimates, fmt):
    path = tmp_path / "poses.txt"
    write_pose_file(path, estimates, fmt)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["poses.txt"]  # atomic: no temporary file left
    assert detect_format(path) == fmt
    got_fmt, back = read_pose_file(path)
    assert got_fmt == fmt
    assert sorted(e.name for e in back) == sorted(e.name for e in estimates)
    by_name = {e.name: e for e in back}
    for est in estimates:
        got = by_name[est.name]
        if est.cam_from_world is None:
            assert got.cam_from_world is None and got.num_inliers == 0
            continue
        # The file holds the shortest repr of every number: the translation comes back bit for bit, the rotation
        # is the matrix of the very quaternion written (float rounding of the quaternion <-> matrix conversion only).
        np.testing.assert_array_equal(got.cam_from_world.translation, est.cam_from_world.translation)
        np.testing.assert_allclose(got.cam_from_world.rotation, est.cam_from_world.rotation, rtol=0, atol=1e-15)
        assert got.num_inliers == (est.num_inliers if fmt in ("sceneloc", "ace") else 0)
    lines = [line for line in path.read_text().splitlines() if line and not line.startswith("#")]
    first = f"f0 {_numbers(estimates[0].cam_from_world)}"
    if fmt == "sceneloc":
        assert lines[0] == f"{first} 812"
    elif fmt == "ace":
        assert lines[0] == f"{first} nan nan 812" and lines[2] == "f2 " + " ".join(["nan"] * 9) + " 0"
        assert not path.read_text().startswith("#")  # ACE's eval_poses.py reads every line as a pose
    elif fmt == "hloc":
        assert lines[0] == first and lines[2] == "f2 " + " ".join(["nan"] * 7)
        assert len(lines[1].rsplit(None, 7)) == 8 and lines[1].startswith("seq 1/frame-000001.color.png ")
    else:
        text = path.read_text().splitlines()
        assert "# not localised: f2" in text
        at = text.index(f"1 {_numbers(estimates[0].cam_from_world)} 1 f0")
        assert text[at + 1] == ""  # the (empty) POINTS2D line
        assert f"3 {_numbers(estimates[3].cam_from_world)} 1 f3" in text


def test_colmap_images_txt_written_by_pycolmap_is_read_and_ours_loads_in_pycolmap(tmp_path):
    """Both directions against COLMAP itself: a model pycolmap writes, and our images.txt read by pycolmap."""
    pycolmap.logging.minloglevel = 2
    rng = np.random.default_rng(5)
    poses = {"seq 1/a.png": random_pose(rng), "b.png": random_pose(rng)}
    reconstruction = pycolmap.Reconstruction()
    camera = pycolmap.Camera(model="PINHOLE", width=32, height=24, params=[30, 30, 16, 12])
    camera.camera_id = 1
    reconstruction.add_camera_with_trivial_rig(camera)
    for image_id, (name, pose) in enumerate(poses.items(), 3):
        image = pycolmap.Image(name=name, camera_id=1)
        image.image_id = image_id
        reconstruction.add_image_with_trivial_frame(
            image, pycolmap.Rigid3d(np.hstack([pose.rotation, pose.translation[:, None]])))
    (tmp_path / "model").mkdir()
    reconstruction.write_text(str(tmp_path / "model"))
    fmt, back = read_pose_file(tmp_path / "model" / "images.txt")
    assert fmt == "colmap" and [e.name for e in back] == list(poses)
    for est in back:
        np.testing.assert_allclose(est.cam_from_world.matrix(), poses[est.name].matrix(), rtol=0, atol=1e-12)

    ours = tmp_path / "ours"
    ours.mkdir()
    poses = {"seq-1/a.png": poses["seq 1/a.png"], "b.png": poses["b.png"]}  # COLMAP's reader stops names at a space
    write_pose_file(ours / "images.txt", [PoseEstimate(n, p) for n, p in poses.items()], "colmap")
    shutil.copy(tmp_path / "model" / "cameras.txt", ours / "cameras.txt")
    (ours / "points3D.txt").write_text("")
    loaded = pycolmap.Reconstruction(str(ours))
    by_name = {image.name: image for image in loaded.images.values()}
    assert sorted(by_name) == sorted(poses)
    for name, pose in poses.items():
        np.testing.assert_allclose(by_name[name].cam_from_world().matrix(), pose.matrix()[:3], rtol=0, atol=1e-12)


def test_ace_file_holds_cam_from_world(tmp_path):
    """A line written the way ACE's test_ace.py writes it (the inverse of its camera-to-world estimate, quaternion
    from the axis-angle) reads as cam_from_world: the camera centre is the estimate's translation."""
    world_from_cam = Rigid3(Rotation.from_rotvec([0.3, -0.5, 0.2]).as_matrix(), np.array([1.0, -2.0, 0.5]))
    out_pose = world_from_cam.inverse()  # test_ace.py: out_pose = out_pose.inverse()
    rotvec = cv2.Rodrigues(out_pose.rotation)[0].ravel()
    angle = np.linalg.norm(rotvec)
    q_w, q_xyz = math.cos(angle * 0.5), math.sin(angle * 0.5) * rotvec / angle
    t = out_pose.translation
    path = tmp_path / "poses_office_.txt"
    path.write_text(f"frame-000000.color.png {q_w} {q_xyz[0]} {q_xyz[1]} {q_xyz[2]} {t[0]} {t[1]} {t[2]} "
                    f"1.25 0.031 1834\n")
    fmt, (est,) = read_pose_file(path)
    assert fmt == "ace" and est.name == "frame-000000.color.png" and est.num_inliers == 1834
    np.testing.assert_allclose(est.cam_from_world.center, [1.0, -2.0, 0.5], rtol=0, atol=1e-12)
    np.testing.assert_allclose(est.cam_from_world.rotation, world_from_cam.rotation.T, rtol=0, atol=1e-12)
    assert est.details == {"ace_r_err_deg": 1.25, "ace_t_err_m": 0.031}
    write_pose_file(tmp_path / "again.txt", [est], "ace")  # ACE's own errors survive a rewrite
    assert (tmp_path / "again.txt").read_text().split()[-3:] == ["1.25", "0.031", "1834"]


@pytest.mark.parametrize("text, fmt, name", [
    ("a.png 1 0 0 0 0.5 0 0 10\n", "sceneloc", "a.png"),
    ("a.png 1 0 0 0 0.5 0 0 0.5 0.01 10\n", "ace", "a.png"),
    ("a.png 1.0 0.0 0.0 0.0 0.5 0.0 0.0\n", "hloc", "a.png"),
    ("1 1 0 0 0 0.5 0 0 1 a.png\n1.5 2.5 -1 3.0 4.0 17\n", "colmap", "a.png"),
    ("a.png nan nan nan nan nan nan nan nan nan 0\n", "ace", "a.png"),  # failed images only: the most columns
    # An ACE reading (name 'seq', quaternion (1, 2, 1, 0)) does not fit: the name holds numbers.
    ("seq 1 2 1 0 0 0 0.5 0 0 10\n", "sceneloc", "seq 1 2"),
], ids=["sceneloc", "ace", "hloc", "colmap", "failed-only", "numbers-in-the-name"])
def test_format_detected_from_lines_without_header(tmp_path, text, fmt, name):
    path = tmp_path / "p.txt"
    path.write_text(text)
    assert detect_format(path) == fmt
    _, (est,) = read_pose_file(path)
    assert est.name == name
    if "nan" not in text:
        np.testing.assert_array_equal(est.cam_from_world.rotation, np.eye(3))
        np.testing.assert_array_equal(est.cam_from_world.translation, [0.5, 0.0, 0.0])
    else:
        assert est.cam_from_world is None


# --- evaluate through the CLI ------------------------------------------------------------------------------------

@pytest.fixture
def gt(tmp_path) -> SimpleNamespace:
    """An ACE folder f0..f4 with ground truth, and estimates with errors 0.5 cm/0.5 deg, 1.5 cm/3 deg, 20 cm/1 deg,
    3 cm/4 deg and a failed one (f2)."""
    rng = np.random.default_rng(0)
    truth = {f"f{i}": random_pose(rng) for i in range(5)}
    for name, pose in truth.items():
        write_ace_frame(tmp_path / "gt", name, np.zeros((CAMERA.height, CAMERA.width, 3), np.uint8), CAMERA, pose)
    errors = {"f0": (0.005, 0.5), "f1": (0.015, 3.0), "f3": (0.20, 1.0), "f4": (0.03, 4.0)}
    estimates = [PoseEstimate(n, None if n == "f2" else perturbed_pose(truth[n], *errors[n], rng), 100 + i)
                 for i, n in enumerate(truth)]
    return SimpleNamespace(folder=tmp_path / "gt", truth=truth, estimates=estimates, errors=errors)


def _evaluate(poses: Path, gt_folder: Path, prefix: Path, *options) -> dict:
    code, output = run_cli("evaluate", poses, "--gt", gt_folder, "-o", prefix, *options)
    assert code == 0, output
    return json.loads(prefix.with_suffix(".json").read_text()) | {"output": output}


def test_hloc_file_cut_from_our_poses_file_evaluates_identically(tmp_path, gt):
    ours = tmp_path / "poses.txt"
    write_poses(ours, gt.estimates)
    # What the acceptance script does: awk '{print $1, ..., $8}' over the pose lines.
    cut = tmp_path / "hloc.txt"
    cut.write_text("".join(" ".join(line.split()[:8]) + "\n" for line in ours.read_text().splitlines()
                           if not line.startswith("#")))
    a = _evaluate(ours, gt.folder, tmp_path / "out" / "ours")
    b = _evaluate(cut, gt.folder, tmp_path / "out" / "hloc")
    assert "(sceneloc format)" in a["output"] and "(hloc format)" in b["output"]
    for key in ("n_query", "n_failed", "n_missing", "median_t_cm", "median_r_deg", "recall"):
        assert a[key] == b[key], key
    for pa, pb in zip(a["per_image"], b["per_image"]):
        assert (pa["name"], pa["status"], pa["t_err_cm"], pa["r_err_deg"]) == \
               (pb["name"], pb["status"], pb["t_err_cm"], pb["r_err_deg"])
    # ... and the numbers are the planted ones: t errors [0.5, 1.5, inf, 20, 3] cm, r errors [0.5, 3, inf, 1, 4] deg.
    assert a["median_t_cm"] == pytest.approx(3.0) and a["median_r_deg"] == pytest.approx(3.0)
    assert a["recall"] == pytest.approx({"1cm1deg": 0.2, "2cm2deg": 0.2, "5cm5deg": 0.6, "10cm5deg": 0.6,
                                         "25cm2deg": 0.4, "50cm5deg": 0.8})
    assert a["n_failed"] == 1 and a["per_image"][2]["t_err_cm"] is None  # inf is written as null


@pytest.mark.parametrize("fmt", ["ace", "colmap"])
def test_evaluate_other_tools_files_named_by_image_file(tmp_path, gt, fmt):
    """ACE names images by file name, COLMAP by their path in the image folder; our ACE frames are named by stem."""
    names = {f"f{i}": (f"f{i}.color.png" if fmt == "ace" else f"rgb/f{i}.color.png") for i in range(5)}
    path = tmp_path / "theirs.txt"
    write_pose_file(path, [PoseEstimate(names[e.name], e.cam_from_world, e.num_inliers) for e in gt.estimates], fmt)
    result = _evaluate(path, gt.folder, tmp_path / "out" / "r")
    assert f"({fmt} format)" in result["output"]
    per_image = {p["name"]: p for p in result["per_image"]}
    assert sorted(per_image) == list(gt.truth)
    for name, (t_m, r_deg) in gt.errors.items():
        assert per_image[name]["t_err_cm"] == pytest.approx(t_m * 100, abs=1e-9)
        assert per_image[name]["r_err_deg"] == pytest.approx(r_deg, abs=1e-6)
    assert per_image["f2"]["status"] == "failed"


def test_names_matched_by_whole_path_components(gt):
    frames = read_scene(gt.folder).posed_frames
    ok = match_to_frames([PoseEstimate("gt/rgb/f1.color.png", None), PoseEstimate("f0", None)], frames, "p", "g")
    assert [e.name for e in ok] == ["f1", "f0"]
    for names, problem in [(["1.color.png"], "has no ground-truth pose in g"),
                           (["f1.color.png", "f1"], "are both the ground-truth image 'f1'")]:
        with pytest.raises(InputError, match=problem):
            match_to_frames([PoseEstimate(n, None) for n in names], frames, "p", "g")


@pytest.mark.parametrize("text, options, problem", [
    ("hello world\n", [], "line 1: not a line of a known poses format"),
    ("# nothing here\n\n", [], "holds no pose lines"),
    ("f0 1 0 0 0 0 0 0\nf1 1 0 0 zero 0 0 0\n", ["--format", "hloc"], "line 2: pose numbers are not numbers"),
    ("f0 1 0 0 0 0 0 0 10\nf1 1 0 0 0 0 0 0.5\n", [], "line 2: expected 'name qw qx qy qz tx ty tz num_inliers'"),
    ("f0.color.png 1 0 0 0 0 0 0 0.1 0.2 -4\n", ["--format", "ace"], "line 1: negative inlier count -4"),
    ("f0.color.png 1 0 0 0 0 0 0 0.1 0.2 4\nf0.color.png 1 0 0 0 0 0 0 0.1 0.2 4\n", [], "line 2: image "
     "'f0.color.png' is listed twice"),
    ("# IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME\n1 1 0 0 0 0 0 0 1 f0.png\n2 1 0 0 0 0 0 0 1 f1.png\n",
     [], "line 3: expected the POINTS2D line (X Y POINT3D_ID ...) of image 'f0.png'"),
    ("1 0.5 0 0 0 0 0 0 1 f0.png\n\n", ["--format", "colmap"], "line 1: expected 'IMAGE_ID QW QX QY QZ TX TY TZ "
     "CAMERA_ID NAME'"),
    ("zzz 1.0 0.0 0.0 0.0 0.0 0.0 0.0\n", [], "image 'zzz' has no ground-truth pose in"),
], ids=["undetectable", "empty", "hloc-not-a-number", "sceneloc-then-hloc-line", "ace-negative-inliers",
        "ace-twice", "colmap-no-points-line", "colmap-bad-quaternion", "name-without-truth"])
def test_bad_poses_file_is_one_error_line(tmp_path, gt, text, options, problem):
    poses = tmp_path / "poses.txt"
    poses.write_text(text)
    code, output = run_cli("evaluate", poses, "--gt", gt.folder, "-o", tmp_path / "out" / "report", *options)
    assert code == 2 and "Traceback" not in output, output
    errors = [line for line in output.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and str(poses) in errors[0] and problem in errors[0], output
    assert not (tmp_path / "out").exists()


def test_unknown_format_option_is_refused(tmp_path, gt):
    poses = tmp_path / "poses.txt"
    write_poses(poses, gt.estimates)
    code, output = run_cli("evaluate", poses, "--gt", gt.folder, "--format", "kapture")
    assert code == 2 and "unknown --format 'kapture' (use sceneloc, ace, hloc, colmap)" in output


# --- query images: an intrinsics list or EXIF --------------------------------------------------------------------

def _image(path: Path, width: int, height: int, exif: Image.Exif | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(len(str(path))).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, **({"exif": exif} if exif is not None else {}))


INTRINSICS = """# hloc queries_with_intrinsics.txt
sub/b c.jpg OPENCV 32 24 30 31 16.5 12.25 -0.1 0.01 0.001 -0.002
a.png PINHOLE 40 30 35.0 36.0 20.0 15.0
r.png SIMPLE_RADIAL 40 30 33 20 15 0.05
"""


def test_intrinsics_list_gives_the_listed_cameras(tmp_path):
    folder = tmp_path / "queries"
    _image(folder / "a.png", 40, 30)
    _image(folder / "r.png", 40, 30)
    _image(folder / "sub" / "b c.jpg", 32, 24)
    _image(folder / "not-listed.png", 8, 8)
    (tmp_path / "list.txt").write_text(INTRINSICS)
    scene = read_query_images(folder, tmp_path / "list.txt")
    assert [f.name for f in scene.frames] == ["sub/b c.jpg", "a.png", "r.png"]  # the list's names and order
    assert all(f.cam_from_world is None for f in scene.frames)
    distorted, pinhole, radial = scene.frames
    # COLMAP's principal point is 0.5 px off OpenCV's (pixel centres at 0.5): K is shifted, focal lengths kept.
    assert pinhole.camera == Camera(40, 30, 35.0, 36.0, 19.5, 14.5) and pinhole.undistortion is None
    assert distorted.camera == Camera(32, 24, 30.0, 31.0, 16.0, 11.75)
    np.testing.assert_array_equal(distorted.undistortion.coeffs, [-0.1, 0.01, 0.001, -0.002])
    np.testing.assert_array_equal(distorted.undistortion.K, distorted.camera.K)
    assert radial.camera == Camera(40, 30, 33.0, 33.0, 19.5, 14.5)
    np.testing.assert_array_equal(radial.undistortion.coeffs, [0.05, 0.0, 0.0, 0.0])
    assert distorted.load_rgb().shape == (24, 32, 3)
    one = read_query_images(folder / "a.png", tmp_path / "list.txt")  # a single image file with the list
    assert [(f.name, f.camera) for f in one.frames] == [("a.png", pinhole.camera)]
    assert read_intrinsics_list(tmp_path / "list.txt")["a.png"][0] == 3  # line numbers for the errors


@pytest.mark.parametrize("line, problem", [
    ("nope.png PINHOLE 40 30 35 36 20 15", "line 2: image 'nope.png' is not in"),
    ("a.png PINHOLE 41 30 35 36 20 15", "image is 40x30 but line 2 of"),
    ("a.png WEIRD 40 30 35 36 20 15", "line 2: expected 'name MODEL width height params...'"),
    ("a.png PINHOLE 40 30 35 36 20", "line 2: PINHOLE takes 4 parameters (fx, fy, cx, cy), got 3"),
    ("a.png FOV 40 30 35 36 20 15 0.1", "line 2: camera model FOV is not supported"),
    ("a.png PINHOLE 40 30 0 36 20 15", "line 2: invalid intrinsics fx=0 fy=36"),
    ("a.png PINHOLE 40 30 35 36 200 15", "line 2: principal point (199.5, 14.5) lies outside the 40x30 image"),
], ids=["missing-image", "other-size", "no-model", "parameter-count", "unsupported-model", "zero-focal",
        "principal-point-outside"])
def test_bad_intrinsics_list_names_its_line(tmp_path, line, problem):
    _image(tmp_path / "q" / "a.png", 40, 30)
    (tmp_path / "list.txt").write_text("# list\n" + line + "\n")
    with pytest.raises(InputError, match=None) as info:
        read_query_images(tmp_path / "q", tmp_path / "list.txt")
    message = str(info.value)
    assert problem in message and "\n" not in message
    assert ("a.png" if problem.startswith("image is") else "list.txt") in message.split(":")[0]


def _exif_35mm(focal_35mm: int, orientation: int = 1) -> Image.Exif:
    exif = Image.Exif()
    exif[0x8769] = {0xA405: focal_35mm}  # Exif IFD: FocalLengthIn35mmFilm
    if orientation != 1:
        exif[0x0112] = orientation
    return exif


def test_cameras_from_exif(tmp_path):
    folder = tmp_path / "phone"
    _image(folder / "x.jpg", 80, 60, _exif_35mm(28))
    _image(folder / "rotated.jpg", 80, 60, _exif_35mm(28, orientation=6))  # stored 80x60, shown 60x80
    scene = read_scene(folder)  # an image folder is a layout of its own: no --intrinsics needed
    by_name = {f.name: f for f in scene.frames}
    # 35-mm equivalent focal length over the 36x24 mm frame's diagonal, times the image's diagonal.
    focal = 28 / math.hypot(36, 24) * math.hypot(80, 60)
    camera = by_name["x.jpg"].camera
    assert (camera.width, camera.height, camera.cx, camera.cy) == (80, 60, 39.5, 29.5)
    assert camera.fx == camera.fy == pytest.approx(focal, rel=1e-3)
    rotated = by_name["rotated.jpg"]
    assert (rotated.camera.width, rotated.camera.height, rotated.camera.cx, rotated.camera.cy) == (60, 80, 29.5, 39.5)
    assert rotated.load_rgb().shape == (80, 60, 3)  # the orientation is applied on load; the camera matches
    assert read_scene(folder / "x.jpg").frames[0].camera == camera  # one image file


def test_image_without_exif_focal_length_is_refused_by_name(tmp_path):
    _image(tmp_path / "q" / "a.jpg", 80, 60, _exif_35mm(28))
    _image(tmp_path / "q" / "plain.png", 40, 30)
    with pytest.raises(InputError) as info:
        read_scene(tmp_path / "q")
    assert str(info.value).startswith(f"{tmp_path / 'q' / 'plain.png'}: no camera: its EXIF gives no focal "
                                      "length (to localize plain images, pass --intrinsics FILE")


# --- localize: an image folder with an intrinsics list, in each format, then evaluate ------------------------------

def test_localize_image_folder_in_every_format_then_evaluate(tmp_path, gt):
    """End to end through the CLI on a tiny map (accuracy is not the point): the queries are a plain image folder
    with hloc's intrinsics list; every output format is detected by evaluate and matched to the ground truth."""
    rng = np.random.default_rng(1)
    for name in gt.truth:  # textured images, so that the tiny map has something to learn
        image = rng.integers(0, 256, (CAMERA.height, CAMERA.width, 3), dtype=np.uint8)
        write_ace_frame(gt.folder, name, image, CAMERA, gt.truth[name])
    map_file = tmp_path / "gt.map"
    code, output = run_cli("map", gt.folder, "-o", map_file, "--iterations", "10", "--image-height", "24",
                           "--set", "buffer_size=120", "--set", "head.width=16")
    assert code == 0, output
    queries = tmp_path / "queries"
    queries.mkdir()
    for name in gt.truth:
        shutil.copy(gt.folder / "rgb" / f"{name}.color.png", queries / f"{name}.color.png")
    (tmp_path / "list.txt").write_text("".join(f"{n}.color.png PINHOLE 32 24 30 30 16 12\n" for n in gt.truth))
    for fmt in FORMATS:
        out = tmp_path / "out" / f"{fmt}.txt"
        code, output = run_cli("localize", map_file, queries, "--intrinsics", tmp_path / "list.txt", "--format", fmt,
                               "-o", out, "--set", "solver.max_iterations=100")
        assert code == 0, output
        assert detect_format(out) == fmt
        result = _evaluate(out, gt.folder, tmp_path / "out" / f"{fmt}_eval")
        assert result["n_query"] == 5 and result["n_missing"] == 0, result["output"]
    # One image file, its camera from EXIF.
    photo = tmp_path / "IMG_0001.jpg"
    Image.open(queries / "f1.color.png").save(photo, exif=_exif_35mm(35))
    out = tmp_path / "out" / "one.txt"
    code, output = run_cli("localize", map_file, photo, "--format", "hloc", "-o", out,
                           "--set", "solver.max_iterations=100")
    assert code == 0, output
    assert [line.split()[0] for line in out.read_text().splitlines()] == ["IMG_0001.jpg"]
