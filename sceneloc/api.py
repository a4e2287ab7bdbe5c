"""The Python API: what `import sceneloc` offers a script (the `sceneloc` command is a thin layer over the same).

    import sceneloc
    scene = sceneloc.read_scene("office/")                        # posed RGB (+ depth): ACE, 7-Scenes, COLMAP, NeRF
    scene_map = sceneloc.map_scene(scene, sceneloc.MappingConfig(iterations=3000))
    scene_map.save("office.map")
    localizer = sceneloc.Localizer(sceneloc.load_map("office.map"))
    estimate = localizer.localize(rgb, camera)                    # (H, W, 3) uint8, sceneloc.Camera -> PoseEstimate
    estimate.cam_from_world                                       # Rigid3, or None when it failed

Each function takes the option object of its stage (MappingConfig, LocalizeConfig) and a device name
("auto" | "cpu" | "cuda"); errors in the inputs raise sceneloc.InputError with a one-line message.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from sceneloc.data import Scene
from sceneloc.runtime.device import resolve_device
from sceneloc.runtime.errors import InputError
from sceneloc.geometry import Camera
from sceneloc.localize.estimate import PoseEstimate
from sceneloc.localize.hybrid import HybridPredictor
from sceneloc.localize.landmarks import LandmarkPredictor
from sceneloc.localize.loop import (LocalizeConfig, Predictor, SceneMapPredictor, localize_rgb,
                                    localize_with_progress)
from sceneloc.localize.multi_scene import MultiScenePredictor
from sceneloc.localize.structure import StructureMapPredictor
from sceneloc.maps.files import read_map_metadata
from sceneloc.mapping import MappingConfig, build_scene_map
from sceneloc.maps.hybrid_map import FORMAT as HYBRID_FORMAT, HybridMap
from sceneloc.maps.landmark_map import FORMAT as LANDMARK_FORMAT, LandmarkMap
from sceneloc.maps.scene_map import SceneMap
from sceneloc.maps.multi_scene_map import FORMAT as MULTI_FORMAT, MultiSceneMap
from sceneloc.maps.structure_map import FORMAT as STRUCTURE_FORMAT, StructureMap

AnyMap = SceneMap | MultiSceneMap | StructureMap | HybridMap | LandmarkMap


def map_scene(scene: Scene, config: MappingConfig | None = None, device: str = "auto",
              show_progress: bool = False) -> SceneMap:
    """Map a posed scene with `config` (default: MappingConfig()). What happened during training (steps, times,
    final fit, the precision that ran) is in the map's metadata["training"]."""
    scene_map, _ = build_scene_map(scene, config or MappingConfig(), resolve_device(device), show_progress)
    return scene_map


def load_map(path: str | Path, device: str = "auto") -> AnyMap:
    """A map file of any kind: a single-scene SceneMap, a multi-scene MultiSceneMap, a StructureMap (numpy, on
    the CPU whatever the device), a HybridMap (its head on the device) or a LandmarkMap."""
    dev = resolve_device(device)
    map_format = read_map_metadata(path).get("format")
    if map_format == MULTI_FORMAT:
        return MultiSceneMap.load(path, dev)
    if map_format == STRUCTURE_FORMAT:
        return StructureMap.load(path)
    if map_format == HYBRID_FORMAT:
        return HybridMap.load(path, dev)
    if map_format == LANDMARK_FORMAT:
        return LandmarkMap.load(path, dev)
    return SceneMap.load(path, dev)


def predictor_for(scene_map: AnyMap, config: LocalizeConfig, scene: str | None = None) -> Predictor:
    """What the one localize loop needs of a map of any kind (sceneloc.localize.loop.Predictor); `scene`: for a
    multi-scene map, the scene the images show or "auto"."""
    if isinstance(scene_map, HybridMap):
        return HybridPredictor(scene_map, config)
    if isinstance(scene_map, StructureMap):
        return StructureMapPredictor(scene_map, config)
    if isinstance(scene_map, LandmarkMap):
        return LandmarkPredictor(scene_map, config)
    if isinstance(scene_map, MultiSceneMap):
        return MultiScenePredictor(scene_map, scene, config)
    return SceneMapPredictor(scene_map, config.precision)


def map_device(scene_map: AnyMap) -> torch.device:
    """The device a map's network is on (the CPU for structure maps, which have none)."""
    if isinstance(scene_map, StructureMap):
        return torch.device("cpu")
    head = scene_map.scene_map.head if isinstance(scene_map, HybridMap) else scene_map.head
    return next(head.parameters()).device


class Localizer:
    """Localizes images against one map, on the device the map was loaded to (load_map's device). For a multi-scene
    map, `scene` names the scene the images show, or "auto" to identify it per image."""

    def __init__(self, scene_map: AnyMap, config: LocalizeConfig | None = None, scene: str | None = None):
        self.map = scene_map
        self.device = map_device(scene_map)
        self.config = config or LocalizeConfig()
        multi = isinstance(scene_map, MultiSceneMap)
        if multi and scene is None:
            raise InputError(None, "a multi-scene map: give scene=NAME or scene='auto'")
        if not multi and scene is not None:
            raise InputError(None, "scene= needs a multi-scene map")
        self.scene = scene
        # Kept across images: SIFT extractors, retrieval weights, the point tree (InputError for an unknown scene).
        self.predictor = predictor_for(scene_map, self.config, scene)

    def localize(self, rgb: np.ndarray, camera: Camera, name: str = "query") -> PoseEstimate:
        """rgb: (H, W, 3) uint8 image taken with `camera` (pixels of that image) -> PoseEstimate, its
        cam_from_world None when the solver found no pose."""
        rgb = np.asarray(rgb)
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise InputError(None, f"{name}: expected an (H, W, 3) uint8 RGB image, got {rgb.dtype} {rgb.shape}")
        if (rgb.shape[1], rgb.shape[0]) != (camera.width, camera.height):
            raise InputError(None, f"{name}: image is {rgb.shape[1]}x{rgb.shape[0]} but the camera is "
                                   f"{camera.width}x{camera.height}")
        with torch.no_grad():
            return localize_rgb(self.predictor, name, rgb, camera, self.config, self.device)

    def localize_scene(self, scene: Scene, show_progress: bool = False) -> list[PoseEstimate]:
        """Every frame of `scene` (its poses, if any, are not used), through the pipelined loop."""
        with torch.no_grad():
            return localize_with_progress(self.predictor, scene, self.config, self.device, show_progress,
                                          "localizing" + (f" in {self.scene}" if self.scene else ""))
