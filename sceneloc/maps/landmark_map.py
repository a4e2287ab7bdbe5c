"""LandmarkMap ("sceneloc-landmark-map"): a scene landmark detector (SLD*). The landmarks' 3D positions, the per-scene
heatmap head's weights (float16) and the name and version of the frozen shared encoder it reads. One safetensors
file, no pickle; the map holds no image, descriptor or keypoint."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from sceneloc.maps.files import config_from_metadata, load_map_file, metadata_field, save_map_file
from sceneloc.maps.scene_map import checked_image_height, installed_encoder
from sceneloc.nn.heads.landmark import LandmarkHead, LandmarkHeadConfig
from sceneloc.runtime.errors import InputError

FORMAT = "sceneloc-landmark-map"
FORMAT_VERSION = 1
LANDMARKS = "landmarks"
"""Tensor name of the (L, 3) float32 landmark positions; the head's weights are under HEAD_PREFIX."""
HEAD_PREFIX = "head."


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

    def file_contents(self) -> tuple[dict[str, torch.Tensor], dict]:
        """(tensors, metadata) as the map file holds them."""
        tensors = {HEAD_PREFIX + k: v.detach().to(torch.float16).cpu().contiguous()
                   for k, v in self.head.state_dict().items()}
        tensors[LANDMARKS] = self.landmarks.detach().float().cpu().contiguous()
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
        return LandmarkMap(head.to(device).eval(), landmarks.float(), meta["encoder"]["name"], image_height, meta)
