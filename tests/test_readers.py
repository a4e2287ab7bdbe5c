"""read_scene and the per-format readers, on real data (../shared/data beside the checkout) and tiny fixtures in
tmp_path."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import cv2
import numpy as np
import pycolmap
import pytest

from sceneloc.data import read_scene
from sceneloc.data.ace_folder import write_ace_frame
from sceneloc.runtime.errors import InputError
from sceneloc.geometry import Camera, Rigid3

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
"""The project's shared real data, beside the checkout (../shared/data), as on developer machines and in CI."""
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"real data not found at {DATA}")
STAIRS = DATA / "sevenscenes_stairs_slice"
SLAMBOOK = DATA / "slambook_rgbd"
FOUNTAIN = DATA / "strecha" / "fountain-P11"
SLAMBOOK_CAMERA = Camera(640, 480, 518.0, 519.0, 325.5, 253.5)

pycolmap.logging.minloglevel = 1


def _png(path: Path, width: int = 32, height: int = 24) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    assert cv2.imwrite(str(path), rng.integers(0, 255, (height, width, 3), dtype=np.uint8))
    return path


def _pose_text(cam_from_world: Rigid3) -> str:
    return "\n".join(" ".join(f"{v:.17g}" for v in row) for row in cam_from_world.inverse().matrix())


# ---------------------------------------------------------------- 7-Scenes


@needs_data
def test_sevenscenes_slice_splits_names_and_poses():
    everything = read_scene(STAIRS)
    train, test = read_scene(STAIRS, split="train"), read_scene(STAIRS, split="test")
    assert len(everything.frames) == 12
    assert [f.name for f in train.frames][:3] == ["seq-02-frame-000000", "seq-02-frame-000001", "seq-02-frame-000002"]
    assert {f.name[:6] for f in train.frames} == {"seq-02", "seq-03"}
    assert {f.name[:6] for f in test.frames} == {"seq-01", "seq-04"}
    frame = test.frames[0]
    assert frame.rgb_path == STAIRS / "seq-01" / "frame-000000.color.jpg"
    assert frame.camera == Camera(640, 480, 525.0, 525.0, 320.0, 240.0)
    assert frame.depth_path is None  # raw Kinect depth is not registered to the colour camera
    camera_to_world = np.loadtxt(STAIRS / "seq-01" / "frame-000000.pose.txt")
    # 7-Scenes rotations are off orthonormal by ~1e-4; the reader re-orthonormalises them.
    np.testing.assert_allclose(frame.cam_from_world.inverse().matrix(), camera_to_world, atol=2e-4)
    np.testing.assert_allclose(frame.cam_from_world.center, [-1.4903377, -0.49737796, -0.054694783], atol=1e-7)
    assert frame.load_rgb().shape == (480, 640, 3)


@needs_data
def test_sevenscenes_flat_folder_and_scaled_intrinsics(tmp_path):
    for f in (STAIRS / "seq-03").iterdir():
        shutil.copy(f, tmp_path / f.name)
    small = cv2.resize(cv2.imread(str(tmp_path / "frame-000001.color.jpg")), (320, 240))
    (tmp_path / "frame-000001.color.jpg").unlink()
    cv2.imwrite(str(tmp_path / "frame-000001.color.png"), small)
    scene = read_scene(tmp_path)
    assert [f.name for f in scene.frames] == ["frame-000000", "frame-000001", "frame-000002"]
    assert scene.frames[0].camera.fx == 525.0
    half = scene.frames[1].camera
    assert (half.width, half.height, half.fx, half.fy) == (320, 240, 262.5, 262.5)
    assert (half.cx, half.cy) == pytest.approx((159.75, 119.75))


@needs_data
def test_sevenscenes_missing_split_file_is_named(tmp_path):
    shutil.copytree(STAIRS / "seq-01", tmp_path / "seq-01")
    with pytest.raises(InputError, match="TrainSplit.txt"):
        read_scene(tmp_path, split="train")
    assert len(read_scene(tmp_path).frames) == 3


@needs_data
def test_sevenscenes_image_without_pose(tmp_path):
    shutil.copytree(STAIRS / "seq-01", tmp_path / "seq-01")
    (tmp_path / "seq-01" / "frame-000002.pose.txt").unlink()
    with pytest.raises(InputError, match=r"frame-000002\.color\.jpg"):
        read_scene(tmp_path)


