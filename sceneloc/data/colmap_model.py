"""COLMAP sparse models (text or binary, read with pycolmap) plus their image folder.

Only registered images become frames (an unregistered image has no pose to learn from), sorted by image name.
Supported camera models: PINHOLE, SIMPLE_PINHOLE, SIMPLE_RADIAL, RADIAL, OPENCV. Their distortion terms are
OpenCV's (k1, k2, p1, p2) with the missing ones zero, so distorted cameras get `Frame.undistortion` and
`Frame.camera` is the pinhole camera with the same K, describing the undistorted image.

COLMAP puts the centre of the top-left pixel at (0.5, 0.5); 0.5 is subtracted from cx, cy to get the OpenCV
convention that `Camera` uses. Frame names are the image names with '/' replaced by '-' and the extension removed
(the extension is kept where removing it would make two names equal).

Bad models fail with an InputError naming the model file: pycolmap reads a truncated cameras.bin without complaint
(garbage or zero parameters) and aborts the whole process on some truncated images.bin or points3D.bin, so the two
binary files are measured against their own counts first and points3D (not needed for poses) is not read at all;
COLMAP's C++ check failures are traced to the file by reading the parts again one at a time.
"""

from __future__ import annotations

import re
import struct
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import pycolmap

from sceneloc.data.scene import Frame, Scene, Undistortion, check_camera
from sceneloc.runtime.errors import InputError
from sceneloc.geometry import Camera, Rigid3

MODEL_FILES = ("cameras.bin", "cameras.txt")
_PARTS = ("cameras", "images", "rigs", "frames")
"""The model files read, in the order they depend on each other (points3D is never read: frames need no 3D points)."""
_EMPTY = {".bin": np.uint64(0).tobytes(), ".txt": b""}
"""An empty points3D file (a count of 0 points; no lines)."""
_CPP_LOCATION = re.compile(r"^\[[^\]]*\]\s*(Check failed:\s*)?")
"""The "[file.cc:123] Check failed: " prefix of COLMAP's errors, which says nothing to a user."""
_KNOWN_CHECKS = {"camera.VerifyParams()": "a camera has the wrong number of parameters for its model"}
"""COLMAP check conditions a user meets, in words."""
# COLMAP model name -> index of each of (fx, fy, cx, cy) and of OpenCV's (k1, k2, p1, p2) in `params`
# (None: the term is zero).
_PARAM_LAYOUT = {
    "SIMPLE_PINHOLE": ((0, 0, 1, 2), (None, None, None, None)),
    "PINHOLE": ((0, 1, 2, 3), (None, None, None, None)),
    "SIMPLE_RADIAL": ((0, 0, 1, 2), (3, None, None, None)),
    "RADIAL": ((0, 0, 1, 2), (3, 4, None, None)),
    "OPENCV": ((0, 1, 2, 3), (4, 5, 6, 7)),
}


def find_model(path: Path) -> Path | None:
    """The folder holding cameras.{bin,txt}: `path` itself, `path/sparse/0` or `path/sparse`; None if none."""
    for folder in (path, path / "sparse" / "0", path / "sparse"):
        if any((folder / f).is_file() for f in MODEL_FILES):
            return folder
    return None


def _find_images(model_dir: Path, root: Path) -> Path | None:
    for folder in (model_dir / "images", model_dir.parent / "images", model_dir.parent.parent / "images",
                   root / "images"):
        if folder.is_dir():
            return folder
    return None


def _camera(model_dir: Path, camera: pycolmap.Camera) -> tuple[Camera, Undistortion | None]:
    model = camera.model.name
    if model not in _PARAM_LAYOUT:
        raise InputError(model_dir, f"camera {camera.camera_id} uses the unsupported COLMAP camera model {model} "
                                    f"(supported: {', '.join(_PARAM_LAYOUT)})")
    params = np.asarray(camera.params, dtype=np.float64)
    focal_idx, coeff_idx = _PARAM_LAYOUT[model]
    fx, fy, cx, cy = (params[i] for i in focal_idx)
    pinhole = Camera(int(camera.width), int(camera.height), float(fx), float(fy), float(cx) - 0.5, float(cy) - 0.5)
    coeffs = np.array([0.0 if i is None else params[i] for i in coeff_idx])
    if not np.any(coeffs):
        return pinhole, None
    return pinhole, Undistortion(pinhole.K, coeffs)


