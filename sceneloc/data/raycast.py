"""The one pinhole ray caster of the renderers (procedural rooms and textured scans), on Open3D's
RaycastingScene."""

from __future__ import annotations

import numpy as np
import open3d as o3d

from sceneloc.geometry import Camera, Rigid3


def cast_pixel_rays(scene: o3d.t.geometry.RaycastingScene, camera: Camera,
                    cam_from_world: Rigid3) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Cast one ray through the centre of every pixel of `camera` at pose cam_from_world.

    Returns the rays (H, W, 6) float32 (world origin, world direction with camera-frame z = 1, so a hit's ray
    parameter is its z-depth) and Open3D's hits as numpy arrays: t_hit (H, W) (inf where nothing is hit),
    primitive_ids (H, W), primitive_uvs (H, W, 2), primitive_normals (H, W, 3). A supersampled image is
    cast as `camera.scaled(w * s, h * s)`: its pixel centres are the sub-pixel centres."""
    k = camera.K
    # Open3D puts the ray of pixel (col, row) through (col + 0.5, row + 0.5); OpenCV's centre is (col, row).
    k[:2, 2] += 0.5
    rays = o3d.t.geometry.RaycastingScene.create_rays_pinhole(
        o3d.core.Tensor(k), o3d.core.Tensor(cam_from_world.matrix()), camera.width, camera.height)
    hits = scene.cast_rays(rays)
    return rays.numpy(), {name: hits[name].numpy() for name in
                          ("t_hit", "primitive_ids", "primitive_uvs", "primitive_normals")}
