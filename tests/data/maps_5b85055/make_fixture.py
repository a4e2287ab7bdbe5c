"""Run at commit 5b85055 (before issue 13) with a rendered 20-frame tiny-room at ROOM: a tiny single-scene and
multi-scene map, and what the code of that commit computes with them (fixtures of tests/test_map_compat.py).

    PYTHONPATH=<checkout of 5b85055> python make_fixture.py OUT_DIR ROOM
"""

import json
import sys
from dataclasses import replace

import numpy as np
import torch

from sceneloc.data import read_scene
from sceneloc.localize import LocalizeConfig, localize_scene
from sceneloc.mapping import MappingConfig, build_scene_map
from sceneloc.mapping.multi_scene import MultiSceneConfig, build_multi_scene_map
from sceneloc.maps import SceneMap
from sceneloc.multi_maps import MultiSceneMap
from sceneloc.nn.heads import HeadConfig
from sceneloc.nn.heads.scinr import normalised_positions

torch.set_num_threads(1)
out, room = sys.argv[1], sys.argv[2]
scene = read_scene(room, split="train")
no_augmentation = dict(aug_scale_min=1.0, aug_scale_max=1.0, aug_rotation_deg=0.0, aug_brightness=0.0,
                       aug_contrast=0.0)
config = MappingConfig(image_height=120, buffer_size=20000, iterations=1500, max_buffer_epochs=1000,
                       head=HeadConfig(width=128), **no_augmentation)
scene_map, _ = build_scene_map(scene, config, torch.device("cpu"), show_progress=False)
scene_map.save(f"{out}/single_v1.map")
scene_map = SceneMap.load(f"{out}/single_v1.map")
features = torch.randn(64, 64, generator=torch.Generator().manual_seed(0))
np.save(f"{out}/features.npy", features.numpy())
with torch.no_grad():
    np.save(f"{out}/single_coords.npy", scene_map.head(features).numpy())

multi_config = MultiSceneConfig()
multi_config.mapping = replace(config, iterations=200, head=HeadConfig(width=64, num_blocks=1))
multi_config.model.width = 64
multi_config.model.modulation_width = 64
scene_a = read_scene(room, split="train")
scene_a.name = "a"
scene_b = read_scene(room, split="train")
scene_b.name = "b"
scene_b.frames = scene_b.frames[:10]
multi_map, _ = build_multi_scene_map([scene_a, scene_b], multi_config, torch.device("cpu"), show_progress=False)
multi_map.save(f"{out}/multi_v2.multimap")
multi_map = MultiSceneMap.load(f"{out}/multi_v2.multimap")
K = np.array([[100.0, 0, 80], [0, 100.0, 60], [0, 0, 1]])
pixels = np.stack(np.meshgrid(np.arange(8) * 8 + 3.5, np.arange(8) * 8 + 3.5), -1).reshape(-1, 2)
np.save(f"{out}/pixels.npy", pixels)
with torch.no_grad():
    coords = multi_map.head(features, normalised_positions(pixels, K), torch.full((64,), 1, dtype=torch.int64))
    np.save(f"{out}/multi_coords.npy", coords.numpy())

estimates = localize_scene(scene_map, scene, LocalizeConfig(), torch.device("cpu"), show_progress=False)
poses = {e.name: [*e.cam_from_world.qvec_wxyz.tolist(), *e.cam_from_world.translation.tolist()]
         for e in estimates[:5]}
with open(f"{out}/single_poses_bf16.json", "w") as f:
    json.dump(poses, f, indent=1)
