"""Landmark maps (SLD*, fast-training variant): `sceneloc map --type landmarks`.

    posed frames ──triangulate (structure/triangulate.py)──▶ points + tracks ──saliency, spread (select.py)──▶
    landmarks ──visibility per frame (targets.py)──▶ ViewBuffer: augmented views' frozen feature maps + where each
    sees its landmarks ──train the heatmap head (the shared train_one_cycle loop)──▶ LandmarkMap

The backbone is the shared frozen encoder (XFeat's, as the scene-coordinate maps'), encoded once per view into the
buffer; only the small per-scene head trains, which is what makes SLD*'s per-scene training fast. The regime it is
measured against, backbone and head trained from scratch on the one scene (LandmarkMapConfig.backbone "scratch"),
keeps the views' images in the buffer instead and trains the encoder's architecture, re-initialised, with the head;
its map carries the encoder's weights."""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch
import torch.nn.functional as F

from sceneloc import __version__
from sceneloc.data import Scene
from sceneloc.mapping.augment import augment_image
from sceneloc.mapping.landmarks.select import saliency, select_landmarks
from sceneloc.mapping.landmarks.targets import render_heatmaps, view_targets, visibility
from sceneloc.mapping.optimise import train_one_cycle
from sceneloc.mapping.structure.triangulate import TriangulationConfig, triangulate_scene
from sceneloc.maps.landmark_map import FORMAT, FORMAT_VERSION, SCENE_TRAINED_VERSION, LandmarkMap
from sceneloc.nn.encoders import load_encoder
from sceneloc.nn.encoders.base import STRIDE
from sceneloc.nn.heads.landmark import LandmarkHead, LandmarkHeadConfig, heatmap_peaks
from sceneloc.runtime.device import autocast, check_precision, resolve_precision, storage_dtype
from sceneloc.runtime.errors import InputError
from sceneloc.runtime.memory import peak_rss_mb
from sceneloc.runtime.progress import make_progress


BACKBONES = ("frozen", "scratch")
"""LandmarkMapConfig.backbone's choices."""


