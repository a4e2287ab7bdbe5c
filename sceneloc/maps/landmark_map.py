"""LandmarkMap ("sceneloc-landmark-map"): a scene landmark detector (SLD*). The landmarks' 3D positions, the per-scene
heatmap head's weights (float16) and the name and version of the frozen shared encoder it reads, or, for a map whose
backbone was trained on its scene (LandmarkMapConfig.backbone "scratch"), that encoder's weights too. One
safetensors file, no pickle; the map holds no image, descriptor or keypoint."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from sceneloc.maps.files import config_from_metadata, load_map_file, metadata_field, save_map_file
from sceneloc.maps.scene_map import checked_image_height, installed_encoder
from sceneloc.nn.encoders import Encoder, load_encoder
from sceneloc.nn.heads.landmark import LandmarkHead, LandmarkHeadConfig
from sceneloc.runtime.errors import InputError

FORMAT = "sceneloc-landmark-map"
FORMAT_VERSION = 1
LANDMARKS = "landmarks"
"""Tensor name of the (L, 3) float32 landmark positions; the head's weights are under HEAD_PREFIX."""
HEAD_PREFIX = "head."
ENCODER_PREFIX = "encoder."
"""Tensor-name prefix of a scene-trained encoder's weights (float32: they are the features' only source)."""
SCENE_TRAINED_VERSION = "scene-trained"
"""metadata encoder.version of a map that carries its own encoder weights."""


@dataclass
class LandmarkMap:
    """metadata: format, format_version, sceneloc_version, encoder {name, version}, head (LandmarkHeadConfig),
    image_height, scene {name, n_frames}, config (LandmarkMapConfig), build (selection, buffer, training and
    timings)."""

    head: LandmarkHead
    landmarks: torch.Tensor
    """(L, 3) float32 world positions of the landmarks, metres; heatmap channel l is landmark l."""
    encoder_name: str
    image_height: int
    metadata: dict
    encoder: Encoder | None = None
    """The map's own encoder (trained on its scene), None: the installed shared one named by encoder_name."""

    def backbone(self) -> Encoder:
        """The encoder the head reads: the map's own, else the installed one."""
        return self.encoder if self.encoder is not None else load_encoder(self.encoder_name)

    def file_contents(self) -> tuple[dict[str, torch.Tensor], dict]:
        """(tensors, metadata) as the map file holds them."""
        tensors = {HEAD_PREFIX + k: v.detach().to(torch.float16).cpu().contiguous()
                   for k, v in self.head.state_dict().items()}
        tensors[LANDMARKS] = self.landmarks.detach().float().cpu().contiguous()
        if self.encoder is not None:
            tensors.update({ENCODER_PREFIX + k: v.detach().float().cpu().contiguous()
                            for k, v in self.encoder.state_dict().items()})
        return tensors, self.metadata

    def save(self, path: str | Path) -> None:
        """One safetensors file, written atomically."""
        save_map_file(path, *self.file_contents(), save_file)

    @staticmethod
    def load(path: str | Path, device: torch.device = torch.device("cpu")) -> "LandmarkMap":
        """Raises InputError for a missing, truncated or foreign file, an unknown format version, a map of other
        encoder weights than the installed ones, or tensors that do not match its config."""
        tensors, meta = load_map_file(path, "sceneloc", FORMAT, FORMAT_VERSION, load_file)
        return LandmarkMap.from_contents(path, tensors, meta, device)

    @staticmethod
    def from_contents(path: str | Path, tensors: dict[str, torch.Tensor], meta: dict,
                      device: torch.device = torch.device("cpu")) -> "LandmarkMap":
        """The map of file_contents read from the file at `path` (named in InputErrors), on `device`."""
        image_height = checked_image_height(path, meta)
        own = {k[len(ENCODER_PREFIX):]: v for k, v in tensors.items() if k.startswith(ENCODER_PREFIX)}
        if own:
            metadata_field(path, meta, "encoder.name", str)
            try:
                encoder = copy.deepcopy(load_encoder(meta["encoder"]["name"]))
                encoder.load_state_dict(own, strict=True)
            except (ValueError, RuntimeError) as e:
                raise InputError(path, f"map's own encoder cannot be read ({str(e).splitlines()[0]})") from None
        else:
            encoder = installed_encoder(path, meta)
        head_config = config_from_metadata(path, LandmarkHeadConfig, metadata_field(path, meta, "head", dict), "head")
        landmarks = tensors.get(LANDMARKS)
        if landmarks is None or landmarks.ndim != 2 or landmarks.shape[1] != 3 or len(landmarks) == 0 \
                or not torch.isfinite(landmarks).all():
            raise InputError(path, "landmark map has no (L, 3) finite 'landmarks' tensor")
        weights = {k[len(HEAD_PREFIX):]: v.float() for k, v in tensors.items() if k.startswith(HEAD_PREFIX)}
        try:
            head = LandmarkHead(encoder.out_channels, len(landmarks), head_config)
            head.load_state_dict(weights, strict=True)
        except (RuntimeError, ValueError) as e:
            raise InputError(path, f"map tensors do not match its config ({str(e).splitlines()[0]})") from None
        return LandmarkMap(head.to(device).eval(), landmarks.float(), meta["encoder"]["name"], image_height, meta,
                           encoder.to(device).eval() if own else None)
