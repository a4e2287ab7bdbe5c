"""Localization with a MultiSceneMap: encode the query once, regress scene coordinates with the named scene's
embedding (or with every embedding, keeping the scene whose pose has the most inliers), RANSAC-PnP."""

from __future__ import annotations

import time

import numpy as np
import torch

from sceneloc.data import Scene
from sceneloc.device import autocast
from sceneloc.geometry import Camera
from sceneloc.localize import LocalizeConfig, PoseEstimate, encode_query, solve_image
from sceneloc.multi_maps import MultiSceneMap
from sceneloc.nn.heads.scinr import normalised_positions
from sceneloc.progress import make_progress

AUTO = "auto"
"""The scene name that asks for scene identification."""


@torch.no_grad()
def predict_multi_scene_coordinates(multi_map: MultiSceneMap, features: torch.Tensor, pixels: np.ndarray,
                                    camera: Camera, scene_index: int, precision: str = "auto") -> np.ndarray:
    """Scene coordinates (N, 3) float64 of feature rows (N, C) at `pixels` (N, 2) of the image `camera` describes,
    regressed with the embedding of scene `scene_index`."""
    device = features.device
    positions = normalised_positions(pixels, camera.K).to(device)
    scene = torch.full((len(features),), scene_index, dtype=torch.int64, device=device)
    with autocast(device, precision):
        coords = multi_map.head(features, positions, scene)
    return coords.float().cpu().numpy().astype(np.float64)


def localize_multi_image(multi_map: MultiSceneMap, name: str, rgb: np.ndarray, camera: Camera, scene_name: str,
                         config: LocalizeConfig, device: torch.device) -> PoseEstimate:
    """One image -> PoseEstimate (cam_from_world None when the solver fails). scene_name: a scene of the map, or
    "auto" to try every scene's embedding and keep the pose with the most inliers.

    details: time_ms, network_ms, solver_ms, iterations, n_correspondences, scene (the scene used; with "auto",
    the identified one, None when no scene gave a pose) and, with "auto", scene_scores {scene name: inliers}."""
    candidates = range(len(multi_map.scene_names)) if scene_name == AUTO else [multi_map.scene_index(scene_name)]
    t0 = time.perf_counter()
    features, pixels, work_cam = encode_query(multi_map.encoder_name, multi_map.image_height, rgb, camera, device,
                                              config.precision)
    network_s = time.perf_counter() - t0
    solver_s, results = 0.0, []
    for index in candidates:
        t1 = time.perf_counter()
        coords = predict_multi_scene_coordinates(multi_map, features, pixels, work_cam, index, config.precision)
        t2 = time.perf_counter()
        results.append(solve_image(pixels, coords, work_cam, config))
        network_s, solver_s = network_s + t2 - t1, solver_s + time.perf_counter() - t2
    best = max(range(len(results)), key=lambda i: results[i].num_inliers if results[i].cam_from_world else -1)
    result = results[best]
    details = {"time_ms": (network_s + solver_s) * 1e3, "network_ms": network_s * 1e3, "solver_ms": solver_s * 1e3,
               "iterations": result.iterations, "n_correspondences": len(pixels),
               "scene": multi_map.scene_names[candidates[best]]}
    if scene_name == AUTO:
        if result.cam_from_world is None:
            details["scene"] = None
        details["scene_scores"] = {multi_map.scene_names[i]: r.num_inliers for i, r in zip(candidates, results)}
    return PoseEstimate(name=name, cam_from_world=result.cam_from_world, num_inliers=result.num_inliers,
                        inlier_ratio=result.inlier_ratio, details=details)


def localize_multi_scene(multi_map: MultiSceneMap, scene: Scene, scene_name: str, config: LocalizeConfig,
                         device: torch.device, show_progress: bool = True) -> list[PoseEstimate]:
    """Localize every frame of `scene` in the map's scene `scene_name`, or "auto" to identify the scene per image
    (poses of `scene`, if any, are ignored here). Raises InputError for a scene the map does not hold."""
    if scene_name != AUTO:
        multi_map.scene_index(scene_name)
    estimates = []
    with make_progress(show_progress) as progress:
        task = progress.add_task(f"localizing in {scene_name}", total=len(scene.frames), info="")
        for frame in scene.frames:
            estimates.append(localize_multi_image(multi_map, frame.name, frame.load_rgb(), frame.camera, scene_name,
                                                  config, device))
            ms = np.median([e.details["time_ms"] for e in estimates])
            progress.update(task, advance=1, info=f"{1000 / ms:.1f} img/s")
    return estimates


def identification_accuracy(estimates: list[PoseEstimate], true_scene: str) -> float:
    """Fraction of estimates whose details["scene"] is `true_scene` (NaN for no estimates)."""
    if not estimates:
        return float("nan")
    return sum(e.details.get("scene") == true_scene for e in estimates) / len(estimates)