def _frame_names(image_names: list[str], model_dir: Path) -> list[str]:
    flat = [n.replace("/", "-").replace("\\", "-") for n in image_names]
    stripped = [n.rsplit(".", 1)[0] if "." in n else n for n in flat]
    counts = Counter(stripped)
    names = [s if counts[s] == 1 else f for s, f in zip(stripped, flat)]
    duplicates = [n for n, c in Counter(names).items() if c > 1]
    if duplicates:
        raise InputError(model_dir, f"two images map to the same frame name '{duplicates[0]}' "
                                    f"(names flatten '/' to '-')")
    return names


def _model_files(model_dir: Path) -> dict[str, Path]:
    """part -> file of the model in `model_dir`, binary when cameras.bin and images.bin are there (as COLMAP
    chooses), else text. Raises InputError when cameras or images are missing."""
    ext = ".bin" if all((model_dir / f"{part}.bin").is_file() for part in _PARTS[:2]) else ".txt"
    files = {part: model_dir / f"{part}{ext}" for part in _PARTS if (model_dir / f"{part}{ext}").is_file()}
    for part in _PARTS[:2]:
        if part not in files:
            raise InputError(model_dir / f"{part}{ext}", "missing: a COLMAP model needs cameras and images files")
    return files


def _read_bytes(f, n: int, path: Path, what: str) -> bytes:
    data = f.read(n)
    if len(data) < n:
        raise InputError(path, f"truncated: the file ends inside {what}")
    return data


def _check_cameras_bin(path: Path) -> None:
    """InputError unless cameras.bin is whole: COLMAP's reader takes a truncated file without complaint and fills
    the missing parameters with whatever follows (or zeros). Layout (COLMAP's WriteCamerasBinary, little-endian):
    uint64 count, then per camera uint32 id, int32 model id, uint64 width, uint64 height, the model's doubles."""
    models = {m.value for m in pycolmap.CameraModelId.__members__.values()} - {pycolmap.CameraModelId.INVALID.value}
    with path.open("rb") as f:
        (count,) = struct.unpack("<Q", _read_bytes(f, 8, path, "the camera count"))
        for i in range(count):
            camera_id, model_id, _, _ = struct.unpack("<IiQQ", _read_bytes(f, 24, path, f"camera {i + 1} of {count}"))
            if model_id not in models:
                raise InputError(path, f"camera {camera_id} has the unknown model id {model_id} (damaged file?)")
            n_params = len(pycolmap.Camera.create_from_model_id(0, pycolmap.CameraModelId(model_id), 1.0, 1, 1).params)
            _read_bytes(f, 8 * n_params, path, f"the parameters of camera {camera_id} ({i + 1} of {count})")
        if f.read(1):
            raise InputError(path, f"damaged: data after its {count} cameras")


def _check_images_bin(path: Path) -> None:
    """InputError unless images.bin is whole: COLMAP aborts the whole process on some truncated files. Layout
    (WriteImagesBinary): uint64 count, then per image uint32 id, 7 doubles (qvec, tvec), uint32 camera id, the name
    ending with a NUL byte, uint64 number of 2D points, 24 bytes per point (x, y, uint64 3D point id)."""
    size = path.stat().st_size
    with path.open("rb") as f:
        (count,) = struct.unpack("<Q", _read_bytes(f, 8, path, "the image count"))
        for i in range(count):
            what = f"image {i + 1} of {count}"
            _read_bytes(f, 64, path, what)
            while True:  # the name: up to its NUL byte
                chunk = _read_bytes(f, 1, path, what) + f.read(255)
                end = chunk.find(b"\0")
                if end >= 0:
                    f.seek(end + 1 - len(chunk), 1)
                    break
            (n_points,) = struct.unpack("<Q", _read_bytes(f, 8, path, what))
            if f.tell() + 24 * n_points > size:
                raise InputError(path, f"truncated: the file ends inside the 2D points of {what}")
            f.seek(24 * n_points, 1)
        if f.read(1):
            raise InputError(path, f"damaged: data after its {count} images")


