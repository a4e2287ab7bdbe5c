"""The one localize loop (sceneloc.localize.loop): both map kinds through one pipeline, which gives the poses of the old
sequential loop; scene identification by retrieval ("auto") against trying every scene; multi-scene maps written
without scene descriptors.

Three tiny rooms (seeds 0-2, 40 mapping and 10 query frames at 160x120, the query path close to the mapping path)
are mapped once per module: a single-scene map of room 0 (200 steps) and one SCINR map of all three (200 steps per
room), both at a 120 px working height without augmentation, on one thread."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from conftest import torch_threads
from sceneloc.data import read_scene
from sceneloc.data.scene import Scene
from sceneloc.data.synthetic import PRESETS, render_scene_to_folder
from sceneloc.data.synthetic.trajectory import TrajectoryConfig
from sceneloc.runtime.device import autocast
from sceneloc.encode import encode_query
from sceneloc.runtime.errors import InputError
from sceneloc.localize.loop import (LocalizeConfig, SceneMapPredictor, localize_frames, localize_image, localize_scene,
                               most_probable, solve_image)
from sceneloc.localize.multi_scene import (MultiScenePredictor, identification_accuracy, localize_multi_image,
                                     localize_multi_scene, predict_multi_scene_coordinates)
from sceneloc.maps.files import METADATA_KEY
from sceneloc.mapping import MappingConfig, build_scene_map
from sceneloc.mapping.multi_scene import MultiSceneConfig, build_multi_scene_map
from sceneloc.maps.multi_scene_map import DESCRIPTOR_PREFIX, MultiSceneMap
from sceneloc.nn.heads import KeypointNet, KeypointNetConfig
from sceneloc.nn.heads.scinr import ScinrConfig

CPU = torch.device("cpu")
OLD_MAPS = Path(__file__).parent / "data" / "maps_5b85055"
NO_AUGMENTATION = dict(aug_scale_min=1.0, aug_scale_max=1.0, aug_rotation_deg=0.0)

pytestmark = pytest.mark.usefixtures("one_thread")
"""One torch thread for every test here (conftest.torch_threads)."""


@pytest.fixture(scope="module")
def rooms(tmp_path_factory, one_thread) -> tuple[list[Scene], list[Scene]]:
    """(mapping scenes, query scenes) of rooms 0-2, named room0..room2."""
    root = tmp_path_factory.mktemp("rooms")
    near_path = TrajectoryConfig(query_offset_m=0.05, query_height_m=0.03, query_yaw_deg=5.0, query_pitch_deg=2.0)
    config = dataclasses.replace(PRESETS["tiny-room"], n_map=40, n_query=10, trajectory=near_path)
    mapping, queries = [], []
    for seed in range(3):
        render_scene_to_folder(config.with_seed(seed), root / f"room{seed}", progress=False)
        for split, scenes in (("train", mapping), ("test", queries)):
            scene = read_scene(root / f"room{seed}", split)
            scenes.append(Scene(f"room{seed}", scene.root, scene.frames))
    return mapping, queries


def _mapping_config() -> MappingConfig:
    return MappingConfig(image_height=120, buffer_size=20_000, max_buffer_passes=1, iterations=200, batch_size=1024,
                         **NO_AUGMENTATION)


@pytest.fixture(scope="module")
def single_map(rooms):
    """Room 0's map, with an (untrained) keypoint network so that keypoint selection runs too."""
    scene_map, _ = build_scene_map(rooms[0][0], _mapping_config(), CPU, show_progress=False)
    torch.manual_seed(0)
    return dataclasses.replace(scene_map, keypoint_net=KeypointNet(64, KeypointNetConfig()).eval())


@pytest.fixture(scope="module")
def multi_map(rooms) -> MultiSceneMap:
    config = MultiSceneConfig(mapping=_mapping_config(),
                              model=ScinrConfig(width=128, modulation_width=128, hypernet_width=32, embedding_dim=16,
                                                complement_width=16))
    multi_map, _ = build_multi_scene_map(rooms[0], config, CPU, show_progress=False)
    return multi_map