# ---------------------------------------------------------------- ACE folders (written from slambook RGB-D)


def _slambook_frames():
    """[(name, rgb (H, W, 3) uint8, cam_from_world, depth (H, W) metres)] of the 5 real Kinect frames."""
    frames = []
    for i, line in enumerate((SLAMBOOK / "pose.txt").read_text().split("\n")[:5], start=1):
        tx, ty, tz, qx, qy, qz, qw = map(float, line.split())
        world_from_cam = Rigid3.from_qvec_tvec(np.array([qw, qx, qy, qz]), np.array([tx, ty, tz]))
        rgb = cv2.cvtColor(cv2.imread(str(SLAMBOOK / "color" / f"{i}.png")), cv2.COLOR_BGR2RGB)
        depth = cv2.imread(str(SLAMBOOK / "depth" / f"{i}.pgm"), cv2.IMREAD_ANYDEPTH).astype(np.float64) / 1000
        frames.append((f"frame-{i}", rgb, world_from_cam.inverse(), depth))
    return frames


@pytest.fixture(scope="module")
def slambook_ace(tmp_path_factory) -> tuple[Path, list]:
    root = tmp_path_factory.mktemp("slambook_ace")
    frames = _slambook_frames()
    for k, (name, rgb, pose, depth) in enumerate(frames):
        write_ace_frame(root / ("train" if k < 3 else "test"), name, rgb, SLAMBOOK_CAMERA, pose, depth)
    return root, frames


@needs_data
def test_ace_round_trip_is_exact(slambook_ace):
    root, frames = slambook_ace
    scene = read_scene(root / "train")
    assert [f.name for f in scene.frames] == ["frame-1", "frame-2", "frame-3"]
    for frame, (name, rgb, pose, depth) in zip(scene.frames, frames):
        assert frame.name == name and frame.camera == SLAMBOOK_CAMERA
        np.testing.assert_allclose(frame.cam_from_world.matrix(), pose.matrix(), atol=1e-12)
        np.testing.assert_array_equal(frame.load_rgb(), rgb)
        np.testing.assert_allclose(frame.load_depth(), depth, atol=1e-6)
    assert not list(root.rglob("*.tmp"))


@needs_data
def test_ace_root_split_selection(slambook_ace):
    root, _ = slambook_ace
    assert [f.name for f in read_scene(root, split="test").frames] == ["frame-4", "frame-5"]
    assert read_scene(root, split="train").name == root.name
    assert len(read_scene(root).frames) == 5


@needs_data
def test_ace_depth_reprojects_onto_the_next_frame(slambook_ace):
    """Back-project frame 4's depth with the read pose into frame 5: the predicted depth matches frame 5's own
    measured depth where both are valid (median 2.6 cm; inverted poses give 53 cm)."""
    root, _ = slambook_ace
    first, second = read_scene(root, split="test").frames
    depth1, depth2 = first.load_depth(), second.load_depth()
    v, u = np.nonzero(depth1 > 0)
    pick = slice(None, None, 37)
    points = first.camera.unproject(np.stack([u[pick], v[pick]], 1).astype(np.float64), depth1[v[pick], u[pick]])
    in_second = (second.cam_from_world * first.cam_from_world.inverse()).apply(points)
    pixels = np.rint(second.camera.project(in_second)).astype(int)
    inside = (pixels[:, 0] >= 0) & (pixels[:, 0] < 640) & (pixels[:, 1] >= 0) & (pixels[:, 1] < 480)
    measured = depth2[pixels[inside, 1], pixels[inside, 0]]
    valid = measured > 0
    assert valid.sum() > 2000
    error = np.abs(measured[valid] - in_second[inside][valid, 2])
    assert np.median(error) < 0.06


def test_ace_single_focal_calibration_uses_image_centre(tmp_path):
    _png(tmp_path / "rgb" / "a.color.png", 64, 48)
    (tmp_path / "calibration").mkdir()
    (tmp_path / "calibration" / "a.calibration.txt").write_text("50.5\n")
    (frame,) = read_scene(tmp_path).frames
    assert frame.camera == Camera(64, 48, 50.5, 50.5, 32.0, 24.0)
    assert frame.cam_from_world is None


