"""Keypoint classification (keypoint paper, sections 2.2 and 3): label buffer rows with the trained head, train the
keypoint network on them, and fine-tune the head on the rows it rates as keypoints."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from rich.progress import Progress

from sceneloc.runtime.device import autocast
from sceneloc.geometry.batched import project, to_camera
from sceneloc.mapping.buffer import Buffer
from sceneloc.mapping.config import KeypointConfig, MappingConfig
from sceneloc.mapping.loss import shrinking_threshold
from sceneloc.mapping.optimise import optimise_head
from sceneloc.nn.heads import KeypointNet, RegressionHead

CHUNK_ROWS = 65536
"""Rows per forward pass when labelling or scoring the whole buffer."""
VALIDATION_FRACTION = 0.02
"""Buffer rows held out of keypoint training to measure the classifier."""


def keypoint_labels(pred_world: torch.Tensor, pixels: torch.Tensor, K: torch.Tensor, cam_from_world: torch.Tensor,
                    targets: torch.Tensor | None, config: KeypointConfig, min_depth: float) -> torch.Tensor:
    """pred_world (B, 3), pixels (B, 2), K (B, 3, 3), cam_from_world (B, 3, 4), targets (B, 3) or None (NaN =
    unknown) -> (B,) bool: in front of the camera, reprojecting within label_repro_px, and, where the target is
    known, within label_max_3d_m of it."""
    cam = to_camera(pred_world, cam_from_world)
    good = (cam[:, 2] > min_depth) & ((project(cam, K, min_depth) - pixels).norm(dim=1) < config.label_repro_px)
    if targets is not None:
        known = torch.isfinite(targets[:, 0])
        err = (pred_world - torch.nan_to_num(targets)).norm(dim=1)
        good &= ~known | (err < config.label_max_3d_m)
    return good


@torch.no_grad()
def _label_buffer(head: RegressionHead, buffer: Buffer, config: MappingConfig, device: torch.device) -> torch.Tensor:
    """(N,) bool keypoint label of every buffer row, from `head`'s predictions."""
    head.eval()
    labels = []
    for start in range(0, len(buffer), CHUNK_ROWS):
        rows = slice(start, start + CHUNK_ROWS)
        fidx = buffer.frame_index[rows]
        with autocast(device, config.precision):
            pred = head(buffer.features[rows].to(device))
        labels.append(keypoint_labels(pred.float(), buffer.pixels[rows].to(device), buffer.frame_K[fidx].to(device),
                                      buffer.frame_cam_from_world[fidx].to(device),
                                      None if buffer.targets is None else buffer.targets[rows].to(device),
                                      config.keypoints, config.min_depth).cpu())
    head.train()
    return torch.cat(labels)


@torch.no_grad()
def keypoint_probabilities(net: KeypointNet, features: torch.Tensor, device: torch.device,
                           precision: str = "auto") -> torch.Tensor:
    """features (N, C) -> (N,) float32 probabilities on the CPU, computed in chunks under `precision`."""
    probs = []
    for start in range(0, len(features), CHUNK_ROWS):
        with autocast(device, precision):
            probs.append(net.probabilities(features[start:start + CHUNK_ROWS].to(device)).float().cpu())
    return torch.cat(probs)


