"""The mapping loss: robust reprojection error with a shrinking threshold, validity constraints, and an optional
3D loss where depth is known."""

from __future__ import annotations

import math

import torch

from sceneloc.geometry.batched import pixel_rays, project, to_camera
from sceneloc.mapping.config import MappingConfig


def shrinking_threshold(start: float, end: float, progress: float) -> float:
    """Robust threshold (pixels) at training progress 0..1: shrinks from start to end along a quarter circle, so it
    stays wide for most of training and tightens at the end."""
    w = math.sqrt(max(0.0, 1.0 - progress ** 2))
    return end + w * (start - end)


def repro_threshold(config: MappingConfig, progress: float) -> float:
    """The first training's robust threshold (repro_threshold_start -> repro_threshold_end) at progress 0..1."""
    return shrinking_threshold(config.repro_threshold_start, config.repro_threshold_end, progress)


def mapping_loss(pred_world: torch.Tensor, pixels: torch.Tensor, K: torch.Tensor, cam_from_world: torch.Tensor,
                 targets: torch.Tensor | None, config: MappingConfig, threshold: float) -> tuple[torch.Tensor, dict]:
    """pred_world: (B, 3); pixels: (B, 2); K: (B, 3, 3); cam_from_world: (B, 3, 4); targets: (B, 3) or None (NaN =
    unknown). Returns the mean loss and statistics (fraction valid, mean reprojection error of valid rows)."""
    pred_cam = to_camera(pred_world, cam_from_world)
    z = pred_cam[:, 2]
    repro = (project(pred_cam, K, config.min_depth) - pixels).norm(dim=1)
    valid = (z > config.min_depth) & (z < config.max_depth) & (repro < config.max_reprojection_error)

    loss_valid = threshold * torch.tanh(repro / threshold)
    # Invalid predictions are pulled to a point on their pixel ray at a plausible depth.
    loss_invalid = (pred_cam - pixel_rays(pixels, K) * config.invalid_target_depth).norm(dim=1)
    loss = torch.where(valid, loss_valid, loss_invalid)

    if targets is not None:
        known = torch.isfinite(targets[:, 0])
        if known.any():
            target_cam = to_camera(targets[known], cam_from_world[known])
            # The 3D error is expressed in pixels (focal x error / depth) so that both terms share a scale, and is
            # not saturated: far-off predictions must keep a gradient towards their known target.
            err_px = ((pred_cam[known] - target_cam).norm(dim=1) * K[known, 0, 0]
                      / target_cam[:, 2].clamp(min=config.min_depth))
            loss = loss.clone()
            loss[known] = loss[known] + config.depth_loss_weight * err_px

    stats = {"valid": valid.float().mean().item(),
             "repro_px": repro[valid].median().item() if valid.any() else float("nan")}
    return loss.mean(), stats
