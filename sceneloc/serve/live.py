"""Live reconstruction of `sceneloc serve --reconstruct` (issue 17, part 4): every frame a stream localizes is fused
into its map's TSDF volume (reconstruct/fusion.TsdfVolume) at the pose just estimated, with the depth the map
implies there (export/depth.map_depth): stream clients send RGB only. Poses found with fewer than min_inliers
RANSAC inliers are not fused: a wrong pose would paint a whole frame's surface in the wrong place.

Fusion runs on a thread of its own, one frame at a time per map, after the pose has been answered, so it never
delays a reply; a frame localized while the map's fusion is busy is skipped (and counted): a live mesh wants the
newest views, not every one. The mesh is extracted at most every mesh_interval_s (marching cubes costs more than a
frame) and its version announced to the map's viewers, which fetch GET /v1/maps/{name}/mesh.ply. One pass at one
voxel size: the coarse-to-fine restriction of `sceneloc reconstruct` needs the coarse volume of the whole sequence
first."""

from __future__ import annotations

import io
import time

import numpy as np
import torch

from sceneloc.data.mesh_file import mesh_ply_bytes
from sceneloc.data.scene import Undistortion, read_image, undistort
from sceneloc.geometry import Camera, Rigid3
from sceneloc.maps.scene_map import SceneMap
from sceneloc.reconstruct.fusion import TsdfVolume
from sceneloc.serve.config import LiveReconstructionConfig


class LiveReconstruction:
    """One map's growing mesh. fuse() runs on a worker thread, one call at a time (the service skips frames while
    `busy`); mesh_ply and the counters are read by the event loop."""

    def __init__(self, scene_map: SceneMap, config: LiveReconstructionConfig, device: torch.device):
        self.scene_map, self.config, self.device = scene_map, config, device
        self.volume = TsdfVolume(config.voxel_m, config.truncation_voxels, config.max_depth_m)
        self.busy = False
        self.frames = 0
        self.skipped = 0
        self.unsure = 0
        self.fuse_s = 0.0
        self.version = 0
        self.mesh_ply: bytes | None = None
        self.vertices = 0
        self._extracted = -np.inf

    def fuse(self, image: bytes, name: str, camera: Camera, undistortion: Undistortion | None,
             cam_from_world: Rigid3) -> bool:
        """Decode one localized frame (JPEG/PNG bytes), take the map's depth at its pose and fuse it; extract the
        mesh when mesh_interval_s has passed since the last time. True when a new mesh version was made."""
        t0 = time.perf_counter()
        from sceneloc.export.depth import map_depth

        rgb = undistort(read_image(io.BytesIO(image), name), camera, undistortion)
        depth = map_depth(self.scene_map, rgb, camera, cam_from_world, self.device)
        if self.volume.integrate(depth, rgb, camera, cam_from_world):
            self.frames += 1
        extract = time.monotonic() - self._extracted >= self.config.mesh_interval_s
        if extract:
            self.extract()
        self.fuse_s += time.perf_counter() - t0
        return extract

    def extract(self) -> None:
        """Make the mesh of what has been fused so far the current version (mesh_ply)."""
        mesh = self.volume.mesh(self.config.min_weight)
        self._extracted = time.monotonic()
        if "indices" not in mesh.triangle or not len(mesh.triangle.indices):
            return
        self.mesh_ply = mesh_ply_bytes(mesh)
        self.vertices = len(mesh.vertex.positions)
        self.version += 1

    def close(self) -> None:
        """Free the volume now. Left to the interpreter's exit, Open3D's memory is released after Open3D itself has
        shut down, and the process ends with exit code 1 instead of a graceful stop's 0."""
        self.volume = None

    def summary(self) -> dict:
        """What GET /v1/maps reports: frames fused, skipped (fusion busy) and left out as unsure (too few inliers),
        fusion frames per second, the mesh's version and vertices."""
        fused = self.frames
        return {"frames": fused, "skipped": self.skipped, "unsure": self.unsure,
                "fps": fused / self.fuse_s if self.fuse_s else None,
                "version": self.version, "vertices": self.vertices}
