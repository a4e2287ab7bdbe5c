"""Batched, differentiable camera geometry in torch for the training losses (kornia does the transforms): each row
has its own camera K and cam_from_world, as the rows of a training buffer do."""

from __future__ import annotations

import torch
from kornia.geometry.camera import project_points, unproject_points
from kornia.geometry.linalg import transform_points


def to_camera(points_world: torch.Tensor, cam_from_world: torch.Tensor) -> torch.Tensor:
    """points_world (B, 3) and cam_from_world (B, 3, 4) -> (B, 3) points in each row's camera frame."""
    bottom = torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=cam_from_world.dtype, device=cam_from_world.device)
    matrix = torch.cat([cam_from_world, bottom.expand(len(cam_from_world), 1, 4)], 1)
    return transform_points(matrix, points_world[:, None])[:, 0]


def project(points_cam: torch.Tensor, K: torch.Tensor, min_depth: float) -> torch.Tensor:
    """points_cam (B, 3) and K (B, 3, 3) -> (B, 2) pixels, the depth clamped at min_depth (metres) for the division,
    so points behind the camera give finite (and invalid) pixels instead of inf."""
    safe = torch.cat([points_cam[:, :2], points_cam[:, 2:].clamp(min=min_depth)], 1)
    return project_points(safe, K)


def pixel_rays(pixels: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """pixels (B, 2) and K (B, 3, 3) -> (B, 3) camera-frame points at depth 1 on each pixel's ray."""
    return unproject_points(pixels, torch.ones_like(pixels[:, :1]), K)