def _same(a, b) -> bool:
    """Two estimates with the same pose (exactly) and inliers."""
    if (a.cam_from_world is None) != (b.cam_from_world is None) or a.num_inliers != b.num_inliers:
        return False
    return a.cam_from_world is None or np.array_equal(a.cam_from_world.matrix(), b.cam_from_world.matrix())


def _old_single(scene_map, frame, config: LocalizeConfig):
    """What localize_image computed before the one loop: encode, head and keypoint network, keypoint selection,
    RANSAC, called one after the other."""
    features, pixels, camera = encode_query(scene_map.encoder_name, scene_map.image_height, frame.load_rgb(),
                                            frame.camera, CPU, config.precision)
    with torch.no_grad(), autocast(CPU, config.precision):
        coords = scene_map.head(features).float().numpy().astype(np.float64)
        prob = scene_map.keypoint_net.probabilities(features).float().numpy()
    keep = most_probable(prob, config.keypoint_top_fraction)
    return solve_image(pixels[keep], coords[keep], camera, config)


@pytest.mark.parametrize("precision", ["fp32", "auto"])
def test_the_loop_gives_the_poses_of_the_old_sequential_calls(rooms, single_map, precision):
    query = rooms[1][0]
    config = LocalizeConfig(precision=precision)
    old = [_old_single(single_map, frame, config) for frame in query.frames]
    for pipeline in (False, True):
        estimates = localize_scene(single_map, query, dataclasses.replace(config, pipeline=pipeline, batch_size=1),
                                   CPU, show_progress=False)
        assert [e.name for e in estimates] == [f.name for f in query.frames]
        for estimate, result in zip(estimates, old):
            assert estimate.num_inliers == result.num_inliers
            assert np.array_equal(estimate.cam_from_world.matrix(), result.cam_from_world.matrix())
            assert estimate.details["n_correspondences"] == len(result.inlier_mask)
    # Most of these views localize: the comparison is between real poses, not failures.
    assert sum(r.cam_from_world is not None for r in old) >= 8


def test_pipelined_loop_equals_the_sequential_one(rooms, single_map):
    query = rooms[1][0]
    config = LocalizeConfig(precision="bf16")
    sequential = localize_scene(single_map, query, dataclasses.replace(config, pipeline=False), CPU,
                                show_progress=False)
    single = [localize_image(single_map, f.name, f.load_rgb(), f.camera, config, CPU) for f in query.frames]
    batched = localize_scene(single_map, query, dataclasses.replace(config, batch_size=4, decode_workers=3), CPU,
                             show_progress=False)
    assert all(_same(a, b) for a, b in zip(sequential, single))
    assert [e.details["encode_batch"] for e in batched] == [4] * 8 + [2] * 2
    # float32 convolutions round differently in a batch: there the pipeline encodes one image at a time.
    fp32 = LocalizeConfig(precision="fp32", batch_size=4)
    with torch_threads(2):  # and the single-image path uses the pipeline's thread count (float32 rounding)
        piped = localize_scene(single_map, query, fp32, CPU, show_progress=False)
        alone = [localize_image(single_map, f.name, f.load_rgb(), f.camera, fp32, CPU) for f in query.frames]
    assert all(e.details["encode_batch"] == 1 for e in piped)
    assert all(_same(a, b) for a, b in zip(piped, alone))
    # A batched encoder pass may round differently from single images (not on the CPUs tried): poses to a
    # micrometre, inliers to one.
    for a, b in zip(sequential, batched):
        assert abs(a.num_inliers - b.num_inliers) <= 1
        assert np.abs(a.cam_from_world.matrix() - b.cam_from_world.matrix()).max() < 1e-6
    for estimate in batched:
        details = estimate.details
        assert all(details[k] > 0 for k in ("decode_ms", "encode_ms", "head_ms", "solver_ms", "time_ms"))
        assert details["time_ms"] == batched[0].details["time_ms"]  # the run's wall time per image
        assert details["n_cells"] == 20 * 15


