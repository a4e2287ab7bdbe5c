"""SceneMap: the one-file map (safetensors tensors + JSON metadata), saved atomically, loaded without pickle."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from sceneloc import __version__
from sceneloc.maps.files import config_from_metadata, load_map_file, metadata_field, save_map_file
from sceneloc.runtime.errors import InputError
from sceneloc.nn.encoders import Encoder, load_encoder
from sceneloc.nn.encoders.base import STRIDE
from sceneloc.nn.heads import HeadConfig, KeypointNet, KeypointNetConfig, RegressionHead

FORMAT = "sceneloc-map"
FORMAT_VERSION = 1
KEYPOINT_PREFIX = "keypoint."
"""Tensor-name prefix of the keypoint network's weights (the head's have none)."""


@dataclass
class SceneMap:
    """A trained head (and optionally a keypoint network) plus what is needed to use them. metadata holds: format,
    format_version, sceneloc_version, encoder {name, version}, head (HeadConfig), image_height, scene {name,
    n_frames, camera_bounds}, training (TrainingSummary), mapping_config, and keypoint_net (KeypointNetConfig) when
    the map has one."""

    head: RegressionHead
    encoder_name: str
    image_height: int
    metadata: dict
    keypoint_net: KeypointNet | None = None

    def file_contents(self) -> tuple[dict[str, torch.Tensor], dict]:
        """(tensors, metadata) as the map file holds them: weights in float16 (the head's mean offset in float32),
        the keypoint network's under KEYPOINT_PREFIX."""
        weights = dict(self.head.state_dict())
        metadata = dict(self.metadata)
        metadata.pop("keypoint_net", None)
        if self.keypoint_net is not None:
            weights.update({KEYPOINT_PREFIX + k: v for k, v in self.keypoint_net.state_dict().items()})
            metadata["keypoint_net"] = self.keypoint_net.config.to_dict()
        tensors = {k: v.detach().to(torch.float16 if v.is_floating_point() and k != "mean" else v.dtype).cpu()
                   .contiguous() for k, v in weights.items()}
        return tensors, metadata

    def save(self, path: str | Path) -> None:
        """file_contents, written to a temporary file and renamed into place."""
        tensors, metadata = self.file_contents()
        save_map_file(path, tensors, metadata, save_file)

    @staticmethod
    def load(path: str | Path, device: torch.device = torch.device("cpu")) -> "SceneMap":
        """Raises InputError for a missing, truncated or foreign file, an unknown format version, or a map made
        with different encoder weights than the ones installed."""
        tensors, meta = load_map_file(path, "sceneloc", FORMAT, FORMAT_VERSION, load_file)
        return SceneMap.from_contents(path, tensors, meta, device)

    @staticmethod
    def from_contents(path: str | Path, tensors: dict[str, torch.Tensor], meta: dict,
                      device: torch.device = torch.device("cpu")) -> "SceneMap":
        """The map of file_contents read from the file at `path` (named in InputErrors), on `device`."""
        head_config, keypoint_config, image_height = _checked_metadata(path, meta)
        encoder = installed_encoder(path, meta)
        parts = {KEYPOINT_PREFIX: {}, "": {}}
        for k, v in tensors.items():
            prefix = KEYPOINT_PREFIX if k.startswith(KEYPOINT_PREFIX) else ""
            parts[prefix][k[len(prefix):]] = v.float()
        try:
            # Inside the try: a damaged config (a negative width) fails in the constructors.
            head = RegressionHead(encoder.out_channels, head_config)
            keypoint_net = None if keypoint_config is None else KeypointNet(encoder.out_channels, keypoint_config)
            head.load_state_dict(parts[""], strict=True)
            if keypoint_net is not None or parts[KEYPOINT_PREFIX]:
                if keypoint_net is None:
                    raise RuntimeError("keypoint weights without a keypoint_net config")
                keypoint_net.load_state_dict(parts[KEYPOINT_PREFIX], strict=True)
        except (RuntimeError, ValueError) as e:
            raise InputError(path, f"map tensors do not match its config ({str(e).splitlines()[0]})") from None
        head.to(device).eval()
        if keypoint_net is not None:
            keypoint_net.to(device).eval()
        return SceneMap(head, meta["encoder"]["name"], image_height, meta, keypoint_net)

    @property
    def encoder(self) -> Encoder:
        return load_encoder(self.encoder_name)


def _checked_metadata(path: str | Path, meta: dict) -> tuple[HeadConfig, KeypointNetConfig | None, int]:
    """(head config, keypoint network config or None, working image height) of a single-scene map's metadata, after
    checking the entries that loading and its users (add_keypoints: scene.n_frames, mapping_config) read; InputError
    naming the map file and the key when one is missing or of the wrong type."""
    from sceneloc.mapping.config import MappingConfig  # not at the top: sceneloc.mapping imports this module

    image_height = checked_image_height(path, meta)
    # What only add_keypoints reads is checked where present (maps made by hand in tests may lack it).
    if isinstance(meta.get("scene"), dict) and "n_frames" in meta["scene"]:
        metadata_field(path, meta, "scene.n_frames", int)
    if "mapping_config" in meta:
        config_from_metadata(path, MappingConfig, meta["mapping_config"], "mapping_config")
    head = config_from_metadata(path, HeadConfig, metadata_field(path, meta, "head", dict), "head")
    keypoint_net = None if "keypoint_net" not in meta else \
        config_from_metadata(path, KeypointNetConfig, meta["keypoint_net"], "keypoint_net")
    return head, keypoint_net, image_height


def checked_image_height(path: str | Path, meta: dict) -> int:
    """The map's working image height (metadata "image_height"): an integer of at least one encoder cell, else
    InputError naming the map file."""
    height = metadata_field(path, meta, "image_height", int)
    if height < STRIDE:
        raise InputError(path, f"map metadata 'image_height' is {height}, below one encoder cell ({STRIDE} px)")
    return height


def installed_encoder(path: str | Path, meta: dict) -> Encoder:
    """The installed encoder a map file's metadata names (meta["encoder"]: {name, version}); InputError (naming the
    map file) when the entry is malformed, the encoder is not installed or its weights differ from the ones the map
    was made with."""
    metadata_field(path, meta, "encoder.name", str)
    metadata_field(path, meta, "encoder.version", str)
    enc_meta = meta["encoder"]
    try:
        encoder = load_encoder(enc_meta["name"])
    except ValueError as e:
        raise InputError(path, f"map needs encoder {enc_meta['name']!r}, which is not installed ({e})") from None
    if encoder.version != enc_meta["version"]:
        raise InputError(path, f"map was made with encoder {enc_meta['version']}, but the installed one is "
                               f"{encoder.version}; re-map the scene")
    return encoder


def build_metadata(encoder: Encoder, head_config: HeadConfig, image_height: int, scene_info: dict,
                   training: dict, mapping_config: dict) -> dict:
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "sceneloc_version": __version__,
            "encoder": {"name": encoder.name, "version": encoder.version}, "head": head_config.to_dict(),
            "image_height": image_height, "scene": scene_info, "training": training, "mapping_config": mapping_config}
