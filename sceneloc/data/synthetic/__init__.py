"""Procedural textured rooms for demos, tests and benchmarks: generation (room, optionally with a staircase),
ray-cast rendering of RGB, depth and scene coordinates (render), hand-held-like mapping and query paths
(trajectory), and ACE-style folders with the ground-truth mesh and named presets (folder)."""

from sceneloc.data.synthetic.folder import (MESH_FILE, PRESETS, SyntheticScene, SyntheticSceneConfig, frame_name,
                                            parse_scene_name, render_scene_to_folder, write_frame, write_mesh)
from sceneloc.data.synthetic.render import RenderedView, render_view
from sceneloc.data.synthetic.room import Block, Room, RoomConfig, StaircaseConfig, generate_room
from sceneloc.data.synthetic.trajectory import TrajectoryConfig, mapping_trajectory, query_trajectory

__all__ = ["MESH_FILE", "PRESETS", "Block", "RenderedView", "Room", "RoomConfig", "StaircaseConfig",
           "SyntheticScene", "SyntheticSceneConfig", "TrajectoryConfig", "frame_name", "generate_room",
           "mapping_trajectory", "parse_scene_name", "query_trajectory", "render_scene_to_folder", "render_view",
           "write_frame", "write_mesh"]
