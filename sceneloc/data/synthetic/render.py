"""Ray-cast rendering of a synthetic room: RGB (textured, Lambertian-lit, supersampled), exact z-depth and scene
coordinates for a pinhole camera, with Open3D's RaycastingScene."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import open3d as o3d

from sceneloc.data.synthetic.room import Room
from sceneloc.errors import InputError
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


def _pixel_rays(camera: Camera, cam_from_world: Rigid3, step: int, out: np.ndarray) -> None:
    """Write world-frame rays (H*step*W*step, 6) float32 (origin, direction) into `out`, through the centres of a
    step x step grid of sub-pixels in each pixel, row-major. Each direction has camera-frame z = 1, so the ray
    parameter of a hit is its z-depth."""
    u = ((np.arange(camera.width * step) + 0.5) / step - 0.5 - camera.cx) / camera.fx
    v = ((np.arange(camera.height * step) + 0.5) / step - 0.5 - camera.cy) / camera.fy
    r = cam_from_world.rotation
    # Direction = R^T (x, y, 1) = x * R[0] + y * R[1] + R[2], separable in rows and columns.
    grid = out.reshape(len(v), len(u), 6)
    grid[..., :3] = cam_from_world.center
    np.add((u[:, None] * r[0]).astype(np.float32)[None], (v[:, None] * r[1] + r[2]).astype(np.float32)[:, None],
           out=grid[..., 3:])


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
    n_centre, n_sub = h * w, h * w * s * s
    rays = np.empty((n_centre + (n_sub if s > 1 else 0), 6), np.float32)
    _pixel_rays(camera, cam_from_world, 1, rays[:n_centre])
    if s > 1:
        _pixel_rays(camera, cam_from_world, s, rays[n_centre:])
    hits = room.scene.cast_rays(o3d.core.Tensor(rays))
    t_hit = hits["t_hit"].numpy()
    prim = hits["primitive_ids"].numpy()
    uv = hits["primitive_uvs"].numpy()

    t_centre = t_hit[:n_centre]
    valid = np.isfinite(t_centre)
    depth = np.where(valid, t_centre, np.float32(0.0))
    centre_dirs = rays[:n_centre, 3:]
    coords = cam_from_world.center + depth[:, None].astype(np.float64) * centre_dirs
    coords[~valid] = 0.0

    # Atlas coordinates from barycentrics: exact for the planar (affine) texture mapping of each triangle.
    sub = slice(n_centre, None) if s > 1 else slice(None)
    sub_prim, sub_uv = prim[sub], uv[sub]
    miss = sub_prim >= len(room.triangles)
    table = room.triangle_atlas_uv[np.where(miss, 0, sub_prim)]
    map_x = table[:, 0] + sub_uv[:, 0] * table[:, 2] + sub_uv[:, 1] * table[:, 4]
    map_y = table[:, 1] + sub_uv[:, 0] * table[:, 3] + sub_uv[:, 1] * table[:, 5]
    if miss.any():
        map_x[miss] = -10.0
    texture = cv2.remap(room.atlas, map_x.reshape(h * s, w * s), map_y.reshape(h * s, w * s), cv2.INTER_LINEAR,
                        borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    if s > 1:
        texture = cv2.resize(texture, (w, h), interpolation=cv2.INTER_AREA)

    shade = np.zeros(n_centre, np.float32)
    shade[valid] = _shade(room, coords[valid].astype(np.float32), hits["primitive_normals"].numpy()[:n_centre][valid],
                          centre_dirs[valid])
    rgb = np.clip(texture * shade.reshape(h, w, 1) + 0.5, 0, 255).astype(np.uint8)
    return RenderedView(rgb=rgb, depth=depth.reshape(h, w), scene_coords=coords.reshape(h, w, 3).astype(np.float32))
