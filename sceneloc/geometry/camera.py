"""Pinhole camera intrinsics (OpenCV axes: x right, y down, z forward) with projection and back-projection."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Camera:
    """An undistorted pinhole camera. Pixel coordinates follow OpenCV: the centre of the top-left pixel is (0, 0)
    and pixel (u, v) is column u, row v. (COLMAP puts that centre at (0.5, 0.5): readers and the pycolmap solver
    convert at the boundary.)"""

    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float

    @property
    def K(self) -> np.ndarray:
        """(3, 3) float64 calibration matrix."""
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    def scaled(self, width: int, height: int) -> "Camera":
        """The same camera for an image resized to (width, height)."""
        sx, sy = width / self.width, height / self.height
        # Pixel-centre-preserving resize: (u + 0.5) * s - 0.5.
        return Camera(width, height, self.fx * sx, self.fy * sy,
                      (self.cx + 0.5) * sx - 0.5, (self.cy + 0.5) * sy - 0.5)

    def project(self, points_cam: np.ndarray) -> np.ndarray:
        """points_cam: (N, 3) in camera frame -> (N, 2) pixels. Points behind the camera give inf/negative depth
        results; callers check z > 0."""
        z = points_cam[:, 2:3]
        return np.concatenate([self.fx * points_cam[:, :1] / z + self.cx,
                               self.fy * points_cam[:, 1:2] / z + self.cy], 1)

    def unproject(self, pixels: np.ndarray, depth: np.ndarray | float = 1.0) -> np.ndarray:
        """pixels: (N, 2), depth: (N,) or scalar z-depth -> (N, 3) points in camera frame."""
        rays = np.stack([(pixels[:, 0] - self.cx) / self.fx, (pixels[:, 1] - self.cy) / self.fy,
                         np.ones(len(pixels))], 1)
        return rays * np.asarray(depth, dtype=np.float64).reshape(-1, 1)

    def to_dict(self) -> dict:
        return {"width": self.width, "height": self.height, "fx": self.fx, "fy": self.fy, "cx": self.cx, "cy": self.cy}

    @staticmethod
    def from_dict(d: dict) -> "Camera":
        return Camera(int(d["width"]), int(d["height"]), float(d["fx"]), float(d["fy"]), float(d["cx"]), float(d["cy"]))
