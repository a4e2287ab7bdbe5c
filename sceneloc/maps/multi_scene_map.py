"""MultiSceneMap: one SCINR head for many scenes in one file (the shared network once, one embedding per scene),
saved atomically through sceneloc.maps.files and loaded without pickle."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from sceneloc import __version__
from sceneloc.encode import vlad_descriptor
from sceneloc.runtime.errors import InputError
from sceneloc.maps.files import config_from_metadata, load_map_file, metadata_field, save_map_file
from sceneloc.maps.scene_map import checked_image_height, installed_encoder
from sceneloc.nn.encoders import Encoder, load_encoder
from sceneloc.nn.heads.scinr import ScinrConfig, ScinrHead

FORMAT = "sceneloc-multimap"
FORMAT_VERSION = 2
"""2: SCRA layers mix full-rank bases (version 1: a low-rank update) and the pixel position became optional."""
FLOAT32_TENSORS = ("mean", "anchors")
"""Tensors stored in float32: they place whole scenes, and float16's 5e-4 relative rounding of a 1 km offset would
move every prediction of a scene by 0.5 m. Three numbers per scene plus three; the rest is float16."""
DESCRIPTOR_PREFIX = "retrieval."
"""Tensor-name prefix of the scene descriptors (SceneDescriptors); maps written before them have none."""


@dataclass
class SceneDescriptors:
    """Global descriptors of a multi-scene map's mapping views, for scene identification by retrieval: a query's
    VLAD descriptor (sceneloc.encode.vlad_descriptor over `vocabulary`) is compared with every view's, and each
    scene scores the cosine similarity of its most similar view.

    vocabulary: (K, C) float32 k-means centres of mapping features; descriptors: (M, K * C) float32 holding float16
    values (as stored), L2-normalised; scene_index: (M,) int64, the scene of each view."""

    vocabulary: torch.Tensor
    descriptors: torch.Tensor
    scene_index: torch.Tensor
    n_scenes: int

    def scene_scores(self, features: torch.Tensor) -> np.ndarray:
        """An image's cell features (N, C) -> (n_scenes,) float64: per scene, the best cosine similarity of its
        views' descriptors with the image's (-1 for a scene without views)."""
        query = vlad_descriptor(features, self.vocabulary).to(self.descriptors.device)
        similarity = self.descriptors @ query
        best = torch.full((self.n_scenes,), -1.0, device=similarity.device)
        best = best.scatter_reduce(0, self.scene_index, similarity, reduce="amax")
        return best.cpu().numpy().astype(np.float64)

    def tensors(self) -> dict[str, torch.Tensor]:
        """What the map file stores (DESCRIPTOR_PREFIX names; the descriptors in float16)."""
        return {DESCRIPTOR_PREFIX + "vocabulary": self.vocabulary.float().cpu().contiguous(),
                DESCRIPTOR_PREFIX + "descriptors": self.descriptors.half().cpu().contiguous(),
                DESCRIPTOR_PREFIX + "scene_index": self.scene_index.long().cpu().contiguous()}

    @staticmethod
    def from_tensors(tensors: dict, n_scenes: int) -> "SceneDescriptors | None":
        """The descriptors among a map file's tensors (removing them from `tensors`); None when it has none.
        ValueError for descriptors of inconsistent shapes or scenes."""
        stored = {k[len(DESCRIPTOR_PREFIX):]: tensors.pop(k) for k in list(tensors) if k.startswith(DESCRIPTOR_PREFIX)}
        if not stored:
            return None
        try:
            vocabulary, descriptors = stored["vocabulary"].float(), stored["descriptors"].float()
            index = stored["scene_index"].long()
        except KeyError as e:
            raise ValueError(f"scene descriptors lack {DESCRIPTOR_PREFIX}{e.args[0]}") from None
        if vocabulary.ndim != 2 or descriptors.ndim != 2 or descriptors.shape[1] != vocabulary.numel() \
                or index.shape != (len(descriptors),) or len(index) == 0 or int(index.min()) < 0 \
                or int(index.max()) >= n_scenes:
            raise ValueError("scene descriptors of inconsistent shapes or scenes")
        return SceneDescriptors(vocabulary, descriptors, index, n_scenes)

    def to(self, device: torch.device) -> "SceneDescriptors":
        return SceneDescriptors(self.vocabulary.to(device), self.descriptors.to(device), self.scene_index.to(device),
                                self.n_scenes)


@dataclass
class MultiSceneMap:
    """A trained SCINR head plus what is needed to use it. metadata holds: format, format_version,
    sceneloc_version, encoder {name, version}, model (ScinrConfig), image_height, scenes [{name, n_frames,
    camera_bounds, buffer_rows, ...}] in embedding order, training (MultiSceneSummary without its per-scene part),
    config (MultiSceneConfig)."""

    head: ScinrHead
    encoder_name: str
    image_height: int
    scene_names: list[str]
    metadata: dict
    descriptors: SceneDescriptors | None = None
    """Scene descriptors for identification ("auto"); None in maps written before them (every scene is tried)."""

    def save(self, path: str | Path) -> None:
        """Weights in float16, scene placement in float32 (FLOAT32_TENSORS); written to a temporary file and renamed
        into place."""
        tensors = {}
        for k, v in self.head.state_dict().items():
            keep = not v.is_floating_point() or k in FLOAT32_TENSORS
            tensors[k] = v.detach().to(v.dtype if keep else torch.float16).cpu().contiguous()
        if self.descriptors is not None:
            tensors.update(self.descriptors.tensors())
        save_map_file(path, tensors, self.metadata, save_file)

    @staticmethod
    def load(path: str | Path, device: torch.device = torch.device("cpu")) -> "MultiSceneMap":
        """Raises InputError for a missing, truncated or foreign file, an unknown format version, or a map made
        with different encoder weights than the ones installed."""
        tensors, meta = load_map_file(path, "sceneloc multi-scene", FORMAT, FORMAT_VERSION, load_file)
        names = _scene_names(path, meta)
        config = config_from_metadata(path, ScinrConfig, metadata_field(path, meta, "model", dict), "model")
        try:
            config.validate()
        except ValueError as e:
            raise InputError(path, f"map metadata: {e}") from None
        image_height = checked_image_height(path, meta)
        metadata_field(path, meta, "config", dict)  # what `map --multi --init` continues with
        encoder = installed_encoder(path, meta)
        try:
            descriptors = SceneDescriptors.from_tensors(tensors, len(names))
        except ValueError as e:
            raise InputError(path, f"map's {e}") from None
        try:  # the constructor too: a damaged config (a negative width) fails there
            head = ScinrHead(encoder.out_channels, config, len(names))
            head.load_state_dict({k: v.float() for k, v in tensors.items()}, strict=True)
        except (RuntimeError, ValueError) as e:
            raise InputError(path, f"map tensors do not match its model config ({str(e).splitlines()[0]})") from None
        head.to(device).eval()
        return MultiSceneMap(head, meta["encoder"]["name"], image_height, names, meta,
                             None if descriptors is None else descriptors.to(device))

    @property
    def encoder(self) -> Encoder:
        return load_encoder(self.encoder_name)

    def scene_index(self, name: str) -> int:
        """Embedding index of scene `name`; InputError listing the map's scenes when it holds no such scene."""
        if name not in self.scene_names:
            raise InputError(None, f"the map holds no scene {name!r}; its scenes are: {', '.join(self.scene_names)}")
        return self.scene_names.index(name)


def _scene_names(path: str | Path, meta: dict) -> list[str]:
    """The scene names of a multi-scene map's metadata ("scenes": [{name, ...}], in embedding order): non-empty,
    distinct strings, else InputError naming the map file."""
    scenes = metadata_field(path, meta, "scenes", list)
    names = [scene.get("name") if isinstance(scene, dict) else None for scene in scenes]
    if not names or not all(isinstance(n, str) and n for n in names) or len(set(names)) != len(names):
        raise InputError(path, f"map metadata 'scenes' must list distinct {{name, ...}} objects, got "
                               f"{len(scenes)} entries")
    return names


def build_multimap_metadata(encoder: Encoder, model_config: ScinrConfig, image_height: int, scenes: list[dict],
                            training: dict, config: dict) -> dict:
    """The metadata of a MultiSceneMap; `scenes` lists {name, ...} in embedding order."""
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "sceneloc_version": __version__,
            "encoder": {"name": encoder.name, "version": encoder.version}, "model": model_config.to_dict(),
            "image_height": image_height, "scenes": scenes, "training": training, "config": config}
