"""Frame and Scene: the common output of every reader, and image/depth loading with validation."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from sceneloc.errors import InputError
from sceneloc.geometry import Camera, Rigid3


@dataclass(frozen=True)
class Undistortion:
    """How to turn a distorted source image into the frame's pinhole `camera`: OpenCV distortion model.
    K: (3, 3) of the source image, coeffs: OpenCV (k1, k2, p1, p2[, k3]) coefficients."""

    K: np.ndarray
    coeffs: np.ndarray


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
        """(H, W, 3) uint8 RGB, undistorted to `camera`. Raises InputError on unreadable or wrong-size images."""
        bgr = cv2.imread(str(self.rgb_path), cv2.IMREAD_COLOR)
        if bgr is None:
            raise InputError(self.rgb_path, "cannot read image (missing, empty or not an image)")
        h, w = bgr.shape[:2]
        if (w, h) != (self.camera.width, self.camera.height):
            raise InputError(self.rgb_path, f"image is {w}x{h} but its intrinsics are for "
                                            f"{self.camera.width}x{self.camera.height}")
        if self.undistortion is not None:
            bgr = cv2.undistort(bgr, self.undistortion.K, self.undistortion.coeffs, None, self.camera.K)
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

    def load_depth(self) -> np.ndarray | None:
        """(H, W) float32 metres (0 = invalid), or None when the frame has no depth."""
        if self.depth_path is None:
            return None
        raw = cv2.imread(str(self.depth_path), cv2.IMREAD_ANYDEPTH)
        if raw is None:
            raise InputError(self.depth_path, "cannot read depth image")
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
