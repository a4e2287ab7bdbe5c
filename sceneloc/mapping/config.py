"""MappingConfig: every knob of buffer construction and training, with the measured defaults."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from sceneloc.runtime.device import check_precision
from sceneloc.nn.encoders import DEFAULT_ENCODER
from sceneloc.nn.encoders.base import STRIDE
from sceneloc.nn.heads import HeadConfig, KeypointNetConfig


@dataclass
class KeypointConfig:
    """Keypoint classification network and keypoint-guided fine-tuning (keypoint paper, sections 2.2 and 3), run
    after the head is trained. Labels come from the trained head: a buffer row is a keypoint when its prediction
    reprojects within label_repro_px of its pixel and, where depth is known, lies within label_max_3d_m of the
    depth point."""

    enabled: bool = False
    """Train a keypoint network (stored in the map; localization then gives RANSAC only likely keypoints)."""
    net: KeypointNetConfig = field(default_factory=KeypointNetConfig)
    """Shape of the keypoint network."""
    label_repro_px: float = 5.0
    """Reprojection error (pixels of the working image) below which a row is a keypoint."""
    label_max_3d_m: float = 0.1
    """3D error (metres) below which a row with known depth may be a keypoint."""
    iterations: int = 2000
    """Optimisation steps of the keypoint network."""
    batch_size: int = 4096
    """Rows per step of the keypoint network."""
    lr_max: float = 5e-3
    """Peak learning rate of the keypoint network's one-cycle schedule (the paper: train fast with a large rate)."""
    lr_start: float = 1e-4
    """Starting learning rate of that schedule (the paper's initial rate)."""
    fine_tune_iterations: int = 0
    """Steps of keypoint-guided fine-tuning of the head (0: none), on the buffer rows the keypoint network ranks
    highest (fine_tune_top_fraction of them)."""
    fine_tune_lr_start: float = 5e-5
    """Learning rate at the start and end of the fine-tuning one-cycle schedule (the paper's lower bound)."""
    fine_tune_lr_max: float = 6e-4
    """Peak learning rate of fine-tuning (the paper's upper bound)."""
    fine_tune_top_fraction: float = 0.5
    """Fraction of the buffer, the rows of highest keypoint probability, that fine-tuning trains on. A rank rather
    than a probability threshold: where keypoints are rare the probabilities rarely pass 0.5, but their order is
    still informative."""


