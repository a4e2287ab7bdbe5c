"""Localization: image + Camera -> PoseEstimate with a SceneMap (encode, regress scene coordinates, keep the likely
keypoints when the map has a keypoint network, RANSAC-PnP)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from sceneloc.data import Scene
from sceneloc.device import autocast
from sceneloc.geometry import Camera, Rigid3
from sceneloc.mapping.augment import prepare_image
from sceneloc.mapping.buffer import cell_centres
from sceneloc.maps import SceneMap
from sceneloc.progress import make_progress
from sceneloc.nn.encoders import load_encoder
from sceneloc.solve import PnPResult, SolverConfig, solve_pnp

REFERENCE_HEIGHT = 480
"""Image height at which SolverConfig.inlier_threshold_px is expressed."""


@dataclass
class PoseEstimate:
    """The localisation result of one query image; cam_from_world is None when it failed. The poses file writers
    (sceneloc/export) store it; evaluate compares it with ground truth."""

    name: str
    cam_from_world: Rigid3 | None
    num_inliers: int = 0
    inlier_ratio: float = 0.0
    details: dict = field(default_factory=dict)
    """Free per-image extras (time_ms, iterations, ...); must be JSON-serialisable (numpy scalars/arrays are
    converted)."""


@dataclass
class LocalizeConfig:
    """Query-time settings."""

    solver: SolverConfig = field(default_factory=lambda: SolverConfig(inlier_threshold_px=20.0))
    """RANSAC-PnP settings. Its inlier threshold is given for a 480-pixel-high image and scaled to the working image
    (the map's image height), so one setting means the same angular tolerance at every resolution. 20 px rather
    than ACE's 10: on our maps it keeps recall at (5 cm, 5 deg), raises it at (10 cm, 5 deg) and halves RANSAC time
    (docs/BENCHMARKS.md); --threshold 10 trades that for slightly better recall at (2 cm, 2 deg)."""
    use_keypoints: bool = True
    """When the map has a keypoint network, give RANSAC only the correspondences it ranks as most likely keypoints."""
    keypoint_top_fraction: float = 0.5
    """Fraction of an image's correspondences kept, those of highest keypoint probability (a rank, not a
    probability threshold, so it works whatever the classifier's calibration)."""
    precision: str = "auto"
    """Numeric precision of the encoder and head: "auto" (bfloat16 on CPUs with AMX/AVX512-BF16, float16 on
    CUDA, else float32), "bf16" or "fp32" (sceneloc.device)."""


@dataclass
class Prediction:
    """The network's output for one image, in the working image (resized to the map's image height)."""

    pixels: np.ndarray
    """(N, 2) float64 cell-centre pixels."""
    coords: np.ndarray
    """(N, 3) float64 world scene coordinates."""
    camera: Camera
    """The working image's camera."""
    keypoint_prob: np.ndarray | None
    """(N,) float32 keypoint probabilities, None when the map has no keypoint network."""


@torch.no_grad()
def encode_query(encoder_name: str, image_height: int, rgb: np.ndarray, camera: Camera,
                 device: torch.device, precision: str = "auto") -> tuple[torch.Tensor, np.ndarray, Camera]:
    """rgb: (H, W, 3) uint8 of `camera` -> (features (N, C) on device, cell-centre pixels (N, 2) float64 in the
    working image (resized to image_height), working camera), keeping the cells whose centre lies inside the
    image. Runs under autocast(device, precision): the features may be bfloat16/float16."""
    image, work_cam = prepare_image(rgb, camera, image_height)
    tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].to(device)
    with autocast(device, precision):
        fmap = load_encoder(encoder_name).to(device)(tensor)[0]
    pixels = cell_centres(image.shape[0], image.shape[1])
    inside = (pixels[:, 0] < image.shape[1]) & (pixels[:, 1] < image.shape[0])
    features = fmap.reshape(fmap.shape[0], -1).T[torch.from_numpy(inside).to(device)]
    return features, pixels[inside].astype(np.float64), work_cam


@torch.no_grad()
def predict_scene_coordinates(scene_map: SceneMap, rgb: np.ndarray, camera: Camera,
                              device: torch.device, precision: str = "auto") -> Prediction:
    """rgb: (H, W, 3) uint8 of `camera` -> Prediction for every stride-8 cell of the working image."""
    features, pixels, work_cam = encode_query(scene_map.encoder_name, scene_map.image_height, rgb, camera, device,
                                              precision)
    with autocast(device, precision):
        coords = scene_map.head(features)
        prob = None if scene_map.keypoint_net is None else scene_map.keypoint_net.probabilities(features)
    return Prediction(pixels, coords.float().cpu().numpy().astype(np.float64), work_cam,
                      None if prob is None else prob.float().cpu().numpy())


def solve_image(pixels: np.ndarray, coords: np.ndarray, work_cam: Camera, config: LocalizeConfig) -> PnPResult:
    """RANSAC-PnP of (N, 2) working-image pixels and (N, 3) scene coordinates, with config's inlier threshold
    scaled from REFERENCE_HEIGHT to the working image."""
    threshold = config.solver.inlier_threshold_px * work_cam.height / REFERENCE_HEIGHT
    return solve_pnp(pixels, coords, work_cam, replace(config.solver, inlier_threshold_px=threshold))


def most_probable(prob: np.ndarray, fraction: float, minimum: int = 4) -> np.ndarray:
    """prob (N,) -> indices of the `fraction` of entries with the highest values (at least `minimum`, at most N), in
    descending order (ties in index order)."""
    count = min(len(prob), max(minimum, int(round(len(prob) * fraction))))
    return np.argsort(-prob, kind="stable")[:count]


def select_keypoints(prediction: Prediction, config: LocalizeConfig) -> np.ndarray:
    """Indices of the correspondences RANSAC gets: all of them without keypoint probabilities (or with
    use_keypoints off), else the keypoint_top_fraction of highest probability (at least 4), in probability order."""
    if prediction.keypoint_prob is None or not config.use_keypoints:
        return np.arange(len(prediction.pixels))
    return most_probable(prediction.keypoint_prob, config.keypoint_top_fraction)


def localize_image(scene_map: SceneMap, name: str, rgb: np.ndarray, camera: Camera, config: LocalizeConfig,
                   device: torch.device) -> PoseEstimate:
    """One image -> PoseEstimate (cam_from_world None when the solver fails). details: time_ms, network_ms,
    solver_ms, iterations, n_correspondences (given to RANSAC), n_cells (predicted)."""
    t0 = time.perf_counter()
    prediction = predict_scene_coordinates(scene_map, rgb, camera, device, config.precision)
    keep = select_keypoints(prediction, config)
    t1 = time.perf_counter()
    result = solve_image(prediction.pixels[keep], prediction.coords[keep], prediction.camera, config)
    t2 = time.perf_counter()
    return PoseEstimate(name=name, cam_from_world=result.cam_from_world, num_inliers=result.num_inliers,
                        inlier_ratio=result.inlier_ratio,
                        details={"time_ms": (t2 - t0) * 1e3, "network_ms": (t1 - t0) * 1e3,
                                 "solver_ms": (t2 - t1) * 1e3, "iterations": result.iterations,
                                 "n_correspondences": len(keep), "n_cells": len(prediction.pixels)})


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
