"""What crosses the service's wire, checked before any work: the camera JSON (COLMAP's model name and parameters,
any model the readers support), the uploaded image (its format and size from the header alone) and why a
localization failed. Every problem is a RequestError with the HTTP status it gets and a message naming the field."""

from __future__ import annotations

import io
import json
import math

import pycolmap
from PIL import Image, UnidentifiedImageError

from sceneloc.data.query_images import MODEL_NAMES, camera_from_colmap
from sceneloc.data.scene import TRANSPOSING_ORIENTATIONS, Undistortion, exif_orientation
from sceneloc.geometry import Camera
from sceneloc.localize.estimate import PoseEstimate
from sceneloc.runtime.errors import InputError

IMAGE_FORMATS = ("JPEG", "PNG")
"""Image formats accepted (Pillow's names): what phones and browsers send."""


class RequestError(Exception):
    """A request the service refuses: `status` (HTTP code), `message` (one line naming the field or the limit)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def parse_camera(text: str | None) -> tuple[Camera, Undistortion | None]:
    """The camera form field: JSON {"model": COLMAP model name, "width": int, "height": int, "params": [numbers]},
    the parameters in COLMAP's convention (principal point with the top-left pixel's centre at 0.5, 0.5) -> the
    pinhole Camera of the undistorted image and its Undistortion (None without distortion). RequestError 422
    naming the field otherwise."""
    if text is None:
        raise RequestError(422, "camera: field required (JSON: model, width, height, params)")
    value = parse_json(text, "camera")
    if not isinstance(value, dict):
        raise RequestError(422, "camera: expected a JSON object with model, width, height, params")
    for name in ("model", "width", "height", "params"):
        if name not in value:
            raise RequestError(422, f"camera.{name}: field required")
    model = value["model"]
    if not isinstance(model, str) or model not in MODEL_NAMES:
        raise RequestError(422, f"camera.model: {model!r} is not a COLMAP camera model")
    for name in ("width", "height"):
        size = value[name]
        if isinstance(size, bool) or not isinstance(size, int) or not 0 < size <= 100_000:
            raise RequestError(422, f"camera.{name}: expected a positive integer, got {size!r}")
    params = value["params"]
    if not isinstance(params, list) or not all(finite_number(p) for p in params):
        raise RequestError(422, f"camera.params: expected a list of finite numbers, got {str(params)[:80]}")
    colmap_camera = pycolmap.Camera(model=model, width=value["width"], height=value["height"],
                                    params=[float(p) for p in params])
    if not colmap_camera.verify_params():
        raise RequestError(422, f"camera.params: {model} takes {len(colmap_camera.params_info.split(','))} "
                                f"parameters ({colmap_camera.params_info}), got {len(params)}")
    try:
        return camera_from_colmap(None, colmap_camera, "")
    except InputError as e:
        raise RequestError(422, f"camera: {e.problem}") from None


def parse_json(text: str, field: str):
    """A JSON field's value; RequestError 422 naming `field` for text that is not JSON, nested too deeply or
    holds numbers Python refuses (integers of thousands of digits)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise RequestError(422, f"{field}: not JSON ({e.msg})") from None
    except (ValueError, RecursionError, UnicodeDecodeError):
        raise RequestError(422, f"{field}: not JSON that can be read (too deep or too large numbers)") from None


def finite_number(value) -> bool:
    """Whether a JSON value is a finite number (not a bool; huge integers count as not finite)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def camera_json(camera: Camera) -> dict:
    """A pinhole Camera as the camera field's JSON (PINHOLE, COLMAP's principal-point convention)."""
    return {"model": "PINHOLE", "width": camera.width, "height": camera.height,
            "params": [camera.fx, camera.fy, camera.cx + 0.5, camera.cy + 0.5]}


def check_image(data: bytes, max_pixels: int) -> tuple[int, int]:
    """The (width, height) an uploaded image decodes to (EXIF orientation applied), read from its header without
    decoding a pixel: RequestError 415 when it is not a JPEG or PNG, 413 when it has more than max_pixels pixels."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            fmt, (width, height) = image.format, image.size
            if fmt not in IMAGE_FORMATS:
                raise RequestError(415, f"image: {fmt} images are not accepted ({' or '.join(IMAGE_FORMATS)} "
                                        f"expected)")
            if width * height > max_pixels:
                raise RequestError(413, f"image: {width}x{height} is over the limit of {max_pixels:,} pixels")
            orientation = exif_orientation(image)
    except Image.DecompressionBombError:
        raise RequestError(413, f"image: over {max_pixels:,} pixels") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise RequestError(415, f"image: not an image ({' or '.join(IMAGE_FORMATS)} expected)") from None
    return (height, width) if orientation in TRANSPOSING_ORIENTATIONS else (width, height)


def check_camera_fits(size: tuple[int, int], camera: Camera) -> None:
    """RequestError 422 when the image is not the size the camera describes."""
    if size != (camera.width, camera.height):
        raise RequestError(422, f"camera.width/height: the image is {size[0]}x{size[1]}, the camera "
                                f"{camera.width}x{camera.height}")


def failure_reason(estimate: PoseEstimate) -> str | None:
    """Why an estimate has no pose, in words (None when it has one)."""
    if estimate.cam_from_world is not None:
        return None
    n = int(estimate.details.get("n_correspondences", 0))
    if n < 4:
        return f"too few 2D-3D correspondences ({n}; the solver needs 4)"
    return f"no pose with enough inliers among {n} correspondences"