def _auc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Area under the ROC curve of scores (N,) for bool labels (N,): the probability that a random keypoint scores
    above a random non-keypoint (ties count half); NaN when one class is missing."""
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = torch.argsort(scores)
    ranks = torch.empty(len(scores), dtype=torch.float64)
    ranks[order] = torch.arange(1, len(scores) + 1, dtype=torch.float64)
    # Ties get their mean rank.
    _, inverse, counts = torch.unique(scores, return_inverse=True, return_counts=True)
    sums = torch.zeros(len(counts), dtype=torch.float64).index_add_(0, inverse, ranks)
    ranks = (sums / counts)[inverse]
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def train_keypoint_net(head: RegressionHead, buffer: Buffer, in_channels: int, config: MappingConfig,
                       device: torch.device, progress: Progress) -> tuple[KeypointNet, dict]:
    """Label the buffer with `head`, train a KeypointNet on a shuffled 98 % of it (binary cross-entropy, AdamW
    one-cycle) and measure it on the rest. Returns the network (eval mode) and statistics: positive_fraction,
    val_auc, and val_accuracy, val_precision and val_recall at probability 0.5, final_loss."""
    kp = config.keypoints
    labels = _label_buffer(head, buffer, config, device)
    generator = torch.Generator().manual_seed(config.seed + 1)
    order = torch.randperm(len(buffer), generator=generator)
    n_val = max(1, int(len(buffer) * VALIDATION_FRACTION))
    val_rows, train_rows = order[:n_val], order[n_val:]
    net = KeypointNet(in_channels, kp.net).to(device)
    optimizer = torch.optim.AdamW(net.parameters(), lr=kp.lr_start, weight_decay=config.weight_decay, fused=True)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=kp.lr_max, total_steps=kp.iterations, div_factor=kp.lr_max / kp.lr_start,
        final_div_factor=100.0, cycle_momentum=False, pct_start=0.25)
    batch = min(kp.batch_size, len(train_rows))
    task = progress.add_task("training keypoint network", total=kp.iterations, info="")
    loss = torch.tensor(float("nan"))
    for step in range(kp.iterations):
        rows = train_rows[torch.randint(len(train_rows), (batch,), generator=generator)]
        with autocast(device, config.precision):
            logits = net(buffer.features[rows].to(device))
        loss = F.binary_cross_entropy_with_logits(logits.float(), labels[rows].float().to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        if (step + 1) % 50 == 0 or step + 1 == kp.iterations:
            progress.update(task, completed=step + 1, info=f"loss {loss.item():.3f}")
    net.eval()
    val_prob = keypoint_probabilities(net, buffer.features[val_rows], device, config.precision)
    predicted = val_prob >= 0.5
    truth = labels[val_rows]
    true_pos = (predicted & truth).sum().item()
    stats = {"positive_fraction": labels.float().mean().item(),
             "val_auc": _auc(val_prob, truth),
             "val_accuracy": (predicted == truth).float().mean().item(),
             "val_precision": true_pos / max(1, predicted.sum().item()),
             "val_recall": true_pos / max(1, truth.sum().item()),
             "final_loss": float(loss.item())}
    return net, stats


def fine_tune_head(head: RegressionHead, keypoint_net: KeypointNet, buffer: Buffer, config: MappingConfig,
                   device: torch.device, progress: Progress) -> dict:
    """Keypoint-guided fine-tuning: continue training `head` only on the fine_tune_top_fraction of buffer rows that
    keypoint_net ranks highest, with the paper's low learning rates and a robust threshold shrinking from
    label_repro_px to repro_threshold_end. Returns {"fine_tune_rows", "fine_tune_final_repro_px"}."""
    kp = config.keypoints
    probs = keypoint_probabilities(keypoint_net, buffer.features, device, config.precision)
    n_rows = max(1, int(round(len(probs) * kp.fine_tune_top_fraction)))
    rows = torch.argsort(probs, descending=True, stable=True)[:n_rows]
    _, stats, _ = optimise_head(
        head, buffer, config, device, progress, "fine-tuning head on keypoints", kp.fine_tune_iterations,
        (kp.fine_tune_lr_start, kp.fine_tune_lr_max, config.lr_end),
        lambda t: shrinking_threshold(kp.label_repro_px, config.repro_threshold_end, t), rows=rows,
        seed=config.seed + 2)
    head.eval()
    return {"fine_tune_rows": int(len(rows)), "fine_tune_final_repro_px": float(stats.get("repro_px", float("nan")))}


def keypoint_stage(head: RegressionHead, buffer: Buffer, in_channels: int, config: MappingConfig,
                   device: torch.device, progress: Progress) -> tuple[KeypointNet, dict]:
    """What follows head training when config.keypoints.enabled: train_keypoint_net, then fine_tune_head when
    fine_tune_iterations > 0. Returns the network and the statistics of both."""
    keypoint_net, stats = train_keypoint_net(head, buffer, in_channels, config, device, progress)
    if config.keypoints.fine_tune_iterations > 0:
        stats.update(fine_tune_head(head, keypoint_net, buffer, config, device, progress))
    return keypoint_net, stats
