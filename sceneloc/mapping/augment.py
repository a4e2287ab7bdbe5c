"""Random augmentation of mapping images: scale, in-plane rotation and photometric jitter, expressed as one
homography so that poses and depth stay exact. The plain resize to the working height (prepare_image) is the
encode stage's (sceneloc.encode), shared with localization."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from sceneloc.encode import prepare_image
from sceneloc.geometry import Camera, Rigid3


@dataclass
class PreparedImage:
    """An image ready to encode, and how it relates to the source frame.

    rgb: (h, w, 3) uint8; camera: intrinsics of `rgb`; cam_rotation: (3, 3) rotation applied to the camera
    (new_cam_from_cam), identity without rotation augmentation; valid: (h, w) bool, pixels that come from the
    source image; homography: (3, 3) maps source pixels to `rgb` pixels."""

    rgb: np.ndarray
    camera: Camera
    cam_rotation: np.ndarray
    valid: np.ndarray
    homography: np.ndarray


def roll_homography(camera: Camera, out_camera: Camera, angle_rad: float) -> tuple[np.ndarray, np.ndarray]:
    """(R, H), both (3, 3): R rotates the camera by angle_rad about its optical axis; H = out_camera.K R
    camera.K^-1 warps the image of `camera` to the rotated camera's (with out_camera's size and intrinsics), exact
    for fx != fy and an off-centre principal point."""
    c, s = np.cos(angle_rad), np.sin(angle_rad)
    rotation = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    return rotation, out_camera.K @ rotation @ np.linalg.inv(camera.K)


def augment_image(rgb: np.ndarray, camera: Camera, image_height: int, rng: np.random.Generator,
                  scale_range: tuple[float, float], rotation_deg: float,
                  brightness: float, contrast: float) -> PreparedImage:
    """Random scale and in-plane rotation about the principal point, plus brightness/contrast jitter.

    The image is first resized like a query (prepare_image) to the randomly scaled height, then, when the random
    angle is not zero, rotated: a rotation R of the camera about its optical axis warps the image by K R K^-1,
    which stays exact for fx != fy and an off-centre principal point."""
    scale = np.exp(rng.uniform(np.log(scale_range[0]), np.log(scale_range[1])))
    angle = np.radians(rng.uniform(-rotation_deg, rotation_deg)) if rotation_deg > 0 else 0.0
    out, cam_out = prepare_image(rgb, camera, max(8, int(round(image_height * scale))))
    # Source pixels -> augmented pixels: the resize (K_out K^-1 for a pixel-centre-preserving resize) and the roll.
    rotation, homography = roll_homography(camera, cam_out, angle)
    valid = np.ones(out.shape[:2], bool)
    if angle != 0.0:
        roll = roll_homography(cam_out, cam_out, angle)[1]
        size = (cam_out.width, cam_out.height)
        out = cv2.warpPerspective(out, roll, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
        valid = cv2.warpPerspective(np.ones(valid.shape, np.uint8), roll, size, flags=cv2.INTER_NEAREST) > 0
    gain = 1.0 + rng.uniform(-contrast, contrast)
    bias = 255.0 * rng.uniform(-brightness, brightness)
    mean = out.reshape(-1, 3).mean(0)
    out = np.clip((out.astype(np.float32) - mean) * gain + mean + bias, 0, 255).astype(np.uint8)
    return PreparedImage(out, cam_out, rotation, valid, homography)


def rotate_pose(cam_from_world: Rigid3, cam_rotation: np.ndarray) -> Rigid3:
    """The pose of the augmented camera: new_cam_from_world = R * cam_from_world."""
    return Rigid3(cam_rotation, np.zeros(3)) * cam_from_world
