"""sceneloc: learn a scene from posed RGB images, then relocalize new images (scene coordinate regression)."""

__version__ = "0.1.0"
