"""sceneloc: learn a scene from posed RGB images, then relocalize new images (scene coordinate regression).

`import sceneloc` is cheap: the public names below load their modules (and torch) on first use, so that tools which
only need a submodule (the benchmark's child processes) do not pay for the rest. See sceneloc/api.py for an example.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_PUBLIC = {
    "read_scene": "sceneloc.data",
    "Scene": "sceneloc.data",
    "Frame": "sceneloc.data",
    "Camera": "sceneloc.geometry",
    "Rigid3": "sceneloc.geometry",
    "MappingConfig": "sceneloc.mapping",
    "LocalizeConfig": "sceneloc.localize.loop",
    "PoseEstimate": "sceneloc.localize.estimate",
    "SceneMap": "sceneloc.maps.scene_map",
    "MultiSceneMap": "sceneloc.maps.multi_scene_map",
    "StructureMap": "sceneloc.maps.structure_map",
    "HybridMap": "sceneloc.maps.hybrid_map",
    "LandmarkMap": "sceneloc.maps.landmark_map",
    "map_scene": "sceneloc.api",
    "load_map": "sceneloc.api",
    "Localizer": "sceneloc.api",
    "evaluate_poses": "sceneloc.evaluate",
    "read_poses": "sceneloc.export.poses",
    "write_poses": "sceneloc.export.poses",
    "InputError": "sceneloc.runtime.errors",
}
"""Public name -> the module that defines it."""

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str):
    if name in _PUBLIC:
        value = getattr(importlib.import_module(_PUBLIC[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'sceneloc' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
