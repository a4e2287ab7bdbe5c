"""SceneMap: the one-file map (safetensors tensors + JSON metadata), saved atomically, loaded without pickle."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from sceneloc import __version__
from sceneloc.atomic import atomic_output
from sceneloc.errors import InputError
from sceneloc.nn.encoders import Encoder, load_encoder
from sceneloc.nn.heads import HeadConfig, RegressionHead

FORMAT = "sceneloc-map"
FORMAT_VERSION = 1
METADATA_KEY = "sceneloc"


@dataclass
class SceneMap:
    """A trained head plus what is needed to use it. metadata holds: format, format_version, sceneloc_version,
    encoder {name, version}, head (HeadConfig), image_height, scene {name, n_frames, camera_bounds}, training
    (TrainingSummary), mapping_config."""

    head: RegressionHead
    encoder_name: str
    image_height: int
    metadata: dict

    def save(self, path: str | Path) -> None:
        """Head weights in float16, written to a temporary file and renamed into place."""
        path = Path(path)
        tensors = {k: v.detach().to(torch.float16 if v.is_floating_point() and k != "mean" else v.dtype).cpu()
                   .contiguous() for k, v in self.head.state_dict().items()}
        meta = {METADATA_KEY: json.dumps(self.metadata)}
        with atomic_output(path) as tmp:
            save_file(tensors, str(tmp), metadata=meta)

    @staticmethod
    def load(path: str | Path, device: torch.device = torch.device("cpu")) -> "SceneMap":
        """Raises InputError for a missing, truncated or foreign file, an unknown format version, or a map made
        with different encoder weights than the ones installed."""
        path = Path(path)
        if not path.is_file():
            raise InputError(path, "map file does not exist")
        try:
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                raw = (f.metadata() or {}).get(METADATA_KEY)
            tensors = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise InputError(path, f"not a sceneloc map (unreadable safetensors: {str(e).splitlines()[0]})") from None
        if raw is None:
            raise InputError(path, "not a sceneloc map (safetensors file without sceneloc metadata)")
        try:
            meta = json.loads(raw)
        except json.JSONDecodeError:
            raise InputError(path, "map metadata is not valid JSON") from None
        if meta.get("format") != FORMAT:
            raise InputError(path, f"not a sceneloc map (format {meta.get('format')!r})")
        if meta.get("format_version") != FORMAT_VERSION:
            raise InputError(path, f"map format version {meta.get('format_version')} is not supported "
                                   f"(this sceneloc {__version__} reads version {FORMAT_VERSION})")
        enc_meta = meta["encoder"]
        try:
            encoder = load_encoder(enc_meta["name"])
        except ValueError as e:
            raise InputError(path, f"map needs encoder {enc_meta['name']!r}, which is not installed ({e})") from None
        if encoder.version != enc_meta["version"]:
            raise InputError(path, f"map was made with encoder {enc_meta['version']}, but the installed one is "
                                   f"{encoder.version}; re-map the scene")
        head = RegressionHead(encoder.out_channels, HeadConfig(**meta["head"]))
        try:
            head.load_state_dict({k: v.float() for k, v in tensors.items()}, strict=True)
        except RuntimeError as e:
            raise InputError(path, f"map tensors do not match its head config ({str(e).splitlines()[0]})") from None
        head.to(device).eval()
        return SceneMap(head, enc_meta["name"], int(meta["image_height"]), meta)

    @property
    def encoder(self) -> Encoder:
        return load_encoder(self.encoder_name)


def build_metadata(encoder: Encoder, head_config: HeadConfig, image_height: int, scene_info: dict,
                   training: dict, mapping_config: dict) -> dict:
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "sceneloc_version": __version__,
            "encoder": {"name": encoder.name, "version": encoder.version}, "head": head_config.to_dict(),
            "image_height": image_height, "scene": scene_info, "training": training, "mapping_config": mapping_config}
