"""Ray-cast rendering of a synthetic room: RGB (textured, Lambertian-lit, supersampled), exact z-depth, scene
coordinates and semantic labels for a pinhole camera, with Open3D's RaycastingScene."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from sceneloc.data.raycast import cast_pixel_rays
from sceneloc.data.synthetic.room import UNLABELLED, Room
from sceneloc.runtime.errors import InputError
from sceneloc.geometry import Camera, Rigid3

LIGHT_FALLOFF_M = 3.0
"""Distance at which a light's contribution halves (1 / (1 + (d / falloff)^2))."""
FULL_BRIGHTNESS_M = 2.5
"""A surface facing every light head-on at this distance from each is lit to full brightness."""


@dataclass(frozen=True)
class RenderedView:
    """One rendered frame. Pixels where no surface was hit have depth 0 and scene coordinates 0."""

    rgb: np.ndarray
    """(H, W, 3) uint8 RGB."""
    depth: np.ndarray
    """(H, W) float32 z-depth in metres along the camera's optical axis, 0 where nothing was hit."""
    scene_coords: np.ndarray
    """(H, W, 3) float32 world point hit by the ray through each pixel centre."""
    labels: np.ndarray | None = None
    """(H, W) uint8 semantic class (room.SEMANTIC_CLASSES) of the surface the ray through each pixel centre hits,
    room.UNLABELLED where it hits nothing; None from renderers that know no classes."""


def _shade(room: Room, points: np.ndarray, normals: np.ndarray, directions: np.ndarray) -> np.ndarray:
    """Lambertian brightness (N,) float32 of hits at points (N, 3) with surface normals (N, 3) seen along ray
    directions (N, 3): ambient + (1 - ambient) * sum over lights of cos(incidence) * falloff, lights unshadowed."""
    # Mesh normals point either way: turn them towards the viewer.
    sign = -np.sign(np.einsum("ij,ij->i", normals, directions))
    diffuse = np.zeros(len(points), np.float32)
    for light in room.lights.astype(np.float32):
        to_light = light - points
        dist2 = np.einsum("ij,ij->i", to_light, to_light)
        cos = sign * np.einsum("ij,ij->i", normals, to_light) / np.sqrt(np.maximum(dist2, 1e-12))
        diffuse += np.maximum(cos, 0.0) / (1.0 + dist2 / LIGHT_FALLOFF_M ** 2)
    peak = len(room.lights) / (1.0 + (FULL_BRIGHTNESS_M / LIGHT_FALLOFF_M) ** 2)
    ambient = room.config.ambient
    return ambient + (1.0 - ambient) * diffuse / np.float32(peak)


def render_view(room: Room, camera: Camera, cam_from_world: Rigid3, supersampling: int = 2) -> RenderedView:
    """Render `room` from the pose cam_from_world.

    Texture colour is averaged over a supersampling x supersampling grid of rays per pixel (box filter); lighting,
    which varies smoothly, depth and scene coordinates come from the single ray through the pixel centre, so depth
    and coordinates are exact intersections with the mesh (to float32 precision)."""
    if supersampling < 1:
        raise InputError(None, f"supersampling must be >= 1, got {supersampling}")
    if camera.width < 1 or camera.height < 1:
        raise InputError(None, f"camera size {camera.width}x{camera.height} is empty")
    h, w, s = camera.height, camera.width, supersampling
    rays, hits = cast_pixel_rays(room.scene, camera, cam_from_world)
    t_centre = hits["t_hit"].reshape(-1)
    valid = np.isfinite(t_centre)
    depth = np.where(valid, t_centre, np.float32(0.0))
    centre_dirs = rays.reshape(-1, 6)[:, 3:]
    coords = cam_from_world.center + depth[:, None].astype(np.float64) * centre_dirs
    coords[~valid] = 0.0
    normals = hits["primitive_normals"].reshape(-1, 3)
    centre_prim = hits["primitive_ids"].reshape(-1)
    labels = np.full(h * w, UNLABELLED, np.uint8)
    labels[valid] = room.triangle_labels()[centre_prim[valid]]
    if s > 1:
        _, hits = cast_pixel_rays(room.scene, camera.scaled(w * s, h * s), cam_from_world)
    prim, uv = hits["primitive_ids"].reshape(-1), hits["primitive_uvs"].reshape(-1, 2)

    # Atlas coordinates from barycentrics: exact for the planar (affine) texture mapping of each triangle.
    miss = prim >= len(room.triangles)
    table = room.triangle_atlas_uv[np.where(miss, 0, prim)]
    map_x = table[:, 0] + uv[:, 0] * table[:, 2] + uv[:, 1] * table[:, 4]
    map_y = table[:, 1] + uv[:, 0] * table[:, 3] + uv[:, 1] * table[:, 5]
    if miss.any():
        map_x[miss] = -10.0
    texture = cv2.remap(room.atlas, map_x.reshape(h * s, w * s), map_y.reshape(h * s, w * s), cv2.INTER_LINEAR,
                        borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    if s > 1:
        texture = cv2.resize(texture, (w, h), interpolation=cv2.INTER_AREA)

    shade = np.zeros(h * w, np.float32)
    shade[valid] = _shade(room, coords[valid].astype(np.float32), normals[valid], centre_dirs[valid])
    rgb = np.clip(texture * shade.reshape(h, w, 1) + 0.5, 0, 255).astype(np.uint8)
    return RenderedView(rgb=rgb, depth=depth.reshape(h, w), scene_coords=coords.reshape(h, w, 3).astype(np.float32),
                        labels=labels.reshape(h, w))
