"""Per-feature scene-coordinate regression head: an MLP on (N, C) feature rows with residual blocks and an
optional homogeneous output, offset by the mean mapping camera centre.

The ACE-style head (one input layer, a residual block, a short output MLP) and the deeper residual head of the
keypoint paper (six blocks, five output layers) are two configurations of this one module."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn
import torch.nn.functional as F


@dataclass
class HeadConfig:
    """Shape of the regression head."""

    width: int = 512
    """Hidden width of every layer."""
    num_blocks: int = 1
    """Residual blocks after the input layer; each has `layers_per_block` layers and a skip connection."""
    layers_per_block: int = 3
    """Linear+ReLU layers inside one residual block."""
    num_output_layers: int = 3
    """Layers of the final MLP, the last one producing the 4 (homogeneous) or 3 output channels."""
    homogeneous: bool = True
    """Predict (x, y, z, w) and divide by a clamped positive w, so far points need only small outputs."""
    min_inverse_scale: float = 0.01
    """Lower bound of w: predictions can reach 1 / min_inverse_scale times the raw output."""
    max_inverse_scale: float = 4.0
    """Upper bound of w."""

    def to_dict(self) -> dict:
        return asdict(self)


class RegressionHead(nn.Module):
    """features (N, C) -> world scene coordinates (N, 3). `mean` (3,) is the mean mapping camera centre."""

    def __init__(self, in_channels: int, config: HeadConfig, mean: torch.Tensor | None = None):
        super().__init__()
        self.config = config
        w = config.width
        self.input_layer = nn.Linear(in_channels, w)
        self.blocks = nn.ModuleList(
            nn.ModuleList(nn.Linear(w, w) for _ in range(config.layers_per_block)) for _ in range(config.num_blocks))
        out = [nn.Linear(w, w) for _ in range(config.num_output_layers - 1)]
        out.append(nn.Linear(w, 4 if config.homogeneous else 3))
        self.output_layers = nn.ModuleList(out)
        self.register_buffer("mean", torch.zeros(3) if mean is None else mean.detach().float().clone().reshape(3))

    reads_positions = False
    """The pixel positions of forward() are not used (SCINR's can be)."""

    def forward(self, features: torch.Tensor, positions: torch.Tensor | None = None,
                scene: torch.Tensor | None = None) -> torch.Tensor:
        """features (N, C) -> world coordinates (N, 3). positions and scene are taken for the signature every head
        shares (ScinrHead's) and ignored: this head knows one scene."""
        x = F.relu(self.input_layer(features))
        for block in self.blocks:
            y = x
            for layer in block:
                y = F.relu(layer(y))
            x = x + y
        for layer in self.output_layers[:-1]:
            x = F.relu(layer(x))
        # The output layer runs in float32: bfloat16's 8-bit mantissa would quantise coordinates to ~0.4 %.
        with torch.autocast(features.device.type, enabled=False):
            out = self.output_layers[-1](x.float())
        if self.config.homogeneous:
            w = (F.softplus(out[:, 3:4]) + self.config.min_inverse_scale).clamp(max=self.config.max_inverse_scale)
            out = out[:, :3] / w
        return out + self.mean