def _ace_fixture(root: Path, stems=("a", "b")) -> Path:
    pose = Rigid3.from_qvec_tvec(np.array([0.9, 0.1, -0.3, 0.2]) / np.linalg.norm([0.9, 0.1, -0.3, 0.2]),
                                 np.array([0.5, -1.0, 2.0]))
    for stem in stems:
        _png(root / "rgb" / f"{stem}.color.png")
        (root / "poses").mkdir(parents=True, exist_ok=True)
        (root / "poses" / f"{stem}.pose.txt").write_text(_pose_text(pose))
        (root / "calibration").mkdir(parents=True, exist_ok=True)
        (root / "calibration" / f"{stem}.calibration.txt").write_text("30 0 16\n0 31 12\n0 0 1\n")
    return root


def test_ace_plain_file_names_are_matched_by_stem(tmp_path):
    root = _ace_fixture(tmp_path)
    (root / "poses" / "b.pose.txt").rename(root / "poses" / "b.txt")
    (root / "rgb" / "b.color.png").rename(root / "rgb" / "b.png")
    scene = read_scene(root)
    assert [f.name for f in scene.frames] == ["a", "b"]
    assert scene.frames[1].camera == Camera(32, 24, 30.0, 31.0, 16.0, 12.0)


# ---------------------------------------------------------------- COLMAP (Strecha fountain-P11 ground truth)


def _strecha_cameras() -> list[tuple[str, np.ndarray, Rigid3, int, int]]:
    """[(image name, K (3, 3), cam_from_world, width, height)] from gt_dense_cameras/*.camera."""
    out = []
    for path in sorted((FOUNTAIN / "gt_dense_cameras").glob("*.camera")):
        rows = np.array(path.read_text().split(), dtype=np.float64)
        k, rotation_c2w, centre, (w, h) = rows[:9].reshape(3, 3), rows[12:21].reshape(3, 3), rows[21:24], rows[24:]
        # The file's 6-digit rotations are orthonormal to ~1e-6 only: compare with their nearest rotation.
        camera_to_world = Rigid3.from_matrix(np.c_[rotation_c2w, centre])
        out.append((path.name.removesuffix(".camera"), k, camera_to_world.inverse(), int(w), int(h)))
    return out


def _write_colmap_text(model: Path, cameras: list[str], images: list[tuple[int, Rigid3, str]]) -> Path:
    """cameras: 'MODEL W H params' lines (ids 1..); images: (camera id, cam_from_world, name)."""
    model.mkdir(parents=True, exist_ok=True)
    (model / "cameras.txt").write_text("".join(f"{i} {c}\n" for i, c in enumerate(cameras, start=1)))
    lines = []
    for i, (cam_id, pose, name) in enumerate(images, start=1):
        q, t = pose.qvec_wxyz, pose.translation
        lines.append(f"{i} {' '.join(f'{v:.17g}' for v in (*q, *t))} {cam_id} {name}\n\n")
    (model / "images.txt").write_text("".join(lines))
    (model / "points3D.txt").write_text("")
    return model


@pytest.fixture(scope="module")
def fountain_model(tmp_path_factory) -> tuple[Path, list]:
    root = tmp_path_factory.mktemp("fountain")
    gt = _strecha_cameras()
    # Strecha's K uses OpenCV's pixel centres; COLMAP's are shifted by 0.5.
    cameras = [f"PINHOLE {w} {h} {k[0, 0]:.17g} {k[1, 1]:.17g} {k[0, 2] + 0.5:.17g} {k[1, 2] + 0.5:.17g}"
               for _, k, _, w, h in gt]
    _write_colmap_text(root / "sparse" / "0", cameras, [(i, p, n) for i, (n, _, p, _, _) in enumerate(gt, 1)])
    (root / "images").symlink_to(FOUNTAIN / "images")
    return root, gt


@needs_data
def test_colmap_text_model_gives_ground_truth_poses(fountain_model):
    root, gt = fountain_model
    scene = read_scene(root)
    assert [f.name for f in scene.frames] == [name.removesuffix(".jpg") for name, *_ in gt]
    for frame, (name, k, pose, w, h) in zip(scene.frames, gt):
        assert frame.rgb_path == root / "images" / name
        np.testing.assert_allclose(frame.camera.K, k, atol=1e-9)
        assert (frame.camera.width, frame.camera.height) == (w, h)
        assert frame.undistortion is None
        np.testing.assert_allclose(frame.cam_from_world.matrix(), pose.matrix(), atol=1e-9)


