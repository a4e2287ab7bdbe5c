"""Multi-view depth of a posed frame from its posed neighbours (plane sweep), the reconstruction's RGB-only depth
source that needs no map: for each of `planes` depths (uniform in inverse depth), every neighbour's grey image is
warped into the frame through that fronto-parallel plane, compared with the frame by zero-mean normalised
cross-correlation (ZNCC) in a window, and each pixel takes the depth of the best mean ZNCC over its neighbours,
refined by a parabola in inverse depth; pixels with too little texture or too weak a best match get none.

Written here because no library we install does a CPU plane sweep for arbitrary posed frames (COLMAP's PatchMatch
stereo needs CUDA; OpenCV's stereo matchers want rectified pairs); the warps are torch's grid_sample, the windows
its average pooling."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from sceneloc.data import Frame
from sceneloc.encode import prepare_image


@dataclass
class PlaneSweepConfig:
    """Plane-sweep depth (depth source "multiview")."""

    neighbours: int = 4
    """Posed frames each frame is compared with: the nearest by camera centre among those at least min_baseline_m
    away whose optical axis is within max_angle_deg."""
    min_baseline_m: float = 0.05
    """Nearer frames give too little parallax to tell depths apart."""
    max_angle_deg: float = 30.0
    """Largest angle between the optical axes of a frame and a neighbour."""
    planes: int = 64
    """Depth hypotheses, uniform in inverse depth between min_depth_m and max_depth_m."""
    min_depth_m: float = 0.3
    """Nearest hypothesis, metres."""
    max_depth_m: float = 6.0
    """Farthest hypothesis, metres."""
    image_height: int = 240
    """Working height of the comparison, pixels (depth is returned at the frame's own size)."""
    window: int = 7
    """ZNCC window, pixels of the working image (odd)."""
    min_zncc: float = 0.6
    """A pixel's best mean ZNCC must reach this."""
    min_texture: float = 3.0
    """A pixel's window must have at least this grey-level standard deviation (0-255)."""
    min_views: int = 2
    """A depth hypothesis counts where at least this many neighbours see the pixel's window (all of them when
    there are fewer)."""

    def to_dict(self) -> dict:
        return asdict(self)

    def validate(self) -> None:
        """ValueError naming the first setting that cannot work."""
        if self.neighbours < 1 or self.planes < 3 or self.image_height < 8 or self.min_views < 1:
            raise ValueError("neighbours and min_views must be >= 1, planes >= 3 and image_height >= 8")
        if not 0 < self.min_depth_m < self.max_depth_m:
            raise ValueError(f"need 0 < min_depth_m < max_depth_m, got {self.min_depth_m}, {self.max_depth_m}")
        if self.window < 3 or self.window % 2 == 0:
            raise ValueError(f"window must be an odd number >= 3, got {self.window}")
        if not -1 <= self.min_zncc <= 1:
            raise ValueError(f"min_zncc must be in [-1, 1], got {self.min_zncc}")


def choose_neighbours(frames: list[Frame], config: PlaneSweepConfig) -> list[list[int]]:
    """Per frame, the indices of its comparison frames (PlaneSweepConfig.neighbours)."""
    centres = np.array([f.cam_from_world.center for f in frames]).reshape(-1, 3)
    axes = np.array([f.cam_from_world.rotation[2] for f in frames]).reshape(-1, 3)
    min_cos = np.cos(np.radians(config.max_angle_deg))
    chosen = []
    for i in range(len(frames)):
        distance = np.linalg.norm(centres - centres[i], axis=1)
        distance[(axes @ axes[i] < min_cos) | (distance < config.min_baseline_m)] = np.inf
        order = np.argsort(distance, kind="stable")[:config.neighbours]
        chosen.append([int(j) for j in order if np.isfinite(distance[j])])
    return chosen


def _grey(frame: Frame, height: int) -> tuple[torch.Tensor, object]:
    rgb, camera = prepare_image(frame.load_rgb(), frame.camera, height)
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float32)
    return torch.from_numpy(grey)[None, None], camera