@dataclass
class LandmarkMapConfig:
    """How a landmark map is built (`sceneloc map --type landmarks`)."""

    triangulation: TriangulationConfig = field(default_factory=TriangulationConfig)
    """SIFT, pairs from poses, matching and triangulation: the points landmarks are chosen from."""
    num_landmarks: int = 300
    """Landmarks per scene (SLD*: about 1,000 in 8 heads; the fast-training paper: 100-200 in one head)."""
    min_track_length: int = 3
    """Points seen by fewer mapping frames are not candidates."""
    encoder: str = "xfeat"
    """The frozen shared backbone (sceneloc.nn.encoders)."""
    backbone: str = "frozen"
    """"frozen": the pretrained shared encoder, only the head trains (SLD*'s fast regime); "scratch": the encoder's
    architecture re-initialised and trained with the head on this scene alone (the slow regime, for comparison)."""
    image_height: int = 240
    """Working image height, pixels (mapping and queries). The head's cost grows with the cells: at 480 px a
    training step takes 3-5x longer than at 240 px (docs/BENCHMARKS.md)."""
    head: LandmarkHeadConfig = field(default_factory=LandmarkHeadConfig)
    """The heatmap head's shape."""
    views_per_frame: int = 2
    """Augmented views of every mapping frame encoded into the buffer."""
    iterations: int = 3000
    """Training steps, unless max_view_epochs allows fewer."""
    max_view_epochs: float = 100.0
    """Training stops after this many passes over the buffer's views even before `iterations` steps (at least 100
    steps are run), so that a scene of a few images maps in a minute instead of fitting the same views thousands of
    times: quick-room's 600 views get 40 passes in 3,000 steps, a 10-image Strecha fold 250 steps."""
    batch_views: int = 8
    """Buffer views per training step."""
    lr_start: float = 2e-4
    """Learning rate at the start of the one-cycle schedule."""
    lr_max: float = 2e-3
    """Peak learning rate (after a quarter of the steps)."""
    lr_end: float = 1e-6
    """Learning rate at the end."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    sigma_cells: float = 1.0
    """Width of the Gaussian target around a landmark's projection, in cells (8 px of the working image)."""
    positive_weight: float = 50.0
    """Loss weight of a cell is 1 + positive_weight x its target: a landmark's few cells against the thousands of
    background cells of its heatmap. The weight depends on the target only, so the optimum stays sigmoid = target."""
    depth_tolerance: float = 0.05
    """A landmark is visible in a frame with depth when its distance and the depth there differ by at most this
    fraction."""
    aug_scale_min: float = 0.8
    """Smallest random scale of a buffer view."""
    aug_scale_max: float = 1.25
    """Largest random scale of a buffer view."""
    aug_rotation_deg: float = 5.0
    """Largest random in-plane rotation of a buffer view, degrees."""
    aug_brightness: float = 0.2
    """Largest random brightness shift, as a fraction of 255."""
    aug_contrast: float = 0.2
    """Largest random relative contrast change."""
    precision: str = "auto"
    """Numeric precision of the encoder and head: "auto", "bf16" or "fp32" (sceneloc.runtime.device)."""
    seed: int = 0
    """Seed of triangulation, augmentation, initialisation and batches."""

    def to_dict(self) -> dict:
        return asdict(self)

    def validate(self) -> None:
        """ValueError naming the first setting that cannot work; runs before any work."""
        self.head.validate()
        check_precision(self.precision)
        if not np.isfinite(self.max_view_epochs):
            raise ValueError(f"max_view_epochs must be finite, got {self.max_view_epochs}")
        if self.triangulation.num_neighbors < 1 or self.triangulation.max_num_features < 1:
            raise ValueError("triangulation.num_neighbors and triangulation.max_num_features must be >= 1")
        if self.backbone not in BACKBONES:
            raise ValueError(f"unknown backbone {self.backbone!r} (use {' or '.join(BACKBONES)})")
        for name in ("num_landmarks", "min_track_length", "views_per_frame", "iterations", "batch_views"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.image_height < STRIDE:
            raise ValueError(f"image_height must be at least {STRIDE} (one encoder cell), got {self.image_height}")
        for name in ("lr_start", "lr_max", "lr_end", "sigma_cells", "depth_tolerance", "max_view_epochs"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("weight_decay", "positive_weight", "aug_rotation_deg", "aug_brightness", "aug_contrast"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0 < self.aug_scale_min <= self.aug_scale_max:
            raise ValueError(f"need 0 < aug_scale_min <= aug_scale_max, got {self.aug_scale_min}, "
                             f"{self.aug_scale_max}")


@dataclass
class ViewBuffer:
    """The training views: each an augmented mapping frame's frozen feature map and its landmark targets."""

    features: list[torch.Tensor]
    """Per view (C, h, w) in the storage dtype (bfloat16 where it runs fast, else float32); with a trained backbone
    the view's image instead, (3, H, W) uint8, of (h, w) = (ceil(H / 8), ceil(W / 8)) cells."""
    valid: list[torch.Tensor]
    """Per view (h, w) bool: cells whose centre came from the source image (rotation leaves empty corners)."""
    visible: list[torch.Tensor]
    """Per view (V,) int64 ids of the landmarks it sees."""
    cells: list[torch.Tensor]
    """Per view (V, 2) float32 cell coordinates (column, row) of those landmarks."""
    unknown: list[torch.Tensor]
    """Per view (U,) int64 ids of landmarks of unknown visibility there (no loss on their heatmaps)."""

    def __len__(self) -> int:
        return len(self.features)

    def cells_shape(self, view: int) -> tuple[int, int]:
        """(h, w) cells of a view's feature map."""
        h, w = self.valid[view].shape
        return h, w


def frame_tracks(observation_point: np.ndarray, observation_frame: np.ndarray, landmark_points: np.ndarray,
                 n_frames: int) -> np.ndarray:
    """(F, L) bool: frame f's SIFT observed landmark l's point (from the triangulation's observations)."""
    column = np.full(int(observation_point.max(initial=-1)) + 1, -1, np.int64)
    column[landmark_points] = np.arange(len(landmark_points))
    track = np.zeros((n_frames, len(landmark_points)), bool)
    keep = column[observation_point] >= 0
    track[observation_frame[keep], column[observation_point[keep]]] = True
    return track


@torch.no_grad()
def build_view_buffer(scene: Scene, landmarks: np.ndarray, tracks: np.ndarray, encoder, config: LandmarkMapConfig,
                      device: torch.device, progress) -> ViewBuffer:
    """Encode config.views_per_frame augmented views of every mapping frame (keep the images themselves when the
    backbone trains) and where each sees the landmarks (L, 3); tracks: frame_tracks of the landmarks."""
    rng = np.random.default_rng(config.seed)
    dtype = storage_dtype(config.precision, device)
    order = [i for _ in range(config.views_per_frame) for i in rng.permutation(len(scene.frames))]
    buffer = ViewBuffer([], [], [], [], [])
    task = progress.add_task("encoding mapping views", total=len(order), info="")
    for frame_id in order:
        frame = scene.frames[frame_id]
        uv, state = visibility(landmarks, frame.camera, frame.cam_from_world, frame.load_depth(), tracks[frame_id],
                               config.depth_tolerance)
        view = augment_image(frame.load_rgb(), frame.camera, config.image_height, rng,
                             (config.aug_scale_min, config.aug_scale_max), config.aug_rotation_deg,
                             config.aug_brightness, config.aug_contrast)
        image = torch.from_numpy(view.rgb).permute(2, 0, 1)
        h, w = -(-image.shape[1] // STRIDE), -(-image.shape[2] // STRIDE)
        if config.backbone == "frozen":
            with autocast(device, config.precision):
                fmap = encoder(image[None].to(device))[0].to(dtype).cpu()
        ids, cells, unknown = view_targets(uv, state, view.homography, view.valid)
        centre_rows = np.minimum(np.arange(h) * STRIDE + STRIDE // 2, view.valid.shape[0] - 1)
        centre_cols = np.minimum(np.arange(w) * STRIDE + STRIDE // 2, view.valid.shape[1] - 1)
        buffer.features.append(fmap if config.backbone == "frozen" else image.contiguous())
        buffer.valid.append(torch.from_numpy(view.valid[np.ix_(centre_rows, centre_cols)]))
        buffer.visible.append(torch.from_numpy(ids))
        buffer.cells.append(torch.from_numpy(cells))
        buffer.unknown.append(torch.from_numpy(unknown))
        progress.update(task, advance=1, info=f"{len(ids)} landmarks visible")
    return buffer


def batch_tensors(buffer: ViewBuffer, views: list[int], num_landmarks: int, sigma_cells: float
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(features (B, C, H, W) or, for a buffer of images, images (B, 3, 8H, 8W), targets (B, L, H, W), loss mask
    (B, L, H, W) float32, inside (B, 1, H, W) float32: each view's cells) of buffer `views`, padded to the largest
    view (views differ in size by the scale augmentation): features with zeros (the head zeroes its activations
    outside `inside`), images by repeating their last row and column, as the encoder pads a query; the mask is 0
    on padding, invalid cells and the heatmaps of landmarks of unknown visibility."""
    H = max(buffer.cells_shape(v)[0] for v in views)
    W = max(buffer.cells_shape(v)[1] for v in views)
    first = buffer.features[views[0]]
    scale = 1 if first.dtype != torch.uint8 else STRIDE
    features = torch.zeros(len(views), first.shape[0], H * scale, W * scale, dtype=first.dtype)
    targets = torch.zeros(len(views), num_landmarks, H, W)
    mask = torch.zeros(len(views), num_landmarks, H, W)
    inside = torch.zeros(len(views), 1, H, W)
    for b, v in enumerate(views):
        h, w = buffer.cells_shape(v)
        data = buffer.features[v]
        if scale > 1:
            pad = (0, features.shape[3] - data.shape[2], 0, features.shape[2] - data.shape[1])
            data = F.pad(data[None].float(), pad, mode="replicate")[0].to(data.dtype)
        features[b, :, :data.shape[1], :data.shape[2]] = data
        inside[b, :, :h, :w] = 1.0
        targets[b, :, :h, :w] = render_heatmaps(buffer.visible[v], buffer.cells[v], num_landmarks, (h, w),
                                                sigma_cells)
        mask[b, :, :h, :w] = buffer.valid[v].float()
        mask[b, buffer.unknown[v]] = 0.0
    return features, targets, mask, inside


def heatmap_loss(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor, positive_weight: float
                 ) -> torch.Tensor:
    """Weighted mean binary cross-entropy of heatmap logits against Gaussian targets (all (B, L, H, W)), each cell
    weighted by mask x (1 + positive_weight x target)."""
    weight = mask * (1.0 + positive_weight * targets)
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    return (weight * bce).sum() / weight.sum().clamp(min=1.0)


def peak_errors_px(logits: torch.Tensor, buffer: ViewBuffer, views: list[int]) -> torch.Tensor:
    """Distances in working-image pixels between the heatmap peaks (heatmap_peaks) and the true projections of
    every visible landmark of the batch's views."""
    errors = []
    for b, v in enumerate(views):
        ids = buffer.visible[v]
        if len(ids):
            h, w = buffer.cells_shape(v)
            pixels, _ = heatmap_peaks(logits[b, ids, :h, :w].detach())
            truth = buffer.cells[v] * STRIDE + (STRIDE - 1) / 2
            errors.append(torch.linalg.norm(pixels - truth, dim=1))
    return torch.cat(errors) if errors else torch.zeros(0)


def training_steps(config: LandmarkMapConfig, n_views: int) -> int:
    """config.iterations, capped at max_view_epochs passes of batch_views views over the buffer (at least 100)."""
    cap = int(np.ceil(config.max_view_epochs * n_views / config.batch_views))
    return max(min(config.iterations, cap), min(config.iterations, 100))


def train_landmark_head(head: LandmarkHead, buffer: ViewBuffer, config: LandmarkMapConfig, device: torch.device,
                        progress, encoder=None) -> tuple[float, dict, list[dict]]:
    """training_steps steps of the shared one-cycle loop on random batches of buffer views; `encoder` (a buffer
    of images: the backbone trained with the head) or None (a buffer of features). Statistics per step: visible
    (landmarks per view), peak_px (median peak error of the visible landmarks, pixels)."""
    generator = torch.Generator().manual_seed(config.seed)
    num_landmarks = head.num_landmarks
    order: list[int] = []

    def next_views() -> list[int]:
        nonlocal order
        if len(order) < config.batch_views:
            order += torch.randperm(len(buffer), generator=generator).tolist()
        views, order = order[:config.batch_views], order[config.batch_views:]
        return views

    def batch_loss(_: float) -> tuple[torch.Tensor, dict]:
        views = next_views()
        features, targets, mask, inside = batch_tensors(buffer, views, num_landmarks, config.sigma_cells)
        with autocast(device, config.precision):
            # A trained backbone runs its features() with gradients; its batch norms keep their running statistics
            # (Encoder.train is always eval), so they act as learnt affine layers.
            inputs = features.to(device) if encoder is None else encoder.features(features.to(device).float() / 255)
            logits = head(inputs, inside.to(device))
        loss = heatmap_loss(logits, targets.to(device), mask.to(device), config.positive_weight)
        errors = peak_errors_px(logits, buffer, views)
        return loss, {"visible": float(np.mean([len(buffer.visible[v]) for v in views])),
                      "peak_px": float(errors.median()) if len(errors) else float("nan")}

    parameters = list(head.parameters()) + ([] if encoder is None else list(encoder.parameters()))
    return train_one_cycle([{"params": parameters}], config.weight_decay, training_steps(config, len(buffer)),
                           (config.lr_start, config.lr_max, config.lr_end), batch_loss, lambda t: 0.0, progress,
                           "training landmark head" + ("" if encoder is None else " and backbone"),
                           lambda loss, stats, _: f"loss {loss:.4f} visible {stats['visible']:.0f} "
                                                  f"peak {stats['peak_px']:.1f}px")


def build_landmark_map(scene: Scene, config: LandmarkMapConfig, device: torch.device,
                       show_progress: bool = True) -> LandmarkMap:
    """Triangulate, select landmarks, fill the view buffer, train the head (module docstring). Raises InputError
    for a scene without frames or poses, or one where no landmark can be chosen. Deterministic for a seed on a
    given device and thread count."""
    config.validate()
    if not scene.frames:
        raise InputError(scene.root, "scene has no frames")
    scene.require_poses()
    torch.manual_seed(config.seed)
    t0 = time.perf_counter()
    model = triangulate_scene(scene, replace(config.triangulation, seed=config.seed), show_progress)
    t_triangulated = time.perf_counter()
    candidates = np.flatnonzero(model.track_lengths >= config.min_track_length)
    if len(candidates) < 4:
        raise InputError(scene.root, f"only {len(candidates)} triangulated points are seen by at least "
                                     f"{config.min_track_length} mapping frames: too few for landmarks")
    centers = np.array([f.cam_from_world.center for f in scene.frames])
    chosen, radius = select_landmarks(model.points[candidates], saliency(model, centers)[candidates],
                                      config.num_landmarks)
    points = candidates[chosen]
    landmarks = model.points[points].astype(np.float64)
    tracks = frame_tracks(model.observation_point, model.observation_frame, points, len(scene.frames))
    t_selected = time.perf_counter()

    encoder = load_encoder(config.encoder)
    trained = None
    if config.backbone == "scratch":
        trained = copy.deepcopy(encoder)  # load_encoder's instance is shared (and frozen)
        for module in trained.modules():
            if module is not trained and hasattr(module, "reset_parameters"):
                module.reset_parameters()
        trained.requires_grad_(True).to(device)
    encoder.to(device)
    head = LandmarkHead(encoder.out_channels, len(points), config.head).to(device)
    with make_progress(show_progress) as progress:
        buffer = build_view_buffer(scene, landmarks, tracks, encoder, config, device, progress)
        t_encoded = time.perf_counter()
        loss, stats, history = train_landmark_head(head, buffer, config, device, progress, trained)
    t_trained = time.perf_counter()
    head.eval()
    seen = np.array([len(v) for v in buffer.visible])
    build = {"n_triangulated": len(model.points), "n_candidates": len(candidates), "n_landmarks": len(points),
             "min_distance_m": radius, "visible_per_view": {"min": int(seen.min()), "median": float(np.median(seen)),
                                                            "max": int(seen.max())},
             "n_views": len(buffer), "steps": training_steps(config, len(buffer)), "final_loss": loss,
             "final_peak_px": stats.get("peak_px", float("nan")), "history": history,
             "precision": resolve_precision(config.precision, device), "device": str(device),
             "peak_rss_mb": peak_rss_mb(),
             # points_s: SIFT, matching and triangulation together (their parts: sift_s, match_s, triangulate_s).
             "timings": {**model.stats.get("timings", {}), "points_s": t_triangulated - t0,
                         "select_s": t_selected - t_triangulated, "encode_s": t_encoded - t_selected,
                         "train_s": t_trained - t_encoded, "total_s": t_trained - t0}}
    metadata = {"format": FORMAT, "format_version": FORMAT_VERSION, "sceneloc_version": __version__,
                "encoder": {"name": encoder.name,
                            "version": encoder.version if trained is None else SCENE_TRAINED_VERSION},
                "head": config.head.to_dict(),
                "image_height": config.image_height, "scene": {"name": scene.name, "n_frames": len(scene.frames)},
                "config": config.to_dict(), "build": build}
    if trained is not None:
        trained.requires_grad_(False).eval()
    return LandmarkMap(head, torch.from_numpy(landmarks.astype(np.float32)), config.encoder, config.image_height,
                       metadata, trained)