@needs_data
def test_colmap_binary_model_with_separate_image_folder(fountain_model, tmp_path):
    root, gt = fountain_model
    pycolmap.Reconstruction(str(root / "sparse" / "0")).write_binary(str(tmp_path))
    assert (tmp_path / "cameras.bin").is_file()
    scene = read_scene(tmp_path, images=FOUNTAIN / "images")
    assert len(scene.frames) == len(gt)
    np.testing.assert_allclose(scene.frames[3].cam_from_world.matrix(), gt[3][2].matrix(), atol=1e-9)
    assert scene.frames[3].rgb_path == FOUNTAIN / "images" / gt[3][0]


@needs_data
def test_colmap_poses_satisfy_epipolar_geometry_of_sift_matches(fountain_model):
    """SIFT matches between two real fountain photos (quarter resolution) lie on the epipolar lines given by the
    read poses and intrinsics."""
    first, second = read_scene(fountain_model[0]).frames[4:6]
    images = [cv2.imread(str(f.rgb_path), cv2.IMREAD_REDUCED_GRAYSCALE_4) for f in (first, second)]
    h, w = images[0].shape
    sift = cv2.SIFT_create(nfeatures=2000)
    (kp1, d1), (kp2, d2) = (sift.detectAndCompute(im, None) for im in images)
    pairs = [m for m, n in cv2.BFMatcher().knnMatch(d1, d2, k=2) if m.distance < 0.7 * n.distance]
    x1 = np.array([kp1[m.queryIdx].pt for m in pairs])
    x2 = np.array([kp2[m.trainIdx].pt for m in pairs])
    k1, k2 = first.camera.scaled(w, h).K, second.camera.scaled(w, h).K
    relative = second.cam_from_world * first.cam_from_world.inverse()
    tx = np.cross(np.eye(3), relative.translation)  # [t]_x, rows: e_i x t = -(t x e_i)
    fundamental = np.linalg.inv(k2).T @ (-tx) @ relative.rotation @ np.linalg.inv(k1)
    lines = np.c_[x1, np.ones(len(x1))] @ fundamental.T
    distance = np.abs(np.sum(lines * np.c_[x2, np.ones(len(x2))], 1)) / np.hypot(lines[:, 0], lines[:, 1])
    assert len(pairs) > 300
    assert np.median(distance) < 0.5  # quarter resolution: 2 px at full resolution
    assert np.mean(distance < 1.0) > 0.8


@pytest.mark.parametrize("model, params", [
    ("SIMPLE_PINHOLE", [300.0, 330.0, 250.0]),
    ("PINHOLE", [300.0, 310.0, 330.0, 250.0]),
    ("SIMPLE_RADIAL", [300.0, 330.0, 250.0, -0.12]),
    ("RADIAL", [300.0, 330.0, 250.0, -0.12, 0.03]),
    ("OPENCV", [300.0, 310.0, 330.0, 250.0, -0.2, 0.05, 0.001, -0.002]),
])
def test_colmap_undistortion_matches_colmap_projection(tmp_path, model, params):
    """Project 3D points with pycolmap's own camera model (distorted, COLMAP pixel centres): OpenCV's model with the
    frame's Undistortion projects them to the same pixels, and cv2.undistortPoints takes them to where the frame's
    pinhole camera projects them."""
    _write_colmap_text(tmp_path / "model", [f"{model} 640 480 {' '.join(map(str, params))}"],
                       [(1, Rigid3.identity(), "cam/a.png")])
    _png(tmp_path / "model" / "images" / "cam" / "a.png", 640, 480)
    (frame,) = read_scene(tmp_path / "model").frames
    assert frame.name == "cam-a"
    colmap_camera = pycolmap.Camera.create_from_model_name(1, model, 1.0, 640, 480)
    colmap_camera.params = params
    rng = np.random.default_rng(1)
    points = np.c_[rng.uniform(-0.8, 0.8, (50, 2)), np.ones(50)] * rng.uniform(1, 5, (50, 1))
    distorted = colmap_camera.img_from_cam(points) - 0.5
    ideal = frame.camera.project(points)
    if frame.undistortion is None:
        assert model in ("SIMPLE_PINHOLE", "PINHOLE")
        np.testing.assert_allclose(distorted, ideal, atol=1e-9)
        return
    opencv, _ = cv2.projectPoints(points, np.zeros(3), np.zeros(3), frame.undistortion.K, frame.undistortion.coeffs)
    np.testing.assert_allclose(opencv.reshape(-1, 2), distorted, atol=1e-9)
    undistorted = cv2.undistortPoints(distorted.reshape(-1, 1, 2), frame.undistortion.K, frame.undistortion.coeffs,
                                      P=frame.camera.K,
                                      criteria=(cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 100, 1e-14))
    np.testing.assert_allclose(undistorted.reshape(-1, 2), ideal, atol=1e-6)
    assert np.abs(distorted - ideal).max() > 5  # the distortion is real, so this test can fail