@dataclass
class MappingConfig:
    """How a scene is mapped. Defaults were chosen by measurement on the benchmark scenes (docs/BENCHMARKS.md)."""

    encoder: str = DEFAULT_ENCODER
    """Frozen feature encoder (see `sceneloc.nn.encoders.ENCODERS`)."""
    head: HeadConfig = field(default_factory=HeadConfig)
    """Shape of the regression head."""
    image_height: int = 480
    """Images are resized to this height (aspect kept) before encoding, for mapping and localization alike."""
    buffer_size: int = 1_000_000
    """Feature rows sampled into the training buffer (spread evenly over the mapping frames)."""
    max_buffer_passes: int = 4
    """Each mapping frame is encoded with fresh augmentation as many times as it takes to fill the buffer, at most
    this often (small scenes get more augmented views instead of repeating the same rows)."""
    iterations: int = 10_000
    """Optimisation steps in total (the buffer is reshuffled after each pass over it), unless max_buffer_epochs
    allows fewer."""
    max_buffer_epochs: float = 16.0
    """Training stops after this many passes over the buffer even before `iterations` steps, so a scene of a few
    images (a small buffer) maps in seconds instead of fitting the same rows hundreds of times. ACE trains 16
    passes over its buffer; a 1M-row buffer at batch 1024 reaches 10,000 steps long before that."""
    batch_size: int = 1024
    """Feature rows per optimisation step. On a CPU, more small steps beat fewer large ones for a fixed time."""
    lr_start: float = 5e-4
    """Learning rate at the start of the one-cycle schedule."""
    lr_max: float = 2e-3
    """Peak learning rate of the one-cycle schedule (reached after a quarter of the steps)."""
    lr_end: float = 1e-6
    """Learning rate at the end: annealing to almost zero is what brings the final sub-pixel fit."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    aug_scale_min: float = 0.8
    """Smallest random image scale factor of the augmentation. Narrower than ACE's 2/3..3/2: our frozen XFeat
    features change with scale and rotation, so every augmented view is a new input for the head, and ACE's ranges
    cost more fit than they gain (docs/BENCHMARKS.md, section 4)."""
    aug_scale_max: float = 1.25
    """Largest random image scale factor of the augmentation."""
    aug_rotation_deg: float = 5.0
    """Random in-plane rotation range (+-), with the pose rotated to match (ACE: 15)."""
    aug_brightness: float = 0.2
    """Random brightness change (+- fraction)."""
    aug_contrast: float = 0.2
    """Random contrast change (+- fraction)."""
    repro_threshold_start: float = 50.0
    """Robust tanh threshold (pixels) at the start of training; it shrinks to `repro_threshold_end`."""
    repro_threshold_end: float = 1.0
    """Robust tanh threshold (pixels) at the end of training."""
    min_depth: float = 0.1
    """Predictions closer than this (metres, camera z) are invalid."""
    max_depth: float = 1000.0
    """Predictions farther than this (metres) are invalid."""
    max_reprojection_error: float = 1000.0
    """Predictions reprojecting farther than this (pixels) are invalid."""
    invalid_target_depth: float = 10.0
    """Invalid predictions are pulled towards the point at this depth on their pixel ray."""
    use_depth: bool = True
    """When frames have depth, add a 3D scene-coordinate loss on the rows with valid depth."""
    depth_loss_weight: float = 1.0
    """Weight of the 3D loss, measured in pixels-equivalent (focal x error / depth) so it matches the reprojection
    term."""
    keypoints: KeypointConfig = field(default_factory=KeypointConfig)
    """Keypoint network and keypoint-guided fine-tuning (off by default)."""
    seed: int = 0
    """Seed for sampling, augmentation, initialisation and shuffling."""
    precision: str = "auto"
    """Numeric precision of encoding and training: "auto" (bfloat16 on CPUs with AMX/AVX512-BF16, float16 on CUDA,
    else float32), "bf16" or "fp32". The buffer stores features in the same precision (float32 doubles its
    memory). The precision that ran is recorded in the map (training.precision)."""

    def to_dict(self) -> dict:
        return asdict(self)

    def validate(self) -> None:
        """Raise ValueError naming the first field that cannot work (counts and sizes below 1, negative rates,
        weights or block counts, bad ranges); it runs before any work, so that a typo fails in a second rather
        than as a traceback (or a silently useless map) after the encoding."""
        head, kp = self.head, self.keypoints
        for name, value in [("iterations", self.iterations), ("buffer_size", self.buffer_size),
                            ("max_buffer_passes", self.max_buffer_passes), ("batch_size", self.batch_size),
                            ("head.width", head.width), ("head.layers_per_block", head.layers_per_block),
                            ("head.num_output_layers", head.num_output_layers),
                            ("keypoints.iterations", kp.iterations), ("keypoints.batch_size", kp.batch_size),
                            ("keypoints.net.width", kp.net.width), ("keypoints.net.num_layers", kp.net.num_layers)]:
            if value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        for name, value in [("head.num_blocks", head.num_blocks),
                            ("keypoints.fine_tune_iterations", kp.fine_tune_iterations), ("seed", self.seed)]:
            if value < 0:
                raise ValueError(f"{name} must be at least 0, got {value}")
        if self.image_height < STRIDE:
            raise ValueError(f"image_height must be at least {STRIDE} (one encoder cell), got "
                             f"{self.image_height}")
        check_precision(self.precision)
        # `not value > 0` (rather than value <= 0) also refuses NaN.
        for name, value in [("max_buffer_epochs", self.max_buffer_epochs), ("lr_start", self.lr_start),
                            ("lr_max", self.lr_max), ("lr_end", self.lr_end),
                            ("repro_threshold_end", self.repro_threshold_end),
                            ("max_reprojection_error", self.max_reprojection_error),
                            ("invalid_target_depth", self.invalid_target_depth),
                            ("keypoints.lr_start", kp.lr_start), ("keypoints.lr_max", kp.lr_max),
                            ("keypoints.fine_tune_lr_start", kp.fine_tune_lr_start),
                            ("keypoints.fine_tune_lr_max", kp.fine_tune_lr_max),
                            ("keypoints.label_repro_px", kp.label_repro_px),
                            ("keypoints.label_max_3d_m", kp.label_max_3d_m)]:
            if not (value > 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be a positive number, got {value}")
        for name, value in [("weight_decay", self.weight_decay), ("depth_loss_weight", self.depth_loss_weight),
                            ("aug_rotation_deg", self.aug_rotation_deg)]:
            if not (value >= 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be zero or positive, got {value}")
        for name, value in [("aug_brightness", self.aug_brightness), ("aug_contrast", self.aug_contrast)]:
            if not 0 <= value < 1:
                raise ValueError(f"{name} must lie in [0, 1) (a fraction of the range), got {value}")
        if not 0 < kp.fine_tune_top_fraction <= 1:
            raise ValueError(f"keypoints.fine_tune_top_fraction must lie in (0, 1], got {kp.fine_tune_top_fraction}")
        if not self.repro_threshold_start >= self.repro_threshold_end:
            raise ValueError(f"repro_threshold_start must be at least repro_threshold_end, got "
                             f"{self.repro_threshold_start} < {self.repro_threshold_end}")
        if not 0 < head.min_inverse_scale < head.max_inverse_scale:
            raise ValueError(f"head.min_inverse_scale..max_inverse_scale must be a positive range, got "
                             f"{head.min_inverse_scale}..{head.max_inverse_scale}")
        if not 0 < self.aug_scale_min <= self.aug_scale_max:
            raise ValueError(f"aug_scale_min..aug_scale_max must be a positive range, got "
                             f"{self.aug_scale_min}..{self.aug_scale_max}")
        if not 0 < self.min_depth < self.max_depth:
            raise ValueError(f"min_depth..max_depth must be a positive range, got {self.min_depth}..{self.max_depth}")

    @staticmethod
    def from_dict(d: dict) -> "MappingConfig":
        d = dict(d)
        head = HeadConfig(**d.pop("head", {}))
        keypoints = dict(d.pop("keypoints", {}))
        net = KeypointNetConfig(**keypoints.pop("net", {}))
        return MappingConfig(head=head, keypoints=KeypointConfig(net=net, **keypoints), **d)
