"""Localization with a MultiSceneMap: the loop of sceneloc.localize.loop with the SCINR head's predictor, whose scene
input is the named scene's index, or with "auto" the scene identified from the image's features.

"auto" (scene identification): a map with scene descriptors (sceneloc.maps.multi_scene_map.SceneDescriptors) ranks
its scenes by retrieval of the image's global descriptor (sceneloc.encode.vlad_descriptor) and RANSAC runs on the first
scene only, or on the first LocalizeConfig.auto_max_scenes when their similarities lie within auto_margin of each other;
the pose with the most inliers wins. A map without descriptors (written before they existed) tries every scene."""

from __future__ import annotations

import time

import numpy as np
import torch

from sceneloc.data import Scene
from sceneloc.encode import EncodedImage
from sceneloc.geometry import Camera
from sceneloc.localize.estimate import PoseEstimate
from sceneloc.localize.loop import (CellPredictor, LocalizeConfig, Prediction, head_coordinates, localize_rgb,
                                   localize_with_progress)
from sceneloc.maps.multi_scene_map import MultiSceneMap
from sceneloc.solve import PnPResult

AUTO = "auto"
"""The scene name that asks for scene identification."""


def predict_multi_scene_coordinates(multi_map: MultiSceneMap, features: torch.Tensor, pixels: np.ndarray,
                                    camera: Camera, scene_index: int, precision: str = "auto") -> np.ndarray:
    """Scene coordinates (N, 3) float64 of feature rows (N, C) at `pixels` (N, 2) of the image `camera` describes,
    regressed with the embedding of scene `scene_index`."""
    return head_coordinates(multi_map.head, EncodedImage(features, pixels, camera), scene_index, precision)[0]


class MultiScenePredictor(CellPredictor):
    """The SCINR head of a MultiSceneMap with a scene index as its scene input: that of scene `scene_name`, or
    with "auto" the scenes retrieval ranks first (every scene for a map without descriptors)."""

    def __init__(self, multi_map: MultiSceneMap, scene_name: str, config: LocalizeConfig):
        self.map = multi_map
        self.encoder_name = multi_map.encoder_name
        self.image_height = multi_map.image_height
        self.auto = scene_name == AUTO
        self.named = None if self.auto else multi_map.scene_index(scene_name)  # InputError for an unknown scene
        self.config = config

    def candidates(self, encoded: EncodedImage) -> tuple[list[int], dict]:
        if not self.auto:
            return [self.named], {}
        descriptors = self.map.descriptors
        if descriptors is None:
            return list(range(len(self.map.scene_names))), {"identification": "every scene"}
        t0 = time.perf_counter()
        scores = descriptors.scene_scores(encoded.features)
        order = np.argsort(-scores, kind="stable")
        chosen = [int(order[0])]
        for i in order[1:max(1, self.config.auto_max_scenes)]:
            if scores[order[0]] - scores[i] < self.config.auto_margin:
                chosen.append(int(i))
        names = self.map.scene_names
        return chosen, {"identification": "retrieval", "identify_ms": (time.perf_counter() - t0) * 1e3,
                        "retrieved_scene": names[chosen[0]],
                        "retrieval_scores": {names[i]: round(float(s), 4) for i, s in enumerate(scores)}}

    def predict(self, encoded: EncodedImage, scene: int) -> Prediction:
        coords, _ = head_coordinates(self.map.head, encoded, scene, self.config.precision)
        return Prediction(encoded.pixels, coords, encoded.camera, None)

    def finish(self, details: dict, scenes: list[int], results: list[PnPResult], best: int) -> None:
        names = self.map.scene_names
        details["scene"] = names[scenes[best]]
        if self.auto:
            if results[best].cam_from_world is None:
                details["scene"] = None
            scores = {name: 0 for name in names}
            scores.update({names[s]: r.num_inliers for s, r in zip(scenes, results)})
            details["scene_scores"] = scores
            details["scenes_tried"] = [names[s] for s in scenes]


def localize_multi_image(multi_map: MultiSceneMap, name: str, rgb: np.ndarray, camera: Camera, scene_name: str,
                         config: LocalizeConfig, device: torch.device) -> PoseEstimate:
    """One image -> PoseEstimate (cam_from_world None when the solver fails). scene_name: a scene of the map, or
    "auto" to identify it (module docstring).

    details: as sceneloc.localize.loop.localize_image, and scene (the scene used; with "auto", the identified one, None
    when no scene tried gave a pose); with "auto" also scene_scores {scene name: inliers; 0 for scenes not tried},
    scenes_tried, identification ("retrieval" or "every scene") and with retrieval retrieved_scene (ranked first),
    retrieval_scores {scene name: similarity}, identify_ms."""
    return localize_rgb(MultiScenePredictor(multi_map, scene_name, config), name, rgb, camera, config, device)


def localize_multi_scene(multi_map: MultiSceneMap, scene: Scene, scene_name: str, config: LocalizeConfig,
                         device: torch.device, show_progress: bool = True) -> list[PoseEstimate]:
    """Localize every frame of `scene` in the map's scene `scene_name`, or "auto" to identify the scene per image
    (poses of `scene`, if any, are ignored here), through the pipelined loop (sceneloc.localize.loop.localize_frames).
    Raises InputError for a scene the map does not hold."""
    predictor = MultiScenePredictor(multi_map, scene_name, config)
    return localize_with_progress(predictor, scene, config, device, show_progress, f"localizing in {scene_name}")


def identification_accuracy(estimates: list[PoseEstimate], true_scene: str) -> float:
    """Fraction of estimates whose details["scene"] is `true_scene` (NaN for no estimates)."""
    if not estimates:
        return float("nan")
    return sum(e.details.get("scene") == true_scene for e in estimates) / len(estimates)