def test_colmap_unsupported_camera_model(tmp_path):
    _write_colmap_text(tmp_path / "sparse", ["OPENCV_FISHEYE 64 48 50 50 32 24 0.1 0.01 0 0"],
                       [(1, Rigid3.identity(), "a.png")])
    _png(tmp_path / "images" / "a.png", 64, 48)
    with pytest.raises(InputError, match="sparse.*OPENCV_FISHEYE"):
        read_scene(tmp_path)


def test_colmap_missing_image_is_named(tmp_path):
    _write_colmap_text(tmp_path / "sparse" / "0", ["PINHOLE 64 48 50 50 32 24"], [(1, Rigid3.identity(), "gone.png")])
    (tmp_path / "images").mkdir()
    with pytest.raises(InputError, match="gone.png"):
        read_scene(tmp_path)


# ---------------------------------------------------------------- NeRF transforms.json


def _world_looking_along_x() -> list[list[float]]:
    """OpenGL camera-to-world at the origin looking along world +x with world +z up: camera x (right) = world -y,
    camera y (up) = world +z, camera z (backward) = world -x."""
    return [[0, 0, -1, 0], [-1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 1]]


def _nerf_fixture(root: Path, **top) -> Path:
    _png(root / "images" / "look_x.png", 64, 48)
    data = {"fl_x": 100.0, "fl_y": 110.0, "cx": 32.0, "cy": 24.0, "w": 64, "h": 48, **top,
            "frames": [{"file_path": "./images/look_x", "transform_matrix": _world_looking_along_x()}]}
    (root / "transforms.json").write_text(json.dumps(data))
    return root


def test_nerf_known_point_projects_to_known_pixel(tmp_path):
    (frame,) = read_scene(_nerf_fixture(tmp_path)).frames
    assert frame.name == "images-look_x"
    assert frame.rgb_path == tmp_path / "images" / "look_x.png"
    # 5 m ahead, 1 m to the camera's left (world +y), 2 m up: left of and above the principal point, which is
    # (31.5, 23.5) in OpenCV pixel centres for the file's (32, 24).
    point_cam = frame.cam_from_world.apply(np.array([[5.0, 1.0, 2.0]]))
    np.testing.assert_allclose(point_cam, [[-1.0, -2.0, 5.0]], atol=1e-12)
    np.testing.assert_allclose(frame.camera.project(point_cam), [[31.5 - 20.0, 23.5 - 44.0]], atol=1e-9)
    assert frame.undistortion is None
    assert frame.load_rgb().shape == (48, 64, 3)


def test_nerf_camera_angle_distortion_and_depth(tmp_path):
    depth = np.full((48, 64), 2500, np.uint16)
    cv2.imwrite(str(tmp_path / "d.png"), depth)
    _nerf_fixture(tmp_path)
    data = json.loads((tmp_path / "transforms.json").read_text())
    for key in ("fl_x", "fl_y", "cx", "cy", "w", "h"):
        del data[key]
    data["camera_angle_x"] = 2 * math.atan(0.5)  # fx = 0.5 * 64 / 0.5 = 64
    data["frames"][0].update(k1=-0.1, p2=0.002, depth_file_path="d.png")
    (tmp_path / "transforms.json").write_text(json.dumps(data))
    (frame,) = read_scene(tmp_path / "transforms.json").frames
    assert (frame.camera.width, frame.camera.height, frame.camera.cx, frame.camera.cy) == (64, 48, 31.5, 23.5)
    assert (frame.camera.fx, frame.camera.fy) == pytest.approx((64.0, 64.0), abs=1e-12)
    np.testing.assert_array_equal(frame.undistortion.coeffs, [-0.1, 0.0, 0.0, 0.002, 0.0])
    np.testing.assert_allclose(frame.load_depth(), 2.5, atol=1e-6)


