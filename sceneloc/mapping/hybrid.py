"""Building a HybridMap (`sceneloc map --type hybrid`): the scene-coordinate map (mapping.trainer) and the
compressed structure map (mapping.structure.build) of one scene, each built by its own builder with its own
config, combined in one file (maps/hybrid_map.py)."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import torch

from sceneloc.data import Scene
from sceneloc.mapping.config import MappingConfig
from sceneloc.mapping.structure.build import StructureMapConfig, build_structure_map
from sceneloc.mapping.trainer import build_scene_map
from sceneloc.maps.hybrid_map import HybridMap
from sceneloc.maps.scene_map import SceneMap


@dataclass
class HybridMapConfig:
    """How a hybrid map is built: the settings of each part (`--set scr.iterations=...`,
    `--set structure.budget_fraction=...`)."""

    scr: MappingConfig = field(default_factory=MappingConfig)
    """The scene-coordinate map (its head guides the matching and localizes where the points cannot)."""
    structure: StructureMapConfig = field(default_factory=StructureMapConfig)
    """The compressed points the guided matching refines with: a structure map's defaults (docs/BENCHMARKS.md
    section 13 compares budgets and harder-quantised codes)."""

    def to_dict(self) -> dict:
        return {"scr": self.scr.to_dict(), "structure": asdict(self.structure)}

    def validate(self) -> None:
        """ValueError or InputError for a setting out of its range (each part's own checks)."""
        self.scr.validate()
        self.structure.validate()


def build_hybrid_map(scene: Scene, config: HybridMapConfig, device: torch.device, show_progress: bool = True,
                     scene_map: SceneMap | None = None) -> HybridMap:
    """Map a posed scene into a HybridMap; `scene_map`: a scene-coordinate map of this scene made with config.scr
    already (e.g. the benchmark's scr map), used instead of training the head again. Raises InputError as the
    structure builder does (a scene without poses or triangulated points)."""
    build = {}
    if scene_map is None:
        t0 = time.perf_counter()
        scene_map, _ = build_scene_map(scene, config.scr, device, show_progress)
        build["scr_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    structure_map = build_structure_map(scene, config.structure, show_progress)
    build["structure_s"] = time.perf_counter() - t0
    build["structure"] = structure_map.metadata["build"]
    return HybridMap.combine(scene_map, structure_map, build)
