"""Peer relocalizers: the alternatives users would pick instead of sceneloc, built from the field's libraries so
that `sceneloc bench` can compare against them on the same scenes."""

from sceneloc.peers.colmap_sift import ColmapSiftConfig, SiftMap, build_sift_map, localize_image, localize_scene

__all__ = ["ColmapSiftConfig", "SiftMap", "build_sift_map", "localize_image", "localize_scene"]
