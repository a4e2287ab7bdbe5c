"""Trainable heads on top of frozen encoder features."""

from sceneloc.nn.heads.keypoint import KeypointNet, KeypointNetConfig
from sceneloc.nn.heads.regression import HeadConfig, RegressionHead
from sceneloc.nn.heads.scinr import ScinrConfig, ScinrHead

__all__ = ["HeadConfig", "KeypointNet", "KeypointNetConfig", "RegressionHead", "ScinrConfig", "ScinrHead"]
