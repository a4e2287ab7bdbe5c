"""The scene landmark detector's per-scene head (SLD*, the fast-training variant): on the frozen stride-8 feature map
of the shared backbone, residual blocks of a dilated 3x3 convolution and a 1x1 "skip connection" block, then a 1x1
convolution giving one heatmap per landmark; and the heatmap's sub-pixel peak.

Heatmaps are logits at stride 8 (cell (i, j) centred on pixel (8j + 3.5, 8i + 3.5)); sigmoid(logit) is trained to
be a Gaussian of the landmark's projection (mapping/landmarks/targets.py), so its peak value is the detection's
confidence and the peak's position is read to a fraction of a cell (heatmap_peaks)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
from torch import nn
import torch.nn.functional as F

from sceneloc.nn.encoders.base import STRIDE

PRIOR_PROBABILITY = 0.01
"""Initial sigmoid of every heatmap cell (the output bias): almost every cell of almost every landmark's heatmap
is background, so training starts there instead of at 0.5 (CenterNet's prior)."""


@dataclass
class LandmarkHeadConfig:
    """Shape of the landmark heatmap head."""

    width: int = 128
    """Channels of every hidden layer."""
    dilations: list[int] = field(default_factory=lambda: [2, 4])
    """One block per entry: a 3x3 convolution with this dilation, then a block of two 1x1 convolutions, each with
    a skip connection. The paper's head has two blocks; dilations 2 and 4 give a 13-cell (104 px) receptive field
    on top of the backbone's."""

    def to_dict(self) -> dict:
        return asdict(self)

    def validate(self) -> None:
        """ValueError naming the first setting that cannot work."""
        check_dilated_shape(self.width, self.dilations)


def check_dilated_shape(width: int, dilations: list[int]) -> None:
    """ValueError unless `width` channels and `dilations` make a stack of DilatedBlocks (head.width, head.dilations)."""
    if width < 1:
        raise ValueError(f"head.width must be >= 1, got {width}")
    if not dilations or any(d < 1 for d in dilations):
        raise ValueError(f"head.dilations must be a non-empty list of integers >= 1, got {dilations}")


class DilatedBlock(nn.Module):
    """x + conv3x3_d(relu(x)), then y + conv1x1(relu(conv1x1(relu(y))))."""

    def __init__(self, width: int, dilation: int):
        super().__init__()
        self.dilated = nn.Conv2d(width, width, 3, padding=dilation, dilation=dilation)
        self.skip = nn.Sequential(nn.ReLU(), nn.Conv2d(width, width, 1), nn.ReLU(), nn.Conv2d(width, width, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.dilated(F.relu(x))
        return x + self.skip(x)


class LandmarkHead(nn.Module):
    """Feature maps (B, C, h, w) -> heatmap logits (B, L, h, w) float32, one channel per landmark.

    forward's `inside` (B, 1, h, w), for batches of views padded to one size: the cells of each view; the layers'
    activations are zeroed outside them after every layer, so that a padded view's border cells see the zeros a
    view alone gets from the convolutions' own padding (not the input layer's bias)."""

    def __init__(self, in_channels: int, num_landmarks: int, config: LandmarkHeadConfig):
        super().__init__()
        config.validate()
        if num_landmarks < 1:
            raise ValueError(f"a landmark head needs at least one landmark, got {num_landmarks}")
        self.config = config
        self.num_landmarks = num_landmarks
        self.input_layer = nn.Conv2d(in_channels, config.width, 1)
        self.blocks = nn.ModuleList(DilatedBlock(config.width, d) for d in config.dilations)
        self.output_layer = nn.Conv2d(config.width, num_landmarks, 1)
        nn.init.constant_(self.output_layer.bias, math.log(PRIOR_PROBABILITY / (1 - PRIOR_PROBABILITY)))

    def forward(self, features: torch.Tensor, inside: torch.Tensor | None = None) -> torch.Tensor:
        def crop(x: torch.Tensor) -> torch.Tensor:
            return x if inside is None else x * inside.to(x.dtype)

        x = crop(self.input_layer(features))
        for block in self.blocks:
            x = crop(block(x))
        # The output layer runs in float32, as every head's: the peak's sub-cell position is read from ratios of
        # neighbouring cells, which bfloat16's 8-bit mantissa would blur.
        with torch.autocast(features.device.type, enabled=False):
            return self.output_layer(F.relu(x).float())


def cell_to_pixel(cells: torch.Tensor) -> torch.Tensor:
    """(..., 2) continuous cell coordinates (column, row) -> pixels (u, v): cell (j, i) is centred on pixel
    (8j + 3.5, 8i + 3.5)."""
    return cells * STRIDE + (STRIDE - 1) / 2


def pixel_to_cell(pixels: torch.Tensor) -> torch.Tensor:
    """The inverse of cell_to_pixel."""
    return (pixels - (STRIDE - 1) / 2) / STRIDE


def heatmap_peaks(logits: torch.Tensor, valid: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Each heatmap's strongest cell, refined to a fraction of a cell.

    logits: (L, h, w) heatmap logits; valid: optional (h, w) bool, the cells a peak may lie in.
    Returns (pixels (L, 2) float32 (u, v) of the peaks, confidence (L,) float32: the sigmoid at the peak cell).

    Sub-cell refinement: along each axis a parabola through the log-probabilities of the peak cell and its two
    neighbours, whose vertex is exact for a Gaussian (the training target); the offset is clamped to half a cell
    and taken as 0 at the border, where a neighbour is missing."""
    L, h, w = logits.shape
    logp = F.logsigmoid(logits.float())
    flat = logp.reshape(L, -1)
    if valid is not None:
        flat = flat.masked_fill(~valid.reshape(1, -1).to(flat.device), float("-inf"))
    best, index = flat.max(1)
    rows, cols = index // w, index % w
    padded = F.pad(logp, (1, 1, 1, 1), value=float("nan"))
    ar = torch.arange(L, device=logits.device)

    def offset(before: torch.Tensor, centre: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
        curvature = before - 2 * centre + after
        step = 0.5 * (before - after) / curvature
        ok = torch.isfinite(step) & (curvature < 0)
        return torch.where(ok, step.clamp(-0.5, 0.5), torch.zeros_like(step))

    centre = padded[ar, rows + 1, cols + 1]
    dx = offset(padded[ar, rows + 1, cols], centre, padded[ar, rows + 1, cols + 2])
    dy = offset(padded[ar, rows, cols + 1], centre, padded[ar, rows + 2, cols + 1])
    cells = torch.stack([cols.float() + dx, rows.float() + dy], 1)
    return cell_to_pixel(cells), best.exp()
