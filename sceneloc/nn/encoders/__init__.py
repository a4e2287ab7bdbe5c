"""Registry of frozen, pretrained, stride-8 dense feature encoders loaded offline from installed wheels."""

from sceneloc.nn.encoders.base import Encoder
from sceneloc.nn.encoders.registry import DEFAULT_ENCODER, ENCODERS, load_encoder

__all__ = ["Encoder", "ENCODERS", "DEFAULT_ENCODER", "load_encoder"]
