"""The training buffer: encoder features sampled from augmented mapping frames, each row tied to the pixel,
camera and pose it came from (and a 3D target when depth is known)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from rich.progress import Progress

from sceneloc.data import Scene
from sceneloc.runtime.device import autocast, storage_dtype
from sceneloc.encode import cell_centres, working_size
from sceneloc.mapping.augment import augment_image, rotate_pose
from sceneloc.mapping.config import MappingConfig
from sceneloc.nn.encoders import Encoder
from sceneloc.nn.encoders.base import STRIDE


@dataclass
class Buffer:
    """Rows of the buffer (N rows, F augmented frames), of one scene or of several (concatenate_buffers).

    features: (N, C) bfloat16, float16 or float32 (storage_dtype of the precision); pixels: (N, 2) float32 in the
    augmented image; frame_index: (N,) int64;
    frame_K: (F, 3, 3) float32; frame_cam_from_world: (F, 3, 4) float32;
    targets: (N, 3) float32 world points from depth, NaN where unknown (None when no frame has depth);
    scene_rows: rows per scene, the scenes occupying consecutive row ranges in this order (one entry: one scene)."""

    features: torch.Tensor
    pixels: torch.Tensor
    frame_index: torch.Tensor
    frame_K: torch.Tensor
    frame_cam_from_world: torch.Tensor
    targets: torch.Tensor | None
    scene_rows: list[int] = field(default_factory=list)

    def __post_init__(self):
        if not self.scene_rows:
            self.scene_rows = [len(self.features)]

    def __len__(self) -> int:
        return len(self.features)

    def scene_index(self, rows: torch.Tensor) -> torch.Tensor:
        """(M,) int64 scene of each of the (M,) `rows`."""
        ends = torch.tensor(np.cumsum(self.scene_rows), dtype=torch.int64)
        return torch.searchsorted(ends, rows, right=True)


def concatenate_buffers(parts: list[Buffer]) -> Buffer:
    """One buffer over several scenes' buffers, scene i's rows after scene i-1's (frame indices renumbered)."""
    frame_offsets = np.cumsum([0] + [len(p.frame_K) for p in parts])
    targets = None
    if any(p.targets is not None for p in parts):
        targets = torch.cat([p.targets if p.targets is not None else torch.full((len(p), 3), float("nan"))
                             for p in parts])
    return Buffer(
        features=torch.cat([p.features for p in parts]), pixels=torch.cat([p.pixels for p in parts]),
        frame_index=torch.cat([p.frame_index + int(off) for p, off in zip(parts, frame_offsets)]),
        frame_K=torch.cat([p.frame_K for p in parts]),
        frame_cam_from_world=torch.cat([p.frame_cam_from_world for p in parts]),
        targets=targets, scene_rows=[len(p) for p in parts])


def _depth_targets(depth: np.ndarray, homography: np.ndarray, pixels: np.ndarray, frame) -> np.ndarray:
    """World points (n, 3) for augmented-image `pixels` (n, 2) by mapping back to the source depth map; NaN where
    depth is missing."""
    src = np.concatenate([pixels, np.ones((len(pixels), 1))], 1) @ np.linalg.inv(homography).T
    src = src[:, :2] / src[:, 2:]
    h, w = depth.shape
    ui, vi = np.round(src[:, 0]).astype(int), np.round(src[:, 1]).astype(int)
    inside = (ui >= 0) & (ui < w) & (vi >= 0) & (vi < h)
    z = np.zeros(len(pixels), np.float32)
    z[inside] = depth[vi[inside], ui[inside]]
    cam = frame.camera.unproject(src, z)
    world = frame.cam_from_world.inverse().apply(cam)
    world[z <= 0] = np.nan
    return world.astype(np.float32)


def _cells_per_frame(camera, image_height: int) -> int:
    w, h = working_size(camera, image_height)
    return -(-w // STRIDE) * -(-h // STRIDE)


@torch.no_grad()
def build_buffer(scene: Scene, encoder: Encoder, config: MappingConfig, device: torch.device,
                 progress: Progress) -> Buffer:
    """Encode every mapping frame with random augmentation, as many times as needed to fill `buffer_size` rows (at
    most `max_buffer_passes`), and sample buffer_size / (frames * passes) valid cells from each encoding."""
    rng = np.random.default_rng(config.seed)
    frames = scene.frames
    # Sized from the first frame: frames of other sizes only make the buffer somewhat larger or smaller.
    cells = _cells_per_frame(frames[0].camera, config.image_height)
    passes = int(np.clip(np.ceil(config.buffer_size / (len(frames) * cells)), 1, config.max_buffer_passes))
    n_aug = len(frames) * passes
    per_image = max(1, config.buffer_size // n_aug)
    use_depth = config.use_depth and any(f.depth_path is not None for f in frames)
    store_dtype = storage_dtype(config.precision, device)

    feats, pixels, index, targets = [], [], [], []
    frame_K = np.zeros((n_aug, 3, 3), np.float32)
    frame_pose = np.zeros((n_aug, 3, 4), np.float32)
    order = [(p, i) for p in range(passes) for i in rng.permutation(len(frames))]
    task = progress.add_task("encoding mapping frames", total=len(order), info="")
    for aug_id, (_, frame_id) in enumerate(order):
        frame = frames[frame_id]
        rgb = frame.load_rgb()
        prepared = augment_image(rgb, frame.camera, config.image_height, rng,
                                 (config.aug_scale_min, config.aug_scale_max), config.aug_rotation_deg,
                                 config.aug_brightness, config.aug_contrast)
        image = torch.from_numpy(prepared.rgb).permute(2, 0, 1)[None].to(device)
        with autocast(device, config.precision):
            fmap = encoder(image)[0]  # (C, h/8, w/8)
        c, rows, cols = fmap.shape
        centres = cell_centres(prepared.rgb.shape[0], prepared.rgb.shape[1])
        # A cell is valid when its centre pixel came from the source image (rotation leaves empty corners).
        ci, cj = (centres[:, 1]).astype(int), (centres[:, 0]).astype(int)
        valid = np.flatnonzero(prepared.valid[np.clip(ci, 0, prepared.valid.shape[0] - 1),
                                              np.clip(cj, 0, prepared.valid.shape[1] - 1)])
        chosen = rng.choice(valid, size=min(per_image, len(valid)), replace=False)
        feats.append(fmap.reshape(c, -1)[:, torch.from_numpy(chosen).to(device)].T.to(store_dtype).cpu())
        pixels.append(centres[chosen])
        index.append(np.full(len(chosen), aug_id, np.int64))
        frame_K[aug_id] = prepared.camera.K
        frame_pose[aug_id] = rotate_pose(frame.cam_from_world, prepared.cam_rotation).matrix()[:3]
        if use_depth:
            depth = frame.load_depth()
            targets.append(_depth_targets(depth, prepared.homography, centres[chosen], frame) if depth is not None
                           else np.full((len(chosen), 3), np.nan, np.float32))
        progress.advance(task)

    return Buffer(
        features=torch.cat(feats),
        pixels=torch.from_numpy(np.concatenate(pixels)),
        frame_index=torch.from_numpy(np.concatenate(index)),
        frame_K=torch.from_numpy(frame_K),
        frame_cam_from_world=torch.from_numpy(frame_pose),
        targets=torch.from_numpy(np.concatenate(targets)) if use_depth else None,
    )