def test_nerf_blender_split_files(tmp_path):
    _nerf_fixture(tmp_path)
    data = json.loads((tmp_path / "transforms.json").read_text())
    (tmp_path / "transforms.json").rename(tmp_path / "transforms_train.json")
    _png(tmp_path / "test" / "r_0.png", 64, 48)
    data["frames"][0]["file_path"] = "./test/r_0"
    (tmp_path / "transforms_test.json").write_text(json.dumps(data))
    assert [f.name for f in read_scene(tmp_path, split="test").frames] == ["test-r_0"]
    assert [f.name for f in read_scene(tmp_path).frames] == ["images-look_x", "test-r_0"]


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.pop("frames"), "'frames'"),
    (lambda d: d["frames"][0].pop("transform_matrix"), "transform_matrix"),
    (lambda d: d["frames"][0].pop("file_path"), "file_path"),
    (lambda d: d.pop("fl_x"), "focal length"),
])
def test_nerf_missing_fields(tmp_path, edit, message):
    _nerf_fixture(tmp_path)
    data = json.loads((tmp_path / "transforms.json").read_text())
    edit(data)
    (tmp_path / "transforms.json").write_text(json.dumps(data))
    with pytest.raises(InputError, match=f"transforms.json.*{message}"):
        read_scene(tmp_path)


# ---------------------------------------------------------------- bad input


def test_missing_and_empty_folders(tmp_path):
    with pytest.raises(InputError, match="nowhere.*does not exist"):
        read_scene(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="empty.*empty"):
        read_scene(tmp_path / "empty")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("hello")
    with pytest.raises(InputError, match="other.*looked for.*ACE.*7-Scenes.*COLMAP.*transforms.json"):
        read_scene(tmp_path / "other")


def test_image_without_pose_and_pose_without_image(tmp_path):
    root = _ace_fixture(tmp_path / "a")
    (root / "poses" / "b.pose.txt").unlink()
    with pytest.raises(InputError, match=r"b\.color\.png.*no pose"):
        read_scene(root)
    root = _ace_fixture(tmp_path / "b")
    (root / "rgb" / "a.color.png").unlink()
    with pytest.raises(InputError, match=r"a\.(pose|calibration)\.txt.*no matching image"):
        read_scene(root)


@pytest.mark.parametrize("text, message", [
    ("1 0 0 0\n0 2 0 0\n0 0 1 0\n0 0 0 1", "not orthonormal"),
    ("nan 0 0 0\n0 1 0 0\n0 0 1 0\n0 0 0 1", "NaN"),
    ("1 0 0\n0 1 0\n0 0 1", "16 numbers"),
    ("1 0 0 0\n0 1 0 0\n0 0 1 0\n0 0 0 1\n# c2w", "only numbers"),
])
def test_bad_pose_files(tmp_path, text, message):
    root = _ace_fixture(tmp_path)
    (root / "poses" / "b.pose.txt").write_text(text)
    with pytest.raises(InputError, match=rf"b\.pose\.txt.*{message}"):
        read_scene(root)


def test_unreadable_image(tmp_path):
    _nerf_fixture(tmp_path)
    (tmp_path / "images" / "look_x.png").write_bytes(b"not a png")
    (frame,) = read_scene(tmp_path).frames  # size comes from the JSON: the image is only opened when loaded
    with pytest.raises(InputError, match="look_x.png.*cannot read"):
        frame.load_rgb()
    root = _ace_fixture(tmp_path / "ace")
    (root / "rgb" / "a.color.png").write_bytes(b"")
    with pytest.raises(InputError, match=r"a\.color\.png.*cannot read"):
        read_scene(root)


def test_image_size_differs_from_intrinsics(tmp_path):
    _nerf_fixture(tmp_path, w=640, h=480)
    (frame,) = read_scene(tmp_path).frames
    with pytest.raises(InputError, match="look_x.png.*64x48.*640x480"):
        frame.load_rgb()


def test_images_option_only_for_colmap(tmp_path):
    with pytest.raises(InputError, match="only applies to COLMAP"):
        read_scene(_ace_fixture(tmp_path), images=tmp_path)
    with pytest.raises(InputError, match="unknown split"):
        read_scene(tmp_path, split="val")
