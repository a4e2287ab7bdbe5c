"""Frame and Scene: the common output of every reader, and image/depth loading with validation."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from sceneloc.runtime.errors import InputError
from sceneloc.geometry import Camera, Rigid3


def _unreadable(path: Path, error: Exception, what: str) -> InputError:
    """The one-line InputError for an image Pillow cannot open or decode."""
    if isinstance(error, Image.DecompressionBombError):
        # Pillow refuses images over twice Image.MAX_IMAGE_PIXELS before decoding a byte: decoding one would take
        # gigabytes of memory, and no camera the mapper is meant for makes such images.
        limit = 2 * Image.MAX_IMAGE_PIXELS / 1e6
        return InputError(path, f"{what} is too large to read (over {limit:.0f} megapixels, Pillow's "
                                f"decompression-bomb limit)")
    if isinstance(error, UnidentifiedImageError):
        reason = "not an image, or a format Pillow cannot read"
    elif isinstance(error, OSError) and error.strerror:
        reason = error.strerror
    else:
        reason = str(error).splitlines()[0] if str(error) else error.__class__.__name__
    return InputError(path, f"cannot read {what} ({reason})")


_PIL_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)
"""What Pillow raises for unreadable files: OSError (missing, truncated, UnidentifiedImageError), SyntaxError and
ValueError (damaged headers, e.g. a broken PNG chunk), DecompressionBombError (too many pixels)."""


EXIF_ORIENTATION = 0x0112
"""The EXIF tag of the orientation."""
TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)
"""EXIF orientations that swap width and height (read_image applies them)."""


def exif_orientation(image: Image.Image) -> int:
    """The EXIF orientation of an opened image, 1 when it has none or a broken one, read without decoding a pixel:
    Pillow's getexif() decodes a whole PNG to look for an EXIF chunk after its image data (a decompression bomb
    would be decoded before any size check), so a PNG's orientation comes only from an eXIf chunk before the data."""
    try:
        if image.format == "PNG":
            raw = image.info.get("exif")
            if raw is None:
                return 1
            exif = Image.Exif()
            exif.load(raw)
            return int(exif.get(EXIF_ORIENTATION, 1))
        return int(image.getexif().get(EXIF_ORIENTATION, 1))
    except Exception:  # a broken EXIF block is no orientation (OpenCV ignores it too)
        return 1


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) of an image, from its header only. Raises InputError when it is not a readable image or is too
    large to decode."""
    try:
        with Image.open(path) as image:
            return image.size
    except _PIL_ERRORS as error:
        raise _unreadable(path, error, "image header") from None


def read_image(path: Path | BinaryIO, name: str | Path | None = None) -> np.ndarray:
    """(H, W, 3) uint8 RGB of an image file (or of an open binary stream: the service's uploads; `name` is what
    messages call it, default the path), EXIF orientation applied (as OpenCV's imread does). Raises InputError
    for a missing, unreadable, too large or truncated file: Pillow refuses truncated files
    (ImageFile.LOAD_TRUNCATED_IMAGES is False), where OpenCV returns the decoded part padded with grey."""
    try:
        with Image.open(path) as image:
            image.load()
            try:
                image = ImageOps.exif_transpose(image)
            except Exception:  # a damaged EXIF block is no orientation (OpenCV ignores it too)
                pass
            rgb = np.array(image.convert("RGB"))
    except _PIL_ERRORS as error:
        raise _unreadable(path if name is None else name, error, "image") from None
    return rgb


def check_camera(path: Path, camera: Camera, where: str = "") -> Camera:
    """`camera` when it can describe its image, else InputError naming `path` (`where`: the camera's place inside
    the file, e.g. "frames[3]: "): a size of at least 1x1 pixel, finite positive focal lengths and the principal
    point inside the image; one far outside is the sign of intrinsics made for another image size."""
    values = np.array([camera.fx, camera.fy, camera.cx, camera.cy])
    if camera.width < 1 or camera.height < 1:
        raise InputError(path, f"{where}image size {camera.width}x{camera.height} is empty")
    if not (np.isfinite(values).all() and camera.fx > 0 and camera.fy > 0):
        raise InputError(path, f"{where}invalid intrinsics fx={camera.fx:g} fy={camera.fy:g}: focal lengths must be "
                               f"positive and finite")
    # The image spans -0.5 .. width - 0.5 in OpenCV pixel coordinates (centre of the top-left pixel at 0).
    if not (-0.5 <= camera.cx <= camera.width - 0.5 and -0.5 <= camera.cy <= camera.height - 0.5):
        raise InputError(path, f"{where}principal point ({camera.cx:g}, {camera.cy:g}) lies outside the "
                               f"{camera.width}x{camera.height} image: intrinsics made for another image size?")
    return camera


@dataclass(frozen=True)
class Undistortion:
    """How to turn a distorted source image into the frame's pinhole `camera`: OpenCV distortion model.
    K: (3, 3) of the source image, coeffs: OpenCV (k1, k2, p1, p2[, k3]) coefficients."""

    K: np.ndarray
    coeffs: np.ndarray


def undistort(rgb: np.ndarray, camera: Camera, undistortion: Undistortion | None) -> np.ndarray:
    """(H, W, 3) image of a distorted source camera -> the same size image of the pinhole `camera` (unchanged
    without an undistortion)."""
    if undistortion is None:
        return rgb
    return cv2.undistort(rgb, undistortion.K, undistortion.coeffs, None, camera.K)


@dataclass
class Frame:
    """One posed image. `camera` describes the image returned by `load_rgb()` (undistorted, full size).

    cam_from_world is None for query images without ground truth."""

    name: str
    rgb_path: Path
    camera: Camera
    cam_from_world: Rigid3 | None = None
    depth_path: Path | None = None
    depth_scale: float = 0.001
    """Metres per stored depth unit (0.001 for uint16 millimetres). Depth 0 means invalid."""
    undistortion: Undistortion | None = None

    def load_rgb(self) -> np.ndarray:
        """(H, W, 3) uint8 RGB, undistorted to `camera`. Raises InputError on unreadable, truncated, too large or
        wrong-size images."""
        rgb = read_image(self.rgb_path)
        h, w = rgb.shape[:2]
        if (w, h) != (self.camera.width, self.camera.height):
            raise InputError(self.rgb_path, f"image is {w}x{h} but its intrinsics are for "
                                            f"{self.camera.width}x{self.camera.height}")
        return undistort(rgb, self.camera, self.undistortion)

    def load_depth(self) -> np.ndarray | None:
        """(H, W) float32 metres (0 = invalid), or None when the frame has no depth. Raises InputError on an
        unreadable depth image or one of another size than the colour image."""
        if self.depth_path is None:
            return None
        raw = cv2.imread(str(self.depth_path), cv2.IMREAD_ANYDEPTH)
        if raw is None:
            raise InputError(self.depth_path, "cannot read depth image")
        if raw.shape != (self.camera.height, self.camera.width):
            # Depth pixels are paired with colour pixels by index: another size would give wrong 3D targets.
            raise InputError(self.depth_path, f"depth image is {raw.shape[1]}x{raw.shape[0]} but its colour image "
                                              f"is {self.camera.width}x{self.camera.height}")
        depth = raw.astype(np.float32) * self.depth_scale
        depth[~np.isfinite(depth)] = 0.0
        return depth


@dataclass
class Scene:
    """An ordered list of frames sharing one world frame (metres)."""

    name: str
    root: Path
    frames: list[Frame] = field(default_factory=list)

    @property
    def posed_frames(self) -> list[Frame]:
        return [f for f in self.frames if f.cam_from_world is not None]

    def camera_centers(self) -> np.ndarray:
        """(N, 3) world positions of the posed frames."""
        return np.array([f.cam_from_world.center for f in self.posed_frames]).reshape(-1, 3)

    def require_poses(self) -> None:
        """Raise InputError unless every frame has a pose (mapping needs them)."""
        missing = [f.name for f in self.frames if f.cam_from_world is None]
        if missing:
            raise InputError(self.root, f"{len(missing)} images have no pose (first: {missing[0]})")
