"""HybridMap ("sceneloc-hybrid-map"): one file holding a scene-coordinate map and a compressed structure map of the
same scene (localize/hybrid.py uses the head's coordinates to guide 2D-3D matching against the points).

The file is the two maps' own contents side by side: the SceneMap's tensors under SCR_PREFIX, the StructureMap's
under STRUCTURE_PREFIX, and their metadata as the entries "scr" and "structure" of the hybrid's. Each part is read
and checked by its own map type, so the hybrid inherits every check (encoder version, tensor shapes, codec)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import load_file, save_file

from sceneloc import __version__
from sceneloc.maps.files import load_map_file, metadata_field, save_map_file
from sceneloc.maps.scene_map import SceneMap
from sceneloc.maps.structure_map import StructureMap

FORMAT = "sceneloc-hybrid-map"
FORMAT_VERSION = 1
SCR_PREFIX = "scr."
"""Tensor-name prefix of the scene-coordinate map's tensors."""
STRUCTURE_PREFIX = "structure."
"""Tensor-name prefix of the structure map's tensors."""


@dataclass
class HybridMap:
    """metadata: format, format_version, sceneloc_version, scene {name, n_frames}, build (seconds of each part);
    the parts' own metadata live in scene_map.metadata and structure_map.metadata (file entries "scr",
    "structure")."""

    scene_map: SceneMap
    structure_map: StructureMap
    metadata: dict

    @staticmethod
    def combine(scene_map: SceneMap, structure_map: StructureMap, build: dict | None = None) -> "HybridMap":
        """The hybrid of two maps of one scene, with its metadata."""
        return HybridMap(scene_map, structure_map,
                         {"format": FORMAT, "format_version": FORMAT_VERSION, "sceneloc_version": __version__,
                          "scene": structure_map.metadata.get("scene", {}), "build": build or {}})

    def save(self, path: str | Path) -> None:
        """One safetensors file (numpy: the head's float16 weights as they are), written atomically."""
        scr_tensors, scr_meta = self.scene_map.file_contents()
        structure_tensors, structure_meta = self.structure_map.file_contents()
        tensors = {SCR_PREFIX + k: v.numpy() for k, v in scr_tensors.items()}
        tensors.update({STRUCTURE_PREFIX + k: v for k, v in structure_tensors.items()})
        save_map_file(path, tensors, {**self.metadata, "scr": scr_meta, "structure": structure_meta}, save_file)

    @staticmethod
    def load(path: str | Path, device: torch.device = torch.device("cpu")) -> "HybridMap":
        """The head on `device`, the points on the CPU. InputError for a missing, truncated or foreign file, an
        unknown format version, or either part failing its own map type's checks."""
        tensors, meta = load_map_file(path, "sceneloc", FORMAT, FORMAT_VERSION, load_file)
        scr_meta = metadata_field(path, meta, "scr", dict)
        structure_meta = metadata_field(path, meta, "structure", dict)
        scr = {k[len(SCR_PREFIX):]: torch.from_numpy(np.ascontiguousarray(v))
               for k, v in tensors.items() if k.startswith(SCR_PREFIX)}
        structure = {k[len(STRUCTURE_PREFIX):]: v for k, v in tensors.items() if k.startswith(STRUCTURE_PREFIX)}
        scene_map = SceneMap.from_contents(path, scr, scr_meta, device)
        structure_map = StructureMap.from_contents(path, structure, structure_meta)
        own = {k: v for k, v in meta.items() if k not in ("scr", "structure")}
        return HybridMap(scene_map, structure_map, own)
