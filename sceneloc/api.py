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
from sceneloc.localize.loop import LocalizeConfig, localize_image, localize_scene
from sceneloc.localize.multi_scene import AUTO, localize_multi_image, localize_multi_scene
from sceneloc.localize.structure import StructureMapPredictor, localize_structure_image, localize_structure_scene
from sceneloc.maps.files import read_map_metadata
from sceneloc.mapping import MappingConfig, build_scene_map
from sceneloc.maps.scene_map import SceneMap
from sceneloc.maps.multi_scene_map import FORMAT as MULTI_FORMAT, MultiSceneMap
from sceneloc.maps.structure_map import FORMAT as STRUCTURE_FORMAT, StructureMap

AnyMap = SceneMap | MultiSceneMap | StructureMap


def map_scene(scene: Scene, config: MappingConfig | None = None, device: str = "auto",
              show_progress: bool = False) -> SceneMap:
    """Map a posed scene with `config` (default: MappingConfig()). What happened during training (steps, times,
    final fit, the precision that ran) is in the map's metadata["training"]."""
    scene_map, _ = build_scene_map(scene, config or MappingConfig(), resolve_device(device), show_progress)
    return scene_map


def load_map(path: str | Path, device: str = "auto") -> AnyMap:
    """A map file of any kind: a single-scene SceneMap, a multi-scene MultiSceneMap or a StructureMap (numpy, on
    the CPU whatever the device)."""
    dev = resolve_device(device)
    map_format = read_map_metadata(path).get("format")
    if map_format == MULTI_FORMAT:
        return MultiSceneMap.load(path, dev)
    if map_format == STRUCTURE_FORMAT:
        return StructureMap.load(path)
    return SceneMap.load(path, dev)


class Localizer:
    """Localizes images against one map, on the device the map was loaded to (load_map's device). For a multi-scene
    map, `scene` names the scene the images show, or "auto" to identify it per image."""

    def __init__(self, scene_map: AnyMap, config: LocalizeConfig | None = None, scene: str | None = None):
        self.map = scene_map
        self.structure = isinstance(scene_map, StructureMap)
        self.device = torch.device("cpu") if self.structure else next(scene_map.head.parameters()).device
        self.config = config or LocalizeConfig()
        self._structure_predictor = StructureMapPredictor(scene_map, self.config) if self.structure else None
        self.multi = isinstance(scene_map, MultiSceneMap)
        if self.multi and scene is None:
            raise InputError(None, "a multi-scene map: give scene=NAME or scene='auto'")
        if not self.multi and scene is not None:
            raise InputError(None, "scene= needs a multi-scene map")
        if self.multi and scene != AUTO:
            scene_map.scene_index(scene)  # InputError for a scene the map does not hold
        self.scene = scene

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
            if self.structure:
                return localize_structure_image(self._structure_predictor, name, rgb, camera, self.config)
            if self.multi:
                return localize_multi_image(self.map, name, rgb, camera, self.scene, self.config, self.device)
            return localize_image(self.map, name, rgb, camera, self.config, self.device)

    def localize_scene(self, scene: Scene, show_progress: bool = False) -> list[PoseEstimate]:
        """Every frame of `scene` (its poses, if any, are not used)."""
        if self.structure:
            return localize_structure_scene(self.map, scene, self.config, show_progress)
        if self.multi:
            return localize_multi_scene(self.map, scene, self.scene, self.config, self.device, show_progress)
        return localize_scene(self.map, scene, self.config, self.device, show_progress)
