"""Encoder registry: name -> constructor. The default is the one that measured best (docs/BENCHMARKS.md)."""

from __future__ import annotations

from typing import Callable

from sceneloc.nn.encoders.base import Encoder
from sceneloc.nn.encoders.efficientnet_lite import EfficientNetLite0Encoder
from sceneloc.nn.encoders.xfeat import XFeatContextEncoder, XFeatEncoder

ENCODERS: dict[str, Callable[[], Encoder]] = {
    XFeatEncoder.name: XFeatEncoder,
    XFeatContextEncoder.name: XFeatContextEncoder,
    EfficientNetLite0Encoder.name: EfficientNetLite0Encoder,
}
DEFAULT_ENCODER = XFeatEncoder.name

_cache: dict[str, Encoder] = {}


def load_encoder(name: str) -> Encoder:
    """A frozen encoder instance (cached per process). Raises ValueError for an unknown name."""
    if name not in ENCODERS:
        raise ValueError(f"unknown encoder {name!r}; available: {', '.join(ENCODERS)}")
    if name not in _cache:
        _cache[name] = ENCODERS[name]()
    return _cache[name]
