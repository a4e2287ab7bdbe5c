"""NeRF / instant-ngp / nerfstudio `transforms.json` scenes.

Read fields: `frames[*].file_path` (relative to the JSON's folder, with or without an image extension),
`frames[*].transform_matrix` (4x4 camera-to-world in OpenGL/Blender axes: x right, y up, z backward; converted to
OpenCV axes by flipping the camera's y and z), intrinsics at the top level or per frame (a frame's value wins):
`w`, `h` (default: the image header), `fl_x` or `camera_angle_x`, `fl_y` or `camera_angle_y` (default fx),
`cx`, `cy` (default w/2, h/2), OpenCV distortion `k1 k2 p1 p2 [k3]` -> `Frame.undistortion`, and optional
`depth_file_path` with top-level `depth_unit_scale_factor` (metres per stored unit, default 0.001 as nerfstudio).

Like COLMAP (whose models these files are usually made from), cx, cy put the centre of the top-left pixel at
(0.5, 0.5): 0.5 is subtracted to get the OpenCV convention. Scene-normalising keys (`scale`, `offset`,
`aabb_scale`) are not applied: the world frame is the file's. Frame names are file_path without a leading "./" and
extension, '/' replaced by '-'.

A folder without `transforms.json` but with Blender-style `transforms_{train,val,test}.json` is read per split
(split=None reads all of them).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from sceneloc.data.ace_folder import IMAGE_EXTENSIONS
from sceneloc.data.scene import Frame, Scene, Undistortion, check_camera, image_size
from sceneloc.runtime.errors import InputError
from sceneloc.geometry import Camera, Rigid3

TRANSFORMS = "transforms.json"
SPLIT_FILES = ("train", "val", "test")
# OpenGL camera axes (y up, z backward) -> OpenCV camera axes (y down, z forward).
_GL_TO_CV = np.diag([1.0, -1.0, -1.0])
_DISTORTION_KEYS = ("k1", "k2", "p1", "p2", "k3")
_PINHOLE_MODELS = ("OPENCV", "PINHOLE", "SIMPLE_PINHOLE")


def transforms_files(folder: Path, split: str | None) -> list[Path]:
    """The JSON files to read for `split` in `folder` (empty when it is not a NeRF folder)."""
    if (folder / TRANSFORMS).is_file():
        return [folder / TRANSFORMS]
    splits = SPLIT_FILES if split is None else (split,)
    return [folder / f"transforms_{s}.json" for s in splits if (folder / f"transforms_{s}.json").is_file()]


def _load_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise InputError(path, f"not valid JSON: {error}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(path, f"cannot read file: {error}") from None
    if not isinstance(data, dict):
        raise InputError(path, "expected a JSON object with a 'frames' list")
    frames = data.get("frames")
    if not isinstance(frames, list) or not frames:
        raise InputError(path, "missing or empty 'frames' list")
    return data


def _resolve(base: Path, relative: str, json_path: Path, what: str) -> Path:
    path = base / relative
    if path.is_file():
        return path
    for ext in IMAGE_EXTENSIONS:
        candidate = path.with_name(path.name + ext)
        if candidate.is_file():
            return candidate
    raise InputError(path, f"{what} listed in {json_path.name} does not exist "
                           f"(also tried {', '.join(IMAGE_EXTENSIONS)})")


def _number(values: dict, key: str, json_path: Path, where: str) -> float:
    try:
        value = float(values[key])
    except (TypeError, ValueError):
        raise InputError(json_path, f"{where}: '{key}' is not a number: {values[key]!r}") from None
    if not math.isfinite(value):
        raise InputError(json_path, f"{where}: '{key}' is {value}")
    return value


def _focal_from_angle(values: dict, key: str, size: int, json_path: Path, where: str) -> float:
    """The focal length (pixels) of a field of view `key` (radians) across `size` pixels; the angle must lie strictly
    between 0 and pi (0 would be an infinite focal length, pi or more none at all)."""
    angle = _number(values, key, json_path, where)
    if not 0 < angle < math.pi:
        raise InputError(json_path, f"{where}: '{key}' is {angle:g}: a field of view in radians must lie strictly "
                                    f"between 0 and pi")
    return 0.5 * size / math.tan(0.5 * angle)


def _camera(values: dict, rgb_path: Path, json_path: Path, where: str) -> tuple[Camera, Undistortion | None]:
    model = values.get("camera_model")
    if values.get("is_fisheye") or (model is not None and model not in _PINHOLE_MODELS):
        raise InputError(json_path, f"{where}: unsupported camera model {model or 'fisheye'} "
                                    f"(supported: {', '.join(_PINHOLE_MODELS)})")
    if "w" in values and "h" in values:
        width, height = int(_number(values, "w", json_path, where)), int(_number(values, "h", json_path, where))
    else:
        width, height = image_size(rgb_path)
    if "fl_x" in values:
        fx = _number(values, "fl_x", json_path, where)
    elif "camera_angle_x" in values:
        fx = _focal_from_angle(values, "camera_angle_x", width, json_path, where)
    else:
        raise InputError(json_path, f"{where}: missing focal length, needs 'fl_x' or 'camera_angle_x'")
    if "fl_y" in values:
        fy = _number(values, "fl_y", json_path, where)
    elif "camera_angle_y" in values:
        fy = _focal_from_angle(values, "camera_angle_y", height, json_path, where)
    else:
        fy = fx
    cx = _number(values, "cx", json_path, where) if "cx" in values else width / 2.0
    cy = _number(values, "cy", json_path, where) if "cy" in values else height / 2.0
    if fx <= 0 or fy <= 0:
        raise InputError(json_path, f"{where}: focal length must be positive, got fl_x={fx}, fl_y={fy}")
    camera = check_camera(json_path, Camera(width, height, fx, fy, cx - 0.5, cy - 0.5), f"{where}: ")
    coeffs = np.array([_number(values, k, json_path, where) if k in values else 0.0 for k in _DISTORTION_KEYS])
    if "k4" in values and _number(values, "k4", json_path, where) != 0:
        raise InputError(json_path, f"{where}: distortion term k4 is not supported (OpenCV k1 k2 p1 p2 k3 only)")
    if not np.any(coeffs):
        return camera, None
    return camera, Undistortion(camera.K, coeffs)


def _pose(matrix, json_path: Path, where: str) -> Rigid3:
    try:
        camera_to_world_gl = Rigid3.from_matrix(np.asarray(matrix, dtype=np.float64))
    except (TypeError, ValueError) as error:
        raise InputError(json_path, f"{where}: invalid 'transform_matrix': {error}") from None
    return Rigid3(camera_to_world_gl.rotation @ _GL_TO_CV, camera_to_world_gl.translation).inverse()


def _frame_name(file_path: str) -> str:
    name = file_path.replace("\\", "/")
    while name.startswith("./"):
        name = name[2:]
    stem, _, ext = name.rpartition(".")
    if stem and "/" not in ext and ("." + ext.lower()) in IMAGE_EXTENSIONS:
        name = stem
    return name.strip("/").replace("/", "-")


def _read_file(json_path: Path) -> list[Frame]:
    data = _load_json(json_path)
    top = {k: v for k, v in data.items() if k != "frames"}
    depth_scale = _number(top, "depth_unit_scale_factor", json_path, "top level") \
        if "depth_unit_scale_factor" in top else 0.001
    frames = []
    for i, entry in enumerate(data["frames"]):
        if not isinstance(entry, dict):
            raise InputError(json_path, f"frames[{i}] is not an object")
        for key in ("file_path", "transform_matrix"):
            if key not in entry:
                raise InputError(json_path, f"frames[{i}] has no '{key}'")
        where = f"frames[{i}] ({entry['file_path']})"
        rgb_path = _resolve(json_path.parent, str(entry["file_path"]), json_path, "image")
        camera, undistortion = _camera({**top, **entry}, rgb_path, json_path, where)
        depth_path = None
        if entry.get("depth_file_path"):
            depth_path = _resolve(json_path.parent, str(entry["depth_file_path"]), json_path, "depth image")
        frames.append(Frame(name=_frame_name(str(entry["file_path"])), rgb_path=rgb_path, camera=camera,
                            cam_from_world=_pose(entry["transform_matrix"], json_path, where),
                            depth_path=depth_path, depth_scale=depth_scale, undistortion=undistortion))
    return frames


def read_nerf(path: str | Path, split: str | None = None) -> Scene:
    """Read a transforms.json file, or a folder holding transforms.json / transforms_<split>.json."""
    path = Path(path)
    folder = path.parent if path.is_file() else path
    files = [path] if path.is_file() else transforms_files(path, split)
    if not files:
        raise InputError(path, f"no {TRANSFORMS} (or transforms_<split>.json) found")
    frames = [f for json_path in files for f in _read_file(json_path)]
    seen: dict[str, Path] = {}
    for frame in frames:
        if frame.name in seen:
            raise InputError(frame.rgb_path, f"frame name '{frame.name}' is used twice (also {seen[frame.name]})")
        seen[frame.name] = frame.rgb_path
    return Scene(folder.name, folder, frames)
