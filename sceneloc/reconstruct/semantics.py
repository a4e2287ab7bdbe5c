"""Semantic labels of reconstructions (CDRNet's semantic part, issue 17 part 3): the segmentation model (the shared
frozen encoder and nn/heads/segmentation.py's head), its training on the package's procedural rooms, whose renderer
knows the class of every surface (data/synthetic/room.SEMANTIC_CLASSES), its model file, and its 2D evaluation on
rendered views (the metrics are evaluate/semantic.py's). fusion.py fuses the per-pixel class probabilities into the
TSDF grid and gives each vertex a label.

Training views: for every "preset:seed" room, frames spread evenly along its mapping path, rendered at the working
size (image_height rows, the preset's aspect ratio) with a label and a depth per pixel (the head reads the
frame's geometry as well as its features: nn/heads/segmentation.py says why); the depth is made noisy and holed
per batch. The encoder runs once per view (frozen);
the head is trained with class-weighted cross-entropy on its logits upsampled to the full image. The rooms use
seeds that no benchmark suite and no other trained model of the package uses, so a suite's scenes are never trained
on; the validation rooms are other seeds again."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from sceneloc import __version__
from sceneloc.data.synthetic.room import SEMANTIC_CLASSES, UNLABELLED
from sceneloc.evaluate.semantic import confusion_matrix, segmentation_scores
from sceneloc.encode import feature_maps, prepare_image, working_size
from sceneloc.geometry import Camera
from sceneloc.nn.encoders import load_encoder
from sceneloc.nn.heads.segmentation import (SegmentationHead, SegmentationHeadConfig, cell_depth, geometry_channels,
                                            ray_channels, upsample_logits)
from sceneloc.runtime.progress import make_progress

SHIPPED_MODEL = Path(__file__).with_name("segmentation.safetensors")
MODEL_FORMAT, MODEL_FORMAT_VERSION = "sceneloc-segmentation", 1


@dataclass
class SegmentationTrainingConfig:
    """`sceneloc train-segmentation`: which rooms, how many views, how long to train."""

    scenes: list[str] = field(default_factory=lambda: [f"{p}:{s}" for p in ("quick-room", "office", "stairs",
                                                                             "lowtex", "hall") for s in (30, 31, 32)])
    """Training rooms, "preset:seed" (sceneloc.data.synthetic.PRESETS); seeds 30-39 are this model's alone."""
    validation: list[str] = field(default_factory=lambda: [f"{p}:39" for p in ("quick-room", "office", "stairs",
                                                                                 "lowtex", "hall")])
    """Held-out rooms of the mIoU report, "preset:seed"."""
    views_per_scene: int = 24
    """Views rendered per room, spread evenly along its mapping path."""
    image_height: int = 240
    """Working image height: views are rendered, and frames segmented, at this height."""
    encoder: str = "xfeat"
    """The frozen encoder whose feature maps the head reads."""
    head: SegmentationHeadConfig = field(default_factory=SegmentationHeadConfig)
    """Shape of the head."""
    steps: int = 3000
    """Optimiser steps."""
    batch_views: int = 8
    """Views per step."""
    lr_start: float = 1e-4
    """Learning rate at the first step."""
    lr_max: float = 2e-3
    """Peak learning rate of the one-cycle schedule."""
    lr_end: float = 1e-6
    """Learning rate at the last step."""
    depth_noise: float = 0.03
    """Training views' depth is multiplied by 1 + depth_noise x a standard normal per cell, and..."""
    depth_dropout: float = 0.1
    """... this share of its cells loses its depth: the depth reconstruction fuses (plane sweep, a map's) is never
    the renderer's exact one."""
    class_weight_power: float = 0.5
    """Class c's loss weight is (its share of the training pixels)^-power, normalised: 0 weighs every pixel alike;
    0.5 lifts the rare classes (stairs, furniture tops) that mIoU counts as much as the floor."""
    seed: int = 0
    """Seed of the initial weights and the batch draws."""

    def to_dict(self) -> dict:
        return asdict(self)

    def validate(self) -> None:
        """ValueError for a setting out of range or a scene name that is not "preset:seed"."""
        from sceneloc.data.synthetic import parse_scene_name

        self.head.validate()
        if not self.scenes:
            raise ValueError("scenes must not be empty")
        for name in [*self.scenes, *self.validation]:
            parse_scene_name(name)
        for name in ("views_per_scene", "image_height", "steps", "batch_views"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not (0 < self.lr_start and 0 < self.lr_max and 0 < self.lr_end and self.class_weight_power >= 0):
            raise ValueError("learning rates must be positive and class_weight_power not negative")
        if not (self.depth_noise >= 0 and 0 <= self.depth_dropout < 1):
            raise ValueError("depth_noise must be >= 0 and depth_dropout in [0, 1)")


@dataclass
class LabelledViews:
    """Rendered views of one room with their labels, at the working size."""

    name: str
    rgb: np.ndarray
    """(N, h, w, 3) uint8."""
    labels: np.ndarray
    """(N, h, w) uint8 class indices, UNLABELLED where no surface was hit."""
    depth: np.ndarray
    """(N, h, w) float32 z-depth, metres (0 where no surface was hit)."""
    camera: Camera
    """The working camera of every view."""


def render_labelled_views(name: str, views: int, image_height: int) -> LabelledViews:
    """Render `views` frames spread evenly along the mapping path of the generated room "preset:seed"."""
    from sceneloc.data.synthetic import PRESETS, generate_room, mapping_trajectory, parse_scene_name, render_view

    preset, seed = parse_scene_name(name)
    config = PRESETS[preset].with_seed(seed)
    room = generate_room(config.room)
    poses = mapping_trajectory(room, config.n_map, config.room.seed, config.trajectory)
    full = config.camera()
    camera = full.scaled(*working_size(full, image_height))
    chosen = np.linspace(0, len(poses) - 1, views).round().astype(int)
    rendered = [render_view(room, camera, poses[i], config.supersampling) for i in chosen]
    return LabelledViews(name, np.stack([r.rgb for r in rendered]), np.stack([r.labels for r in rendered]),
                         np.stack([r.depth for r in rendered]), camera)


class SegmentationModel:
    """The segmentation head, the encoder it reads and how it was trained. probabilities() segments one frame."""

    def __init__(self, head: SegmentationHead, encoder: str, image_height: int, training: dict | None = None):
        self.head, self.encoder, self.image_height = head.eval(), encoder, image_height
        self.training = training or {}

    @property
    def classes(self) -> tuple[str, ...]:
        return SEMANTIC_CLASSES

    @torch.no_grad()
    def logits(self, images: np.ndarray, depths: np.ndarray, camera: Camera,
               device: torch.device | None = None) -> torch.Tensor:
        """(N, h, w, 3) uint8 working images of one camera and their (N, h', w') depth, metres (0: none; any size
        of the image's aspect, e.g. the frame's own) -> (N, K, h, w) float32 class logits."""
        device = device or torch.device("cpu")
        h, w = images.shape[1:3]
        depths = torch.from_numpy(np.ascontiguousarray(depths, np.float32))
        if depths.shape[1:] != (h, w):  # to the working size, nearest: depth must not blend across edges
            depths = F.interpolate(depths[:, None], size=(h, w), mode="nearest")[:, 0]
        rays = ray_channels(camera, h, w)[None].expand(len(images), -1, -1, -1)
        geometry = geometry_channels(rays, cell_depth(depths)).to(device)
        features = (feature_maps(load_encoder(self.encoder), list(images), device)
                    if self.head.config.use_features else None)
        return upsample_logits(self.head.to(device)(features, geometry), h, w)

    def probabilities(self, rgb: np.ndarray, depth: np.ndarray, camera: Camera,
                      device: torch.device | None = None) -> np.ndarray:
        """(H, W, 3) uint8 frame taken with `camera` and its (H, W) depth, metres (0: none) -> (H, W, K) float32
        class probabilities: segmented at the working height, upsampled bilinearly to the frame."""
        image, working = prepare_image(rgb, camera, self.image_height)
        logits = self.logits(image[None], depth[None], working, device)
        if image.shape[:2] != rgb.shape[:2]:
            logits = F.interpolate(logits, size=rgb.shape[:2], mode="bilinear", align_corners=False)
        return torch.softmax(logits[0], 0).permute(1, 2, 0).cpu().numpy()

    def save(self, path: str | Path) -> None:
        """fp16 safetensors weights plus JSON metadata (format, classes, encoder, head shape, training record),
        written atomically."""
        from safetensors.torch import save_file

        from sceneloc.maps.files import save_map_file

        tensors = {k: v.half().detach().contiguous() for k, v in self.head.state_dict().items()}
        metadata = {"format": MODEL_FORMAT, "format_version": MODEL_FORMAT_VERSION, "sceneloc_version": __version__,
                    "classes": list(SEMANTIC_CLASSES), "encoder": self.encoder, "image_height": self.image_height,
                    "head": self.head.config.to_dict(), "training": self.training}
        save_map_file(path, tensors, metadata, save_file)


def load_segmentation(path: str | Path = SHIPPED_MODEL) -> SegmentationModel:
    """The segmentation model in `path` (default: the one shipped); InputError for anything else."""
    from safetensors.torch import load_file

    from sceneloc.maps.files import config_from_metadata, load_map_file, metadata_field
    from sceneloc.runtime.errors import InputError

    tensors, meta = load_map_file(path, "segmentation model", MODEL_FORMAT, MODEL_FORMAT_VERSION, load_file)
    if metadata_field(path, meta, "classes", list) != list(SEMANTIC_CLASSES):
        raise InputError(path, f"labels other classes than {', '.join(SEMANTIC_CLASSES)}")
    head_config = config_from_metadata(path, SegmentationHeadConfig, metadata_field(path, meta, "head", dict), "head")
    encoder = metadata_field(path, meta, "encoder", str)
    try:
        head_config.validate()
        head = SegmentationHead(load_encoder(encoder).out_channels, len(SEMANTIC_CLASSES), head_config)
        head.load_state_dict({k: v.float() for k, v in tensors.items()})
    except (ValueError, RuntimeError) as error:
        raise InputError(path, f"weights do not fit the model: {str(error).splitlines()[0]}") from None
    return SegmentationModel(head, encoder, metadata_field(path, meta, "image_height", int),
                             meta.get("training") if isinstance(meta.get("training"), dict) else {})


def evaluate_views(model: SegmentationModel, views: list[LabelledViews], batch: int = 8) -> dict:
    """2D scores (segmentation_scores) of `model` over every view, pooled, and per room."""
    total = np.zeros((len(SEMANTIC_CLASSES),) * 2, np.int64)
    per_scene = {}
    for v in views:
        conf = np.zeros_like(total)
        for i in range(0, len(v.rgb), batch):
            predicted = model.logits(v.rgb[i:i + batch], v.depth[i:i + batch], v.camera).argmax(1).numpy()
            conf += confusion_matrix(predicted, v.labels[i:i + batch], len(SEMANTIC_CLASSES))
        per_scene[v.name] = segmentation_scores(conf)
        total += conf
    return {**segmentation_scores(total), "scenes": per_scene}


def train_segmentation(config: SegmentationTrainingConfig, show_progress: bool = True
                       ) -> tuple[SegmentationModel, dict]:
    """Render the training and validation rooms, train the head on the frozen encoder's features -> (model, record:
    the config, timings, the final loss and the validation scores)."""
    from sceneloc.mapping.optimise import train_one_cycle

    config.validate()
    t0 = time.perf_counter()
    train = [render_labelled_views(n, config.views_per_scene, config.image_height) for n in config.scenes]
    held_out = [render_labelled_views(n, config.views_per_scene, config.image_height) for n in config.validation]
    render_s = time.perf_counter() - t0
    encoder = load_encoder(config.encoder)
    device = torch.device("cpu")
    with torch.no_grad():
        features = (torch.cat([feature_maps(encoder, list(v.rgb[i:i + 8]), device).half()
                               for v in train for i in range(0, len(v.rgb), 8)]) if config.head.use_features
                    else None)
    rays = torch.cat([ray_channels(v.camera, *v.rgb.shape[1:3])[None].expand(len(v.rgb), -1, -1, -1)
                      for v in train])
    depths = cell_depth(torch.from_numpy(np.concatenate([v.depth for v in train])))
    labels = torch.from_numpy(np.concatenate([v.labels for v in train]))  # uint8, UNLABELLED where no surface
    counts = torch.bincount(labels[labels < len(SEMANTIC_CLASSES)].long(), minlength=len(SEMANTIC_CLASSES)).double()
    share = (counts / counts.sum()).clamp_min(1e-4)
    weight = (share ** -config.class_weight_power).float()
    weight = weight / (weight * share.float()).sum()  # the mean weight of a training pixel is 1
    torch.manual_seed(config.seed)
    head = SegmentationHead(encoder.out_channels, len(SEMANTIC_CLASSES), config.head)
    generator = torch.Generator().manual_seed(config.seed)
    h, w = labels.shape[1:]

    def batch_loss(_threshold):
        rows = torch.randint(len(depths), (config.batch_views,), generator=generator)
        depth = depths[rows]
        noise = 1 + config.depth_noise * torch.randn(depth.shape, generator=generator)
        kept = torch.rand(depth.shape, generator=generator) >= config.depth_dropout
        geometry = geometry_channels(rays[rows], depth * noise * kept)
        logits = upsample_logits(head(None if features is None else features[rows], geometry), h, w)
        return F.cross_entropy(logits, labels[rows].long(), weight=weight, ignore_index=UNLABELLED), {}

    t1 = time.perf_counter()
    head.train()
    with make_progress(show_progress) as progress:
        loss, _, history = train_one_cycle(
            [{"params": list(head.parameters())}], 0.0, config.steps, (config.lr_start, config.lr_max, config.lr_end),
            batch_loss, lambda t: 0.0, progress, "training segmentation",
            info=lambda loss, stats, thr: f"cross-entropy {loss:.3f}")
    train_s = time.perf_counter() - t1
    model = SegmentationModel(head, config.encoder, config.image_height)
    record = {"config": config.to_dict(), "views": int(len(depths)), "class_share": share.tolist(),
              "class_weight": weight.tolist(), "final_loss": loss, "history": history, "render_s": render_s,
              "train_s": train_s, "threads": torch.get_num_threads(),
              "validation": evaluate_views(model, held_out) if held_out else None}
    model.training = record
    return model, record
