"""Query images without a posed layout: an image folder or one image file, with intrinsics from a list in hloc's
queries_with_intrinsics.txt format or from each image's EXIF. The result is a Scene of unposed frames, so
`localize` runs on it as on any other layout.

Intrinsics list (hloc's format): one line per image, `name MODEL width height params...`, '#' comments. MODEL is a
COLMAP camera model with COLMAP's parameter order; `name` is the image's path inside the image folder (for a single
image file, its file name or a path ending with it) and may contain spaces (the MODEL token ends it). Only the
listed images are queries, in the list's order. Cameras are converted as the COLMAP model reader does
(sceneloc/data/colmap_model.py): 0.5 px is subtracted from the principal point (COLMAP puts the centre of the
top-left pixel at (0.5, 0.5)) and distortion becomes Frame.undistortion, so `load_rgb` returns the undistorted
image of the pinhole `Frame.camera`; the supported models are that reader's.

EXIF (no list): pycolmap.infer_camera_from_image, i.e. COLMAP's importer: SIMPLE_RADIAL with k = 0, the focal length
from the EXIF focal length (35 mm equivalent, on the image diagonal; or millimetres with the camera's sensor width
from COLMAP's database), the principal point at the image centre. An image whose EXIF gives no focal length is
refused, naming the image (COLMAP's fallback, 1.2 x the larger side, is a guess).

EXIF orientation: Frame.load_rgb applies it (as OpenCV's imread does), so a listed camera must describe the rotated
image (the sizes are checked here, before any work); an EXIF-inferred camera is swapped for the orientations that
transpose the image (5 to 8): its focal length and centred principal point describe the rotated image as well.

Frame names: the image's path inside the folder with '/' (hloc's query names); for one image file, its file name.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pycolmap
from PIL import Image

from sceneloc.data.ace_folder import IMAGE_EXTENSIONS
from sceneloc.data.colmap_model import _PARAM_LAYOUT, _camera
from sceneloc.data.scene import (TRANSPOSING_ORIENTATIONS, Frame, Scene, Undistortion, check_camera,
                                 exif_orientation, image_size)
from sceneloc.runtime.errors import InputError, read_text_file
from sceneloc.geometry import Camera

MODEL_NAMES = frozenset(name for name in pycolmap.CameraModelId.__members__ if name != "INVALID")
INTRINSICS_LAYOUT = "name MODEL width height params..."


def is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS


def list_images(folder: Path) -> list[Path]:
    """The images (IMAGE_EXTENSIONS) in `folder` and its sub-folders, sorted by path; hidden files and folders
    skipped."""
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def has_images(folder: Path) -> bool:
    """True when `folder` holds an image (stops at the first)."""
    return any(p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file() for p in folder.rglob("*"))


def _orientation(path: Path) -> int:
    try:
        with Image.open(path) as image:
            return exif_orientation(image)
    except Exception:  # unreadable images fail in image_size
        return 1


def loaded_size(path: Path) -> tuple[int, int]:
    """(width, height) of the image as Frame.load_rgb returns it (EXIF orientation applied), from the header."""
    width, height = image_size(path)
    return (height, width) if _orientation(path) in TRANSPOSING_ORIENTATIONS else (width, height)


def camera_from_colmap(source: Path | None, colmap_camera: pycolmap.Camera, where: str
                       ) -> tuple[Camera, Undistortion | None]:
    """A COLMAP camera (a model the readers support) -> (the pinhole Camera of its undistorted image, the
    Undistortion or None); InputError naming `source` and `where` for another model or intrinsics that cannot
    describe the image."""
    model = colmap_camera.model.name
    if model not in _PARAM_LAYOUT:
        raise InputError(source, f"{where}camera model {model} is not supported "
                                 f"(supported: {', '.join(_PARAM_LAYOUT)})")
    camera, undistortion = _camera(source, colmap_camera)
    return check_camera(source, camera, where), undistortion


def read_intrinsics_list(path: str | Path) -> dict[str, tuple[int, pycolmap.Camera]]:
    """hloc's queries_with_intrinsics.txt -> {name: (line number, pycolmap.Camera)} in file order. Raises InputError
    with the line number on a malformed line, an unknown model, a wrong parameter count or a name listed twice."""
    path = Path(path)
    text = read_text_file(path, "intrinsics file")
    entries: dict[str, tuple[int, pycolmap.Camera]] = {}
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        tokens = line.split()
        at = next((i for i in range(1, len(tokens) - 2) if tokens[i] in MODEL_NAMES
                   and tokens[i + 1].isdigit() and tokens[i + 2].isdigit()), None)
        if at is None:
            raise InputError(path, f"line {lineno}: expected '{INTRINSICS_LAYOUT}' (hloc's queries_with_intrinsics"
                                   f".txt, a COLMAP camera model), got {raw!r}")
        name, model, width, height = " ".join(tokens[:at]), tokens[at], int(tokens[at + 1]), int(tokens[at + 2])
        try:
            params = [float(v) for v in tokens[at + 3:]]
        except ValueError:
            raise InputError(path, f"line {lineno}: camera parameters are not numbers: {raw!r}") from None
        if width <= 0 or height <= 0 or not np.isfinite(params).all():
            raise InputError(path, f"line {lineno}: image size {width}x{height} or parameters are not valid: {raw!r}")
        camera = pycolmap.Camera(model=model, width=width, height=height, params=params)
        if not camera.verify_params():
            raise InputError(path, f"line {lineno}: {model} takes {len(camera.params_info.split(','))} parameters "
                                   f"({camera.params_info}), got {len(params)}")
        if name in entries:
            raise InputError(path, f"line {lineno}: image {name!r} is listed twice")
        entries[name] = (lineno, camera)
    if not entries:
        raise InputError(path, f"lists no images ('{INTRINSICS_LAYOUT}' per line)")
    return entries


def _listed_frame(intrinsics: Path, lineno: int, name: str, image: Path, colmap_camera: pycolmap.Camera) -> Frame:
    camera, undistortion = camera_from_colmap(intrinsics, colmap_camera, f"line {lineno}: ")
    size = loaded_size(image)
    if size != (camera.width, camera.height):
        raw = image_size(image)
        rotated = f" (raw {raw[0]}x{raw[1]}, rotated by its EXIF orientation)" if raw != size else ""
        raise InputError(image, f"image is {size[0]}x{size[1]}{rotated} but line {lineno} of {intrinsics} gives "
                                f"{camera.width}x{camera.height}")
    return Frame(name=name, rgb_path=image, camera=camera, undistortion=undistortion)


def _exif_frame(name: str, image: Path) -> Frame:
    image_size(image)  # a readable image header, or a one-line error
    try:
        colmap_camera = pycolmap.infer_camera_from_image(str(image))
    except (ValueError, RuntimeError) as error:
        raise InputError(image, f"cannot read image ({str(error).splitlines()[0]})") from None
    if not colmap_camera.has_prior_focal_length:
        raise InputError(image, "no camera: its EXIF gives no focal length (to localize plain images, pass "
                                f"--intrinsics FILE, hloc's queries_with_intrinsics.txt: '{INTRINSICS_LAYOUT}')")
    camera, undistortion = camera_from_colmap(image, colmap_camera, "EXIF ")
    if _orientation(image) in TRANSPOSING_ORIENTATIONS:
        if undistortion is not None:
            raise InputError(image, "EXIF orientation rotates a distorted camera: pass --intrinsics FILE")
        camera = Camera(camera.height, camera.width, camera.fy, camera.fx, camera.cy, camera.cx)
    return Frame(name=name, rgb_path=image, camera=camera, undistortion=undistortion)


def read_query_images(path: str | Path, intrinsics: str | Path | None = None) -> Scene:
    """An image folder or one image file -> Scene of unposed frames. intrinsics: hloc's queries_with_intrinsics.txt
    (rules in the module docstring); None: each image's camera from its EXIF. Raises InputError naming the file
    (and the list's line) for a missing or unreadable image, an image of another size than its intrinsics, an
    image without EXIF focal length, or a folder without images."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "does not exist")
    if path.is_file() and not is_image_file(path):
        raise InputError(path, f"is not an image ({', '.join(IMAGE_EXTENSIONS)}) or an image folder")
    scene_name, root = (path.name, path) if path.is_dir() else (path.stem, path.parent)
    if intrinsics is None:
        images = list_images(path) if path.is_dir() else [path]
        if not images:
            raise InputError(path, f"holds no images ({', '.join(IMAGE_EXTENSIONS)})")
        names = [p.relative_to(path).as_posix() for p in images] if path.is_dir() else [path.name]
        return Scene(scene_name, root, [_exif_frame(n, p) for n, p in zip(names, images)])
    intrinsics = Path(intrinsics)
    entries = read_intrinsics_list(intrinsics)
    if path.is_file():
        hits = [n for n in entries if n == path.name or path.as_posix().endswith("/" + n.lstrip("/"))]
        if len(hits) != 1:
            raise InputError(intrinsics, f"has {'no' if not hits else len(hits)} lines for image {path.name!r}")
        lineno, colmap_camera = entries[hits[0]]
        return Scene(scene_name, root, [_listed_frame(intrinsics, lineno, path.name, path, colmap_camera)])
    frames = []
    for name, (lineno, colmap_camera) in entries.items():
        image = path / name
        if not image.is_file():
            raise InputError(intrinsics, f"line {lineno}: image {name!r} is not in {path}")
        frames.append(_listed_frame(intrinsics, lineno, name, image, colmap_camera))
    return Scene(scene_name, root, frames)
