"""The map kinds sceneloc writes and loads: the file container every kind shares (files.py), the single-scene map
(scene_map.py) and the multi-scene map (multi_scene_map.py)."""
