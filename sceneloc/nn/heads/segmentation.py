"""The semantic segmentation head of reconstruction (issue 17, part 3): on the frozen stride-8 feature map of the
shared backbone plus each cell's geometry, the landmark head's dilated residual blocks, then a 1x1 convolution
giving one logit per class.

Geometry (geometry_channels, GEOMETRY_CHANNELS per cell): the viewing ray ((u - cx) / fx, (v - cy) / fy), whether the
frame's depth has a value there, the camera-frame point (x, y, z) metres and the camera-frame surface normal from the
depth. Reconstruction has a depth for every frame it labels (the one it fuses), and a surface's class in a room
depends on where it is and which way it faces more than on its texture: a generated room's floor, walls and
furniture show photos of any kind, a real room's floor can look like its walls. With a hand-held camera that stays
roughly level, a point's height below the camera (its y) and its normal tell floor from table top from wall; unlike
pixel rows they mean the same for any intrinsics."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

from sceneloc.encode import cell_centres
from sceneloc.geometry import Camera
from sceneloc.nn.encoders.base import STRIDE
from sceneloc.nn.heads.landmark import DilatedBlock, check_dilated_shape


@dataclass
class SegmentationHeadConfig:
    """Shape of the segmentation head."""

    width: int = 64
    """Channels of every hidden layer."""
    dilations: list[int] = field(default_factory=lambda: [1, 2, 4, 8])
    """One dilated block per entry (DilatedBlock); 1, 2, 4, 8 give a 31-cell (248 px) receptive field on top of the
    backbone's: most of a 320 x 240 working image, the context that tells a table top from the floor."""
    use_features: bool = False
    """Also read the encoder's feature map. Off by default: on the held-out rooms the geometry alone scored 86.0 %
    mIoU and geometry with the frozen XFeat features 75.6 % (docs/BENCHMARKS.md 19); the features let the head
    memorise the training rooms' photo textures."""
    feature_dropout: float = 0.5
    """Share of the encoder's channels zeroed per view in training (Dropout2d; none at inference): a few rooms'
    textures are easy to memorise, and the head is to lean on the geometry and the context that carry over."""

    def to_dict(self) -> dict:
        return asdict(self)

    def validate(self) -> None:
        """ValueError naming the first setting that cannot work."""
        check_dilated_shape(self.width, self.dilations)
        if not 0 <= self.feature_dropout < 1:
            raise ValueError(f"head.feature_dropout must be in [0, 1), got {self.feature_dropout}")


GEOMETRY_CHANNELS = 9
"""Per cell: ray (2), depth valid (1), camera-frame point (3), camera-frame normal (3)."""


def ray_channels(camera: Camera, height: int, width: int) -> torch.Tensor:
    """(2, ceil(h/8), ceil(w/8)) float32: the viewing ray ((u - cx) / fx, (v - cy) / fy) at each stride-8 cell
    centre of a (height, width) image taken with `camera`."""
    centres = cell_centres(height, width)
    rays = np.stack([(centres[:, 0] - camera.cx) / camera.fx, (centres[:, 1] - camera.cy) / camera.fy])
    return torch.from_numpy(rays.reshape(2, -(-height // STRIDE), -(-width // STRIDE)).astype(np.float32))


def cell_depth(depth: torch.Tensor) -> torch.Tensor:
    """(B, H, W) depth, metres (0: none) -> (B, ceil(H/8), ceil(W/8)): the depth at the pixel nearest each cell
    centre (8j + 3.5, 8i + 3.5), rounded down-right."""
    rows = torch.arange(STRIDE // 2, depth.shape[1] + STRIDE // 2, STRIDE).clamp_max(depth.shape[1] - 1)
    cols = torch.arange(STRIDE // 2, depth.shape[2] + STRIDE // 2, STRIDE).clamp_max(depth.shape[2] - 1)
    return depth[:, rows][:, :, cols]


def geometry_channels(rays: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
    """rays (B, 2, h, w) (ray_channels) and cell depths (B, h, w) metres (cell_depth; 0: none) -> (B,
    GEOMETRY_CHANNELS, h, w): the rays, the valid mask, the camera-frame points and unit normals (the cross product of
    the point map's central differences, turned towards the camera; 0 where a neighbour has no depth)."""
    valid = (depth > 0).float()
    points = torch.cat([rays, torch.ones_like(rays[:, :1])], 1) * depth[:, None]
    padded = F.pad(points, (1, 1, 1, 1), mode="replicate")
    ok = F.pad(valid[:, None], (1, 1, 1, 1), mode="replicate")  # the image's edge: one-sided differences
    d_col = padded[:, :, 1:-1, 2:] - padded[:, :, 1:-1, :-2]
    d_row = padded[:, :, 2:, 1:-1] - padded[:, :, :-2, 1:-1]
    normal = torch.cross(d_col, d_row, dim=1)
    normal = normal / normal.norm(dim=1, keepdim=True).clamp_min(1e-9)
    normal = normal * torch.where((normal * points).sum(1, keepdim=True) > 0, -1.0, 1.0)
    has_neighbours = (valid[:, None] * ok[:, :, 1:-1, 2:] * ok[:, :, 1:-1, :-2] * ok[:, :, 2:, 1:-1]
                      * ok[:, :, :-2, 1:-1])
    return torch.cat([rays, valid[:, None], points, normal * has_neighbours], 1)


class SegmentationHead(nn.Module):
    """(features (B, C, h, w) or None, geometry (B, GEOMETRY_CHANNELS, h, w)) -> class logits (B, K, h, w)
    float32 at stride 8; upsample_logits brings them to the image."""

    def __init__(self, in_channels: int, num_classes: int, config: SegmentationHeadConfig):
        super().__init__()
        config.validate()
        if num_classes < 2:
            raise ValueError(f"a segmentation head needs at least two classes, got {num_classes}")
        self.config = config
        self.num_classes = num_classes
        self.dropout = nn.Dropout2d(config.feature_dropout)
        self.in_channels = in_channels if config.use_features else 0
        self.input_layer = nn.Conv2d(self.in_channels + GEOMETRY_CHANNELS, config.width, 1)
        self.blocks = nn.Sequential(*[DilatedBlock(config.width, d) for d in config.dilations])
        self.output_layer = nn.Conv2d(config.width, num_classes, 1)

    def forward(self, features: torch.Tensor | None, geometry: torch.Tensor) -> torch.Tensor:
        """features: (B, C, h, w), or None when config.use_features is off."""
        x = geometry.float()
        if self.config.use_features:
            x = torch.cat([self.dropout(features.float()), x], 1)
        x = self.blocks(self.input_layer(x))
        return self.output_layer(F.relu(x))


def upsample_logits(logits: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(B, K, h, w) stride-8 logits -> (B, K, height, width), bilinear. Cell (i, j) is centred on pixel
    (8j + 3.5, 8i + 3.5), exactly where interpolate's half-pixel convention puts it at a factor of 8; the cells
    a partial last row or column adds are cropped."""
    h, w = logits.shape[-2:]
    up = F.interpolate(logits, size=(h * STRIDE, w * STRIDE), mode="bilinear", align_corners=False)
    return up[..., :height, :width]
