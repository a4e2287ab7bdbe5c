"""Scenes and frames, and one reader module per input format. `read_scene` picks the reader by layout."""

from sceneloc.data.scene import Frame, Scene
from sceneloc.data.readers import read_scene

__all__ = ["Frame", "Scene", "read_scene"]
