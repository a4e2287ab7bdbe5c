"""map_scene: posed Scene -> trained RegressionHead, end to end (buffer, one-cycle AdamW, mixed precision)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from sceneloc.data import Scene
from sceneloc.device import autocast
from sceneloc.errors import InputError
from sceneloc.mapping.buffer import build_buffer
from sceneloc.mapping.config import MappingConfig
from sceneloc.mapping.loss import mapping_loss, repro_threshold
from sceneloc.maps import SceneMap, build_metadata
from sceneloc.memory import peak_rss_mb
from sceneloc.nn.encoders import load_encoder
from sceneloc.nn.heads import RegressionHead
from sceneloc.progress import make_progress


@dataclass
class TrainingSummary:
    """What happened during mapping; stored in the map file's metadata."""

    n_frames: int
    buffer_rows: int
    steps: int
    encode_s: float
    train_s: float
    total_s: float
    peak_rss_mb: float
    final_loss: float
    final_valid_fraction: float
    final_median_repro_px: float
    device: str
    history: list[dict] = field(default_factory=list)


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)


def map_scene(scene: Scene, config: MappingConfig, device: torch.device,
              show_progress: bool = True) -> tuple[RegressionHead, TrainingSummary]:
    """Train a scene-coordinate head for `scene` (all frames must be posed). Deterministic for a given seed on a
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

    with make_progress(show_progress) as progress:
        buffer = build_buffer(scene, encoder, config, device, progress)
        t_encoded = time.perf_counter()
        total_steps = config.iterations
        optimizer = torch.optim.AdamW(head.parameters(), lr=config.lr_start, weight_decay=config.weight_decay)
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=config.lr_max, total_steps=total_steps, div_factor=config.lr_max / config.lr_start,
            final_div_factor=config.lr_start / config.lr_end, cycle_momentum=False, pct_start=0.25)
        generator = torch.Generator().manual_seed(config.seed)
        task = progress.add_task("training head", total=total_steps, info="")
        history, stats, loss = [], {}, torch.tensor(float("nan"))
        frame_K = buffer.frame_K.to(device)
        frame_pose = buffer.frame_cam_from_world.to(device)
        batch = min(config.batch_size, len(buffer))
        order, cursor = torch.randperm(len(buffer), generator=generator), 0
        for step in range(total_steps):
            if cursor + batch > len(buffer):
                order, cursor = torch.randperm(len(buffer), generator=generator), 0
            rows = order[cursor:cursor + batch]
            cursor += batch
            features = buffer.features[rows].to(device)
            fidx = buffer.frame_index[rows].to(device)
            threshold = repro_threshold(config, step / total_steps)
            with autocast(device):
                pred = head(features)
            loss, stats = mapping_loss(pred.float(), buffer.pixels[rows].to(device), frame_K[fidx], frame_pose[fidx],
                                       None if buffer.targets is None else buffer.targets[rows].to(device),
                                       config, threshold)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            if (step + 1) % 50 == 0 or step + 1 == total_steps:
                progress.update(task, completed=step + 1, info=f"loss {loss.item():.2f} valid {stats['valid']:.2f} "
                                                                f"repro {stats['repro_px']:.1f}px thr {threshold:.1f}")
            if (step + 1) % max(1, total_steps // 10) == 0:
                history.append({"step": step + 1, "loss": float(loss.item()), **stats})
    t_end = time.perf_counter()
    summary = TrainingSummary(
        n_frames=len(scene.frames), buffer_rows=len(buffer), steps=total_steps, encode_s=t_encoded - t0,
        train_s=t_end - t_encoded, total_s=t_end - t0,
        peak_rss_mb=peak_rss_mb(),
        final_loss=float(loss.item()), final_valid_fraction=float(stats.get("valid", float("nan"))),
        final_median_repro_px=float(stats.get("repro_px", float("nan"))), device=str(device), history=history)
    head.eval()
    return head, summary


def build_scene_map(scene: Scene, config: MappingConfig, device: torch.device,
                    show_progress: bool = True) -> tuple[SceneMap, TrainingSummary]:
    """map_scene plus everything the map file records about the scene and the run."""
    head, summary = map_scene(scene, config, device, show_progress)
    centers = scene.camera_centers()
    scene_info = {"name": scene.name, "n_frames": len(scene.frames),
                  "camera_bounds": [centers.min(0).tolist(), centers.max(0).tolist()]}
    metadata = build_metadata(load_encoder(config.encoder), config.head, config.image_height, scene_info,
                              dict(summary.__dict__), config.to_dict())
    return SceneMap(head, config.encoder, config.image_height, metadata), summary