def _read_parts(files: dict[str, Path], parts: tuple[str, ...]) -> pycolmap.Reconstruction:
    """pycolmap's reading of the model made of `parts` of `files`, through a temporary folder of links in which the
    other cameras/images files and points3D are empty."""
    ext = files["cameras"].suffix
    with tempfile.TemporaryDirectory(prefix="sceneloc-colmap-") as tmp:
        for part in parts:
            (Path(tmp) / files[part].name).symlink_to(files[part].resolve())
        for part in ("cameras", "images", "points3D"):
            if part not in parts:
                (Path(tmp) / f"{part}{ext}").write_bytes(_EMPTY[ext])
        return pycolmap.Reconstruction(tmp)


def _read_reconstruction(files: dict[str, Path]) -> pycolmap.Reconstruction:
    """The model of `files` (as _model_files gives), its 3D points left out: they are not used, can be large, and
    pycolmap aborts the process on a truncated points3D.bin. COLMAP's errors are single C++ check lines without the
    file: on one, the parts are read again one more at a time, so that the InputError names the file at fault."""
    try:
        return _read_parts(files, tuple(files))
    except Exception as error:  # pycolmap raises ValueError, RuntimeError or IndexError, with a C++ location
        problem = _CPP_LOCATION.sub("", str(error).splitlines()[0] if str(error) else "").strip()
    problem = _KNOWN_CHECKS.get(problem, f"COLMAP: {problem}" if problem else "damaged or inconsistent")
    for parts in (("cameras",), ("cameras", "images")):
        try:
            _read_parts(files, parts)
        except Exception:
            raise InputError(files[parts[-1]], f"cannot read this COLMAP model file ({problem})") from None
    names = " and ".join(files[part].name for part in _PARTS[2:] if part in files)
    raise InputError(files["cameras"].parent, f"cannot read the COLMAP model's {names or 'files'} ({problem})")


def _model_camera(path: Path, camera: pycolmap.Camera) -> tuple[Camera, Undistortion | None]:
    """_camera, checked (InputError naming the cameras file `path`): a zero focal length or a principal point outside
    the image is a damaged file or a camera of another image size."""
    pinhole, undistortion = _camera(path, camera)
    check_camera(path, pinhole, f"camera {camera.camera_id}: ")
    return pinhole, undistortion


def read_colmap(model_dir: str | Path, images: str | Path | None = None, root: str | Path | None = None) -> Scene:
    """Read the model in `model_dir`. images: the image folder; by default `images/` next to the model, its
    parent, its grand-parent or `root`. root: the folder the user named (the scene's name and root)."""
    model_dir = Path(model_dir)
    root = Path(root) if root is not None else model_dir
    if images is None:
        image_dir = _find_images(model_dir, root)
        if image_dir is None:
            raise InputError(model_dir, "no images/ folder next to the COLMAP model (looked in the model folder, "
                                        "its parent, its grand-parent and the scene folder): pass the image folder")
    else:
        image_dir = Path(images)
        if not image_dir.is_dir():
            raise InputError(image_dir, "image folder does not exist")
    files = _model_files(model_dir)
    if files["cameras"].suffix == ".bin":
        _check_cameras_bin(files["cameras"])
        _check_images_bin(files["images"])
    reconstruction = _read_reconstruction(files)
    registered = sorted((im for im in reconstruction.images.values() if im.has_pose), key=lambda im: im.name)
    if not registered:
        raise InputError(model_dir, "COLMAP model has no registered images")
    cameras = {cid: _model_camera(files["cameras"], reconstruction.cameras[cid])
               for cid in {im.camera_id for im in registered}}
    frames = []
    for image, name in zip(registered, _frame_names([im.name for im in registered], model_dir)):
        path = image_dir / image.name
        if not path.is_file():
            raise InputError(path, f"image '{image.name}' of the COLMAP model is missing from {image_dir}")
        try:
            cam_from_world = Rigid3.from_matrix(image.cam_from_world().matrix())
        except ValueError as error:
            raise InputError(model_dir, f"image '{image.name}' has an invalid pose: {error}") from None
        camera, undistortion = cameras[image.camera_id]
        frames.append(Frame(name=name, rgb_path=path, camera=camera, cam_from_world=cam_from_world,
                            undistortion=undistortion))
    return Scene(root.name, root, frames)
