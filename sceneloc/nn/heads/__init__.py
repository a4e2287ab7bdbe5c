"""Trainable heads on top of frozen encoder features."""

from sceneloc.nn.heads.regression import HeadConfig, RegressionHead

__all__ = ["HeadConfig", "RegressionHead"]
