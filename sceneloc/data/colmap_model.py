"""COLMAP sparse models (text or binary, read with pycolmap) plus their image folder.

Only registered images become frames (an unregistered image has no pose to learn from), sorted by image name.
Supported camera models: PINHOLE, SIMPLE_PINHOLE, SIMPLE_RADIAL, RADIAL, OPENCV. Their distortion terms are
OpenCV's (k1, k2, p1, p2) with the missing ones zero, so distorted cameras get `Frame.undistortion` and
`Frame.camera` is the pinhole camera with the same K, describing the undistorted image.

COLMAP puts the centre of the top-left pixel at (0.5, 0.5); 0.5 is subtracted from cx, cy to get the OpenCV
convention that `Camera` uses. Frame names are the image names with '/' replaced by '-' and the extension removed
(the extension is kept where removing it would make two names equal).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pycolmap

from sceneloc.data.scene import Frame, Scene, Undistortion
from sceneloc.errors import InputError
from sceneloc.geometry import Camera, Rigid3

MODEL_FILES = ("cameras.bin", "cameras.txt")
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
    try:
        reconstruction = pycolmap.Reconstruction(str(model_dir))
    except Exception as error:  # pycolmap raises ValueError/RuntimeError with a C++ location; keep one line
        raise InputError(model_dir, f"cannot read COLMAP model: {str(error).splitlines()[0]}") from None
    registered = sorted((im for im in reconstruction.images.values() if im.has_pose), key=lambda im: im.name)
    if not registered:
        raise InputError(model_dir, "COLMAP model has no registered images")
    cameras = {cid: _camera(model_dir, reconstruction.cameras[cid]) for cid in {im.camera_id for im in registered}}
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