@dataclasses.dataclass
class _Cropped:
    """A frame cut to its left `width` columns (what localize_frames needs of a frame: name, camera, load_rgb)."""

    frame: object
    width: int

    @property
    def name(self) -> str:
        return f"{self.frame.name}@{self.width}"

    @property
    def camera(self):
        return dataclasses.replace(self.frame.camera, width=self.width)

    def load_rgb(self) -> np.ndarray:
        return np.ascontiguousarray(self.frame.load_rgb()[:, :self.width])


def test_batches_hold_images_of_one_size(rooms, single_map):
    frames = rooms[1][0].frames
    mixed = [frames[0], frames[1], _Cropped(frames[2], 136), _Cropped(frames[3], 136), _Cropped(frames[4], 136),
             frames[5]]
    config = LocalizeConfig(precision="bf16", batch_size=4)
    estimates = localize_frames(SceneMapPredictor(single_map, config.precision), mixed, config, CPU)
    assert [e.details["encode_batch"] for e in estimates] == [2, 2, 3, 3, 3, 1]
    assert [e.details["n_cells"] for e in estimates] == [300, 300, 255, 255, 255, 300]
    for estimate, frame in zip(estimates, mixed):
        alone = localize_image(single_map, frame.name, frame.load_rgb(), frame.camera, config, CPU)
        assert abs(alone.num_inliers - estimate.num_inliers) <= 1 and estimate.name == frame.name


def test_a_failing_frame_fails_the_loop_cleanly(rooms, single_map, tmp_path):
    frames = list(rooms[1][0].frames[:6])
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    frames[3] = dataclasses.replace(frames[3], rgb_path=broken)
    with pytest.raises(InputError, match="broken.png"):
        localize_frames(SceneMapPredictor(single_map), frames, LocalizeConfig(), CPU)
    assert torch.get_num_threads() == 1  # the loop's thread setting is undone


def test_a_named_scene_gives_the_poses_of_the_old_sequential_calls(rooms, multi_map):
    query = rooms[1][2]
    estimates = localize_multi_scene(multi_map, query, "room2", LocalizeConfig(), CPU, show_progress=False)
    for estimate, frame in zip(estimates, query.frames):
        features, pixels, camera = encode_query(multi_map.encoder_name, multi_map.image_height, frame.load_rgb(),
                                                frame.camera, CPU)
        coords = predict_multi_scene_coordinates(multi_map, features, pixels, camera, 2)
        result = solve_image(pixels, coords, camera, LocalizeConfig())
        assert estimate.num_inliers == result.num_inliers and estimate.details["scene"] == "room2"
        assert np.array_equal(estimate.cam_from_world.matrix(), result.cam_from_world.matrix())


def _without_descriptors(multi_map: MultiSceneMap) -> MultiSceneMap:
    return dataclasses.replace(multi_map, descriptors=None)


def test_retrieval_identifies_the_scene_with_one_ransac(rooms, multi_map):
    """Retrieval against trying every scene (the path of maps without descriptors), on the 30 queries of the three
    rooms (chance: 1/3)."""
    assert multi_map.descriptors is not None and multi_map.descriptors.n_scenes == 3
    queries = rooms[1]
    retrieval = {q.name: localize_multi_scene(multi_map, q, "auto", LocalizeConfig(), CPU, False) for q in queries}
    every = {q.name: localize_multi_scene(_without_descriptors(multi_map), q, "auto", LocalizeConfig(), CPU, False)
             for q in queries}
    accuracy = np.mean([identification_accuracy(retrieval[q.name], q.name) for q in queries])
    every_accuracy = np.mean([identification_accuracy(every[q.name], q.name) for q in queries])
    ranked_first = np.mean([e.details["retrieved_scene"] == q.name for q in queries for e in retrieval[q.name]])
    tried = np.mean([len(e.details["scenes_tried"]) for q in queries for e in retrieval[q.name]])
    assert accuracy >= 0.8 and ranked_first >= 0.8, (accuracy, ranked_first)
    assert accuracy >= every_accuracy - 0.1, (accuracy, every_accuracy)
    assert tried <= 1.5, tried
    assert all(len(e.details["scenes_tried"]) == 3 for q in queries for e in every[q.name])
    # Where retrieval's choice is the scene every-scene RANSAC picks, the pose is the same one.
    same = [_same(a, b) for q in queries for a, b in zip(retrieval[q.name], every[q.name])
            if a.details["scene"] == b.details["scene"] == q.name]
    assert len(same) >= 20 and all(same)
    details = retrieval["room0"][0].details
    assert details["identification"] == "retrieval" and set(details["retrieval_scores"]) == {"room0", "room1", "room2"}
    assert set(details["scene_scores"]) == {"room0", "room1", "room2"}


