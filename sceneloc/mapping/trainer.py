"""train_scene: posed Scene -> trained RegressionHead (and keypoint network), end to end (buffer, one-cycle AdamW,
mixed precision); add_keypoints: an existing map plus its scene -> the same map with a keypoint network (and
keypoint-guided fine-tuning), without training the head again."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from sceneloc.data import Scene
from sceneloc.runtime.device import resolve_precision
from sceneloc.runtime.errors import InputError
from sceneloc.mapping.buffer import build_buffer
from sceneloc.mapping.config import KeypointConfig, MappingConfig
from sceneloc.mapping.keypoints import keypoint_stage
from sceneloc.mapping.loss import repro_threshold
from sceneloc.mapping.optimise import optimise_head
from sceneloc.maps.scene_map import SceneMap, build_metadata
from sceneloc.runtime.memory import peak_rss_mb
from sceneloc.nn.encoders import load_encoder
from sceneloc.nn.heads import KeypointNet, RegressionHead
from sceneloc.runtime.progress import make_progress


@dataclass
class TrainingSummary:
    """What happened during mapping; stored in the map file's metadata."""

    n_frames: int
    buffer_rows: int
    steps: int
    encode_s: float
    train_s: float
    keypoint_s: float
    """Keypoint network training and fine-tuning (0 when keypoints are off)."""
    total_s: float
    peak_rss_mb: float
    final_loss: float
    final_valid_fraction: float
    final_median_repro_px: float
    device: str
    precision: str
    """The precision that ran (bf16, fp16 or fp32): config.precision resolved on this device."""
    history: list[dict] = field(default_factory=list)
    keypoints: dict = field(default_factory=dict)
    """Keypoint training statistics (label fraction, classifier accuracy, fine-tuning result)."""


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)


def training_steps(config: MappingConfig, buffer_rows: int) -> int:
    """config.iterations, capped at max_buffer_epochs passes of batch_size rows over the buffer (at least 100)."""
    epochs_cap = int(np.ceil(config.max_buffer_epochs * buffer_rows / config.batch_size))
    return max(min(config.iterations, epochs_cap), min(config.iterations, 100))


def train_scene(scene: Scene, config: MappingConfig, device: torch.device, show_progress: bool = True
              ) -> tuple[RegressionHead, KeypointNet | None, TrainingSummary]:
    """Train a scene-coordinate head for `scene` (all frames must be posed), then, when config.keypoints.enabled,
    a keypoint network and optionally keypoint-guided fine-tuning of the head. Deterministic for a given seed on a
    given device and thread count."""
    if not scene.frames:
        raise InputError(scene.root, "scene has no frames")
    scene.require_poses()
    config.validate()
    _seed_everything(config.seed)
    t0 = time.perf_counter()
    encoder = load_encoder(config.encoder).to(device)
    mean = torch.tensor(scene.camera_centers().mean(0), dtype=torch.float32)
    head = RegressionHead(encoder.out_channels, config.head, mean).to(device)
    keypoint_net, keypoint_stats = None, {}

    with make_progress(show_progress) as progress:
        buffer = build_buffer(scene, encoder, config, device, progress)
        t_encoded = time.perf_counter()
        steps = training_steps(config, len(buffer))
        loss, stats, history = optimise_head(
            head, buffer, config, device, progress, "training head", steps,
            (config.lr_start, config.lr_max, config.lr_end), lambda t: repro_threshold(config, t), seed=config.seed)
        t_trained = time.perf_counter()
        if config.keypoints.enabled:
            keypoint_net, keypoint_stats = keypoint_stage(head, buffer, encoder.out_channels, config, device,
                                                          progress)
    t_end = time.perf_counter()
    summary = TrainingSummary(
        n_frames=len(scene.frames), buffer_rows=len(buffer), steps=steps, encode_s=t_encoded - t0,
        train_s=t_trained - t_encoded, keypoint_s=t_end - t_trained, total_s=t_end - t0,
        peak_rss_mb=peak_rss_mb(), final_loss=loss, final_valid_fraction=float(stats.get("valid", float("nan"))),
        final_median_repro_px=float(stats.get("repro_px", float("nan"))), device=str(device),
        precision=resolve_precision(config.precision, device), history=history,
        keypoints=keypoint_stats)
    head.eval()
    return head, keypoint_net, summary


def build_scene_map(scene: Scene, config: MappingConfig, device: torch.device,
                    show_progress: bool = True) -> tuple[SceneMap, TrainingSummary]:
    """train_scene plus everything the map file records about the scene and the run."""
    head, keypoint_net, summary = train_scene(scene, config, device, show_progress)
    centers = scene.camera_centers()
    scene_info = {"name": scene.name, "n_frames": len(scene.frames),
                  "camera_bounds": [centers.min(0).tolist(), centers.max(0).tolist()]}
    metadata = build_metadata(load_encoder(config.encoder), config.head, config.image_height, scene_info,
                              dict(summary.__dict__), config.to_dict())
    return SceneMap(head, config.encoder, config.image_height, metadata, keypoint_net), summary


def add_keypoints(scene_map: SceneMap, scene: Scene, keypoints: KeypointConfig, device: torch.device,
                  show_progress: bool = True) -> tuple[SceneMap, dict]:
    """Give a single-scene map without a keypoint network one, trained on the scene it was made from: the training
    buffer is rebuilt with the map's own mapping config and seed (the same rows, since sampling and augmentation
    are seeded), then the keypoint stage of train_scene runs with `keypoints` (enabled is implied) on the map's head.
    Returns the new map (the head fine-tuned when keypoints.fine_tune_iterations > 0: scene_map's head is trained
    further in place) and {"encode_s", "keypoint_s", "keypoints": statistics}. Raises InputError when the scene is
    not the one the map was made from (frame count) or has unposed frames, ValueError when the map already has a
    keypoint network or a keypoint setting cannot work."""
    if scene_map.keypoint_net is not None:
        raise ValueError("the map already has a keypoint network")
    expected = scene_map.metadata["scene"]["n_frames"]
    if len(scene.frames) != expected:
        raise InputError(scene.root, f"{len(scene.frames)} frames, but the map was made from {expected}: pass the "
                                     f"images (and split) the map was made from")
    scene.require_poses()
    config = MappingConfig.from_dict(scene_map.metadata["mapping_config"])
    config.keypoints = replace(keypoints, enabled=True)
    config.validate()
    _seed_everything(config.seed)
    t0 = time.perf_counter()
    encoder = load_encoder(config.encoder).to(device)
    head = scene_map.head.to(device)
    head.train()
    with make_progress(show_progress) as progress:
        buffer = build_buffer(scene, encoder, config, device, progress)
        t_encoded = time.perf_counter()
        keypoint_net, stats = keypoint_stage(head, buffer, encoder.out_channels, config, device, progress)
    head.eval()
    timings = {"encode_s": t_encoded - t0, "keypoint_s": time.perf_counter() - t_encoded}
    metadata = dict(scene_map.metadata)
    metadata["mapping_config"] = config.to_dict()
    metadata["training"] = {**metadata["training"], "keypoints": stats, "keypoint_s": timings["keypoint_s"]}
    return (SceneMap(head, scene_map.encoder_name, scene_map.image_height, metadata, keypoint_net),
            {**timings, "keypoints": stats})
