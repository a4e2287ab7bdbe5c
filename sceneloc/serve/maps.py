"""The maps a server holds: each loaded once (read-only from then on), named by its file's stem, with what the
viewer draws of it (a point cloud) and what GET /v1/maps says of it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sceneloc.api import AnyMap, load_map
from sceneloc.export.points import PointCloud, landmark_points, ply_bytes, read_ply, structure_points
from sceneloc.maps.hybrid_map import HybridMap
from sceneloc.maps.landmark_map import LandmarkMap
from sceneloc.maps.multi_scene_map import MultiSceneMap
from sceneloc.maps.structure_map import StructureMap
from sceneloc.runtime.errors import InputError


@dataclass(eq=False)
class ServedMap:
    """One map of the server."""

    name: str
    """The map file's stem (office.map -> office): the {name} of its routes."""
    path: Path
    map: AnyMap
    cloud: PointCloud
    """What the viewer draws: a structure or hybrid map's own points, a landmark map's landmarks; for
    scene-coordinate maps the PLY beside the map file with its stem (office.ply, from `sceneloc export points`),
    when there is one; else no points. At most viewer_points of them (a fixed random subset of a larger cloud)."""
    cloud_ply: bytes
    """The cloud as PLY bytes, as GET /v1/maps/{name}/points.ply sends it."""

    @property
    def kind(self) -> str:
        """scene | multi-scene | structure | hybrid | landmarks."""
        if isinstance(self.map, MultiSceneMap):
            return "multi-scene"
        if isinstance(self.map, StructureMap):
            return "structure"
        if isinstance(self.map, LandmarkMap):
            return "landmarks"
        return "hybrid" if isinstance(self.map, HybridMap) else "scene"

    @property
    def scenes(self) -> list[str] | None:
        """The scene names of a multi-scene map; None for the other kinds."""
        return list(self.map.scene_names) if isinstance(self.map, MultiSceneMap) else None

    def summary(self) -> dict:
        return {"name": self.name, "type": self.kind, "scenes": self.scenes, "points": len(self.cloud.xyz)}


def load_served_maps(paths: list[Path], device: str, viewer_points: int) -> dict[str, ServedMap]:
    """Map files -> {name: ServedMap}, in the order given, their viewer clouds cut to viewer_points. InputError for
    a file any map reader refuses and for two files with one stem (their routes would collide)."""
    served: dict[str, ServedMap] = {}
    for path in paths:
        path = Path(path)
        name = path.stem
        if name in served:
            raise InputError(path, f"two maps named {name!r} (here and {served[name].path}): a map is named by its "
                                   f"file's stem, rename one")
        if not name or not all(c.isalnum() or c in "-_." for c in name):
            raise InputError(path, "a map's name (its file's stem) may hold letters, digits, '-', '_' and '.' only")
        scene_map = load_map(path, device)
        cloud = _subset(_viewer_cloud(path, scene_map), viewer_points)
        served[name] = ServedMap(name, path, scene_map, cloud, ply_bytes(cloud))
    return served


def _viewer_cloud(path: Path, scene_map: AnyMap) -> PointCloud:
    if isinstance(scene_map, StructureMap):
        return structure_points(scene_map)
    if isinstance(scene_map, HybridMap):
        return structure_points(scene_map.structure_map)
    if isinstance(scene_map, LandmarkMap):
        return landmark_points(scene_map)
    beside = path.with_suffix(".ply")
    if beside.is_file():
        return read_ply(beside)
    return PointCloud(np.zeros((0, 3), np.float32), np.zeros((0, 3), np.uint8))


def _subset(cloud: PointCloud, max_points: int) -> PointCloud:
    """At most max_points of the cloud: a fixed random subset (seed 0), in the cloud's order."""
    if len(cloud.xyz) <= max_points:
        return cloud
    keep = np.sort(np.random.default_rng(0).choice(len(cloud.xyz), max_points, replace=False))
    return PointCloud(cloud.xyz[keep], cloud.rgb[keep])