def test_a_close_second_scene_gets_its_own_ransac(rooms, multi_map):
    query = rooms[1][1]
    every_time = LocalizeConfig(auto_margin=2.0, auto_max_scenes=3)  # similarities lie in [-1, 1]
    estimates = localize_multi_scene(multi_map, query, "auto", every_time, CPU, False)
    assert all(len(e.details["scenes_tried"]) == 3 for e in estimates)
    never = LocalizeConfig(auto_margin=0.0)
    assert all(len(e.details["scenes_tried"]) == 1
               for e in localize_multi_scene(multi_map, query, "auto", never, CPU, False))


def _file_metadata(path: Path) -> dict:
    """The safetensors metadata of a map file (sceneloc's JSON under METADATA_KEY)."""
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
    assert METADATA_KEY in metadata
    return metadata


def test_descriptors_survive_the_map_file(rooms, multi_map, tmp_path):
    path = tmp_path / "rooms.multimap"
    multi_map.save(path)
    loaded = MultiSceneMap.load(path)
    frame = rooms[1][1].frames[0]
    features = encode_query(multi_map.encoder_name, multi_map.image_height, frame.load_rgb(), frame.camera, CPU)[0]
    np.testing.assert_allclose(loaded.descriptors.scene_scores(features), multi_map.descriptors.scene_scores(features),
                               atol=1e-6)
    tensors = load_file(str(path))
    tensors[DESCRIPTOR_PREFIX + "scene_index"] = torch.full_like(tensors[DESCRIPTOR_PREFIX + "scene_index"], 7)
    save_file(tensors, str(tmp_path / "bad.multimap"), metadata=_file_metadata(path))
    with pytest.raises(InputError, match="bad.multimap: map's scene descriptors"):
        MultiSceneMap.load(tmp_path / "bad.multimap")


def test_multimaps_without_descriptors_still_localize(rooms, multi_map, tmp_path):
    """A map file as written before scene descriptors existed (the same map without its retrieval tensors), and the
    committed one of 5b85055: they load, and "auto" tries every scene, as it did."""
    path = tmp_path / "rooms.multimap"
    multi_map.save(path)
    tensors = {k: v for k, v in load_file(str(path)).items() if not k.startswith(DESCRIPTOR_PREFIX)}
    save_file(tensors, str(tmp_path / "old.multimap"), metadata=_file_metadata(path))
    old = MultiSceneMap.load(tmp_path / "old.multimap")
    assert old.descriptors is None
    query = rooms[1][0]
    estimates = localize_multi_scene(old, query, "auto", LocalizeConfig(), CPU, False)
    expected = localize_multi_scene(_without_descriptors(MultiSceneMap.load(path)), query, "auto", LocalizeConfig(),
                                    CPU, False)
    assert all(_same(a, b) for a, b in zip(estimates, expected))
    assert all(e.details["identification"] == "every scene" and len(e.details["scenes_tried"]) == 3
               for e in estimates)
    assert identification_accuracy(estimates, "room0") >= 0.8

    committed = MultiSceneMap.load(OLD_MAPS / "multi_v2.multimap")
    assert committed.descriptors is None
    frame = read_scene(OLD_MAPS / "frames").frames[0]
    estimate = localize_multi_image(committed, frame.name, frame.load_rgb(), frame.camera, "auto", LocalizeConfig(),
                                    CPU)
    assert estimate.details["scenes_tried"] == ["a", "b"] and estimate.cam_from_world is not None


def test_unknown_scene_is_an_input_error(multi_map):
    with pytest.raises(InputError, match="holds no scene 'kitchen'"):
        MultiScenePredictor(multi_map, "kitchen", LocalizeConfig())
