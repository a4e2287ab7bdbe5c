"""The Encoder interface: RGB images in, a stride-8 feature map out, weights frozen."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torch import nn
import torch.nn.functional as F

STRIDE = 8


class Encoder(nn.Module):
    """Subclasses set `name`, `out_channels` and implement `features`. The encoder is frozen (eval, no grad).

    Pixel (u, v) of the input (OpenCV convention) belongs to feature cell (v // 8, u // 8), whose centre is pixel
    (8 * col + 3.5, 8 * row + 3.5)."""

    name: str = ""
    out_channels: int = 0
    stride: int = STRIDE

    def __init__(self, weights_path: Path):
        super().__init__()
        self.weights_path = Path(weights_path)
        self.weights_sha256 = hashlib.sha256(self.weights_path.read_bytes()).hexdigest()[:16]

    @property
    def version(self) -> str:
        """Identifies the exact weights: a map trained on one encoder version must not be used with another."""
        return f"{self.name}@{self.weights_sha256}"

    def features(self, rgb: torch.Tensor) -> torch.Tensor:
        """rgb: (B, 3, H, W) float in [0, 1], H and W multiples of 8 -> (B, C, H/8, W/8)."""
        raise NotImplementedError

    @torch.no_grad()
    def forward(self, rgb_uint8: torch.Tensor) -> torch.Tensor:
        """rgb_uint8: (B, 3, H, W) uint8 (any H, W) -> (B, C, ceil(H/8), ceil(W/8)) float32.

        The image is padded on the bottom/right to a multiple of 8 so that cell centres stay at 8 * i + 3.5."""
        h, w = rgb_uint8.shape[-2:]
        pad_h, pad_w = (-h) % STRIDE, (-w) % STRIDE
        x = rgb_uint8.float() / 255.0
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
        return self.features(x).float()

    def train(self, mode: bool = True):  # frozen: batch-norm statistics must never update
        return super().train(False)
