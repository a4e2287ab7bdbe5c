"""map_scene: posed Scene -> trained RegressionHead, end to end (buffer, one-cycle AdamW, mixed precision)."""

from __future__ import annotations

import resource
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
    _seed_everything(config.seed)
    t0 = time.perf_counter()
    encoder = load_encoder(config.encoder).to(device)
    mean = torch.tensor(scene.camera_centers().mean(0), dtype=torch.float32)
    head = RegressionHead(encoder.out_channels, config.head, mean).to(device)

    with make_progress(show_progress) as progress:
        buffer = build_buffer(scene, encoder, config, device, progress)
        t_encoded = time.perf_counter()
        steps_per_epoch = max(1, len(buffer) // config.batch_size)
        total_steps = steps_per_epoch * config.epochs
        optimizer = torch.optim.AdamW(head.parameters(), lr=config.lr_start, weight_decay=config.weight_decay)
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=config.lr_max, total_steps=total_steps, div_factor=config.lr_max / config.lr_start,
            final_div_factor=config.lr_start / config.lr_end, cycle_momentum=False, pct_start=0.25)
        generator = torch.Generator().manual_seed(config.seed)
        task = progress.add_task("training head", total=total_steps, info="")
        history, step, stats, loss = [], 0, {}, torch.tensor(float("nan"))
        frame_K = buffer.frame_K.to(device)
        frame_pose = buffer.frame_cam_from_world.to(device)
        for epoch in range(config.epochs):
            order = torch.randperm(len(buffer), generator=generator)
            for b in range(steps_per_epoch):
                rows = order[b * config.batch_size:(b + 1) * config.batch_size]
                features = buffer.features[rows].to(device)
                fidx = buffer.frame_index[rows].to(device)
                threshold = repro_threshold(config, step / total_steps)
                with autocast(device):
                    pred = head(features)
                loss, stats = mapping_loss(pred.float(), buffer.pixels[rows].to(device), frame_K[fidx],
                                           frame_pose[fidx],
                                           None if buffer.targets is None else buffer.targets[rows].to(device),
                                           config, threshold)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                step += 1
                if (step % 20 == 0 or step == total_steps):
                    progress.update(task, completed=step, info=f"loss {loss.item():.2f} valid {stats['valid']:.2f} "
                                                                f"repro {stats['repro_px']:.1f}px thr {threshold:.1f}")
            history.append({"epoch": epoch, "loss": float(loss.item()), **stats})
    t_end = time.perf_counter()
    summary = TrainingSummary(
        n_frames=len(scene.frames), buffer_rows=len(buffer), steps=total_steps, encode_s=t_encoded - t0,
        train_s=t_end - t_encoded, total_s=t_end - t0,
        peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        final_loss=float(loss.item()), final_valid_fraction=float(stats.get("valid", float("nan"))),
        final_median_repro_px=float(stats.get("repro_px", float("nan"))), device=str(device), history=history)
    head.eval()
    return head, summary
