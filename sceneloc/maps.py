"""SceneMap: the one-file map (safetensors tensors + JSON metadata), saved atomically, loaded without pickle."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from sceneloc import __version__
from sceneloc.map_files import load_map_file, save_map_file
from sceneloc.errors import InputError
from sceneloc.nn.encoders import Encoder, load_encoder
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

    def save(self, path: str | Path) -> None:
        """Weights in float16 (the head's mean offset in float32), written to a temporary file and renamed into
        place."""
        weights = dict(self.head.state_dict())
        metadata = dict(self.metadata)
        metadata.pop("keypoint_net", None)
        if self.keypoint_net is not None:
            weights.update({KEYPOINT_PREFIX + k: v for k, v in self.keypoint_net.state_dict().items()})
            metadata["keypoint_net"] = self.keypoint_net.config.to_dict()
        tensors = {k: v.detach().to(torch.float16 if v.is_floating_point() and k != "mean" else v.dtype).cpu()
                   .contiguous() for k, v in weights.items()}
        save_map_file(path, tensors, metadata, save_file)

    @staticmethod
    def load(path: str | Path, device: torch.device = torch.device("cpu")) -> "SceneMap":
        """Raises InputError for a missing, truncated or foreign file, an unknown format version, or a map made
        with different encoder weights than the ones installed."""
        tensors, meta = load_map_file(path, "sceneloc", FORMAT, FORMAT_VERSION, load_file)
        enc_meta = meta["encoder"]
        encoder = installed_encoder(path, enc_meta)
        head = RegressionHead(encoder.out_channels, HeadConfig(**meta["head"]))
        keypoint_net = (KeypointNet(encoder.out_channels, KeypointNetConfig(**meta["keypoint_net"]))
                        if "keypoint_net" in meta else None)
        parts = {KEYPOINT_PREFIX: {}, "": {}}
        for k, v in tensors.items():
            prefix = KEYPOINT_PREFIX if k.startswith(KEYPOINT_PREFIX) else ""
            parts[prefix][k[len(prefix):]] = v.float()
        try:
            head.load_state_dict(parts[""], strict=True)
            if keypoint_net is not None or parts[KEYPOINT_PREFIX]:
                if keypoint_net is None:
                    raise RuntimeError("keypoint weights without a keypoint_net config")
                keypoint_net.load_state_dict(parts[KEYPOINT_PREFIX], strict=True)
        except RuntimeError as e:
            raise InputError(path, f"map tensors do not match its config ({str(e).splitlines()[0]})") from None
        head.to(device).eval()
        if keypoint_net is not None:
            keypoint_net.to(device).eval()
        return SceneMap(head, enc_meta["name"], int(meta["image_height"]), meta, keypoint_net)

    @property
    def encoder(self) -> Encoder:
        return load_encoder(self.encoder_name)


def installed_encoder(path: str | Path, enc_meta: dict) -> Encoder:
    """The installed encoder a map file's metadata {name, version} names; InputError (naming the map file) when it
    is not installed or its weights differ from the ones the map was made with."""
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
