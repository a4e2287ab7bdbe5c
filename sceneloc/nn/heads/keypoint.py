"""Keypoint classification network (keypoint paper, section 2.2): a small MLP on the frozen encoder features that
estimates the probability that a feature's scene coordinate is accurate enough to be a RANSAC inlier."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn
import torch.nn.functional as F


@dataclass
class KeypointNetConfig:
    """Shape of the keypoint classification network."""

    width: int = 512
    """Hidden width of every layer."""
    num_layers: int = 4
    """Linear layers in total (ReLU between them); the last one produces the single logit."""

    def to_dict(self) -> dict:
        return asdict(self)


class KeypointNet(nn.Module):
    """features (N, C) -> keypoint logits (N,); `probabilities` applies the sigmoid. Trained with a logit loss
    (binary cross-entropy with logits), which is the numerically stable form of sigmoid + BCE."""

    def __init__(self, in_channels: int, config: KeypointNetConfig):
        super().__init__()
        self.config = config
        widths = [in_channels] + [config.width] * (config.num_layers - 1) + [1]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = features
        for layer in self.layers[:-1]:
            x = F.relu(layer(x))
        with torch.autocast(features.device.type, enabled=False):
            return self.layers[-1](x.float())[:, 0]

    def probabilities(self, features: torch.Tensor) -> torch.Tensor:
        """(N, C) -> (N,) float32 in [0, 1]."""
        return torch.sigmoid(self(features))
