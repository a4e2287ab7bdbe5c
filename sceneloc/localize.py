"""Localization: image + Camera -> PoseEstimate with a SceneMap (encode, regress scene coordinates, RANSAC-PnP)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from sceneloc.data import Scene
from sceneloc.device import autocast
from sceneloc.export.poses import PoseEstimate
from sceneloc.geometry import Camera
from sceneloc.mapping.augment import prepare_image
from sceneloc.mapping.buffer import cell_centres
from sceneloc.maps import SceneMap
from sceneloc.progress import make_progress
from sceneloc.solve import SolverConfig, solve_pnp

REFERENCE_HEIGHT = 480
"""Image height at which SolverConfig.inlier_threshold_px is expressed."""


@dataclass
class LocalizeConfig:
    """Query-time settings."""

    solver: SolverConfig = field(default_factory=lambda: SolverConfig(inlier_threshold_px=20.0))
    """RANSAC-PnP settings. Its inlier threshold is given for a 480-pixel-high image and scaled to the working image
    (the map's image height), so one setting means the same angular tolerance at every resolution. 20 px rather
    than ACE's 10: on our maps it keeps recall at (5 cm, 5 deg), raises it at (10 cm, 5 deg) and halves RANSAC time
    (docs/BENCHMARKS.md); --threshold 10 trades that for slightly better recall at (2 cm, 2 deg)."""


@torch.no_grad()
def predict_scene_coordinates(scene_map: SceneMap, rgb: np.ndarray, camera: Camera,
                              device: torch.device) -> tuple[np.ndarray, np.ndarray, Camera]:
    """rgb: (H, W, 3) uint8 of `camera` -> (pixels (N, 2), scene coordinates (N, 3) float64, working camera).

    Pixels are cell centres in the working image (resized to the map's image height) described by the returned
    camera."""
    image, work_cam = prepare_image(rgb, camera, scene_map.image_height)
    tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].to(device)
    encoder = scene_map.encoder.to(device)
    with autocast(device):
        fmap = encoder(tensor)[0]
        rows = fmap.reshape(fmap.shape[0], -1).T
        coords = scene_map.head(rows)
    pixels = cell_centres(image.shape[0], image.shape[1])
    inside = (pixels[:, 0] < image.shape[1]) & (pixels[:, 1] < image.shape[0])
    return pixels[inside].astype(np.float64), coords.float().cpu().numpy()[inside].astype(np.float64), work_cam


def localize_image(scene_map: SceneMap, name: str, rgb: np.ndarray, camera: Camera, config: LocalizeConfig,
                   device: torch.device) -> PoseEstimate:
    """One image -> PoseEstimate (cam_from_world None when the solver fails). details: time_ms, network_ms,
    solver_ms, iterations, n_correspondences."""
    t0 = time.perf_counter()
    pixels, coords, work_cam = predict_scene_coordinates(scene_map, rgb, camera, device)
    t1 = time.perf_counter()
    threshold = config.solver.inlier_threshold_px * work_cam.height / REFERENCE_HEIGHT
    result = solve_pnp(pixels, coords, work_cam, replace(config.solver, inlier_threshold_px=threshold))
    t2 = time.perf_counter()
    return PoseEstimate(name=name, cam_from_world=result.cam_from_world, num_inliers=result.num_inliers,
                        inlier_ratio=result.inlier_ratio,
                        details={"time_ms": (t2 - t0) * 1e3, "network_ms": (t1 - t0) * 1e3,
                                 "solver_ms": (t2 - t1) * 1e3, "iterations": result.iterations,
                                 "n_correspondences": len(pixels)})


def localize_scene(scene_map: SceneMap, scene: Scene, config: LocalizeConfig, device: torch.device,
                   show_progress: bool = True) -> list[PoseEstimate]:
    """Localize every frame of `scene` (poses, if any, are ignored here; `evaluate` compares them)."""
    estimates = []
    with make_progress(show_progress) as progress:
        task = progress.add_task("localizing", total=len(scene.frames), info="")
        for frame in scene.frames:
            estimates.append(localize_image(scene_map, frame.name, frame.load_rgb(), frame.camera, config, device))
            ms = np.median([e.details["time_ms"] for e in estimates])
            progress.update(task, advance=1, info=f"{1000 / ms:.1f} img/s")
    return estimates
