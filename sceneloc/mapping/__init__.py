"""Mapping: turn a posed Scene into a trained head (buffer of encoder features -> reprojection-loss training)."""

from sceneloc.mapping.config import MappingConfig
from sceneloc.mapping.trainer import TrainingSummary, add_keypoints, build_scene_map, train_scene

__all__ = ["MappingConfig", "TrainingSummary", "add_keypoints", "build_scene_map", "train_scene"]