def _window_stats(x: torch.Tensor, window: int) -> tuple[torch.Tensor, torch.Tensor]:
    mean = F.avg_pool2d(x, window, 1, window // 2, count_include_pad=False)
    var = (F.avg_pool2d(x * x, window, 1, window // 2, count_include_pad=False) - mean * mean).clamp(min=0)
    return mean, var


@torch.no_grad()
def plane_sweep_depth(frame: Frame, neighbours: list[Frame], config: PlaneSweepConfig) -> np.ndarray:
    """(H, W) float32 depth of `frame` in metres at its own image size, 0 where no depth was confident (the module
    docstring); all zeros without neighbours."""
    config.validate()
    h_full, w_full = frame.camera.height, frame.camera.width
    if not neighbours:
        return np.zeros((h_full, w_full), np.float32)
    ref, cam = _grey(frame, config.image_height)
    h, w = ref.shape[-2:]
    v, u = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    rays = torch.stack([u, v, torch.ones_like(u)], -1).reshape(-1, 3) @ torch.from_numpy(np.linalg.inv(cam.K)).T
    ref_mean, ref_var = _window_stats(ref, config.window)
    inverse = torch.linspace(1 / config.min_depth_m, 1 / config.max_depth_m, config.planes, dtype=torch.float64)
    total = torch.zeros((config.planes, h, w))
    count = torch.zeros((config.planes, h, w))
    world_from_ref = frame.cam_from_world.inverse()
    for other in neighbours:
        image, other_cam = _grey(other, config.image_height)
        relative = other.cam_from_world * world_from_ref  # other_from_ref
        rotated = rays @ torch.from_numpy(relative.rotation).T
        t = torch.from_numpy(relative.translation)
        K = torch.from_numpy(other_cam.K)
        for k, inv_d in enumerate(inverse):
            # A point at depth d on the ray: d * ray; in the other camera d * (R ray + t / d).
            points = rotated + t * inv_d
            z = points[:, 2]
            uv = (points[:, :2] / z[:, None].clamp(min=1e-9)) @ K[:2, :2].T + K[:2, 2]
            grid = torch.stack([2 * uv[:, 0] / (other_cam.width - 1) - 1, 2 * uv[:, 1] / (other_cam.height - 1) - 1],
                               -1).float().reshape(1, h, w, 2)
            inside = ((z > 0) & (grid.reshape(-1, 2).abs() <= 1).all(1)).reshape(1, 1, h, w).float()
            warped = F.grid_sample(image, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
            mean, var = _window_stats(warped, config.window)
            cross = F.avg_pool2d(ref * warped, config.window, 1, config.window // 2, count_include_pad=False)
            zncc = (cross - ref_mean * mean) / torch.sqrt(ref_var * var + 1e-6)
            # The mean over the neighbours whose image holds the whole window at this depth.
            covered = (F.avg_pool2d(inside, config.window, 1, config.window // 2, count_include_pad=False)
                       > 0.99)[0, 0]
            total[k] += torch.where(covered, zncc[0, 0], torch.zeros_like(total[k]))
            count[k] += covered.float()
    # A depth seen by fewer than min_views neighbours scores -1 (a match in one view is often chance).
    scores = torch.where(count >= min(config.min_views, len(neighbours)), total / count.clamp(min=1),
                         torch.full_like(total, -1.0))
    best, index = scores.max(0)
    # Sub-plane refinement: a parabola through the scores of the best plane and its two neighbours.
    below = scores[(index - 1).clamp(min=0), torch.arange(h)[:, None], torch.arange(w)[None]]
    above = scores[(index + 1).clamp(max=config.planes - 1), torch.arange(h)[:, None], torch.arange(w)[None]]
    curvature = below - 2 * best + above
    step = torch.where((curvature < 0) & (index > 0) & (index < config.planes - 1),
                       (0.5 * (below - above) / curvature).clamp(-0.5, 0.5), torch.zeros_like(best))
    spacing = float(inverse[1] - inverse[0])
    inv_depth = inverse[index].float() + step * spacing
    confident = (best >= config.min_zncc) & (ref_var[0, 0].sqrt() >= config.min_texture) & (inv_depth > 0)
    depth = torch.where(confident, 1.0 / inv_depth.clamp(min=1e-6), torch.zeros_like(inv_depth)).numpy()
    return cv2.resize(depth.astype(np.float32), (w_full, h_full), interpolation=cv2.INTER_NEAREST)
