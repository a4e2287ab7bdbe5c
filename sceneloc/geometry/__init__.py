"""Cameras, rigid transforms and pose-error metrics (numpy, float64)."""

from sceneloc.geometry.camera import Camera
from sceneloc.geometry.rigid import Rigid3
from sceneloc.geometry.metrics import pose_errors

__all__ = ["Camera", "Rigid3", "pose_errors"]
