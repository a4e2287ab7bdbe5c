"""SCINR, the multi-scene head: its modules, scene conditioning, ablation switches, the multi-scene map file, batch
balancing, and two tiny rendered rooms 1 km apart mapped into one head and localized with the right scene and with
scene identification ("auto").

The end-to-end maps 300 steps per room at a 120 px working height without geometric augmentation, on rooms of 60
mapping frames whose query path keeps close to the mapping path. Every accuracy bound is a comparison with a
baseline computed in the same test: the same head untrained (seeded initialisation, the rooms' centres), localized
the same way; identification is scored as the mean over the two rooms (balanced accuracy), which is 0.5 for any
classifier that ignores the image, however biased towards one room. Measured with mapping seeds 0 and 2, bf16 and
fp32 (docs/BENCHMARKS.md 11): 20 mapping views per room 0.13-0.20 m and 5-6 deg against 1.34-1.62 m and 126-145 deg
untrained; 40 queries pooled 0.33-0.49 m (10-18 deg per room) against 1.40-1.47 m (108-145 deg); identification 1.0
in both rooms against a balanced 0.48-0.65 untrained, with 3.8-5.1x more inliers for the right scene (untrained
0.9-1.1x)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from sceneloc.data import read_scene
from sceneloc.data.scene import Frame, Scene
from sceneloc.data.synthetic import PRESETS, render_scene_to_folder
from sceneloc.data.synthetic.trajectory import TrajectoryConfig
from sceneloc.runtime.errors import InputError
from sceneloc.geometry import Camera, Rigid3
from sceneloc.geometry.metrics import pose_errors
from sceneloc.localize.loop import LocalizeConfig, encode_query
from sceneloc.localize.multi_scene import (AUTO, identification_accuracy, localize_multi_scene,
                                     predict_multi_scene_coordinates)
from sceneloc.mapping import MappingConfig
from sceneloc.mapping.multi_scene import (MultiSceneConfig, build_multi_scene_map, buffer_shares, scene_batches,
                                          total_budget)
from sceneloc.maps.multi_scene_map import MultiSceneMap, build_multimap_metadata
from sceneloc.nn.encoders import load_encoder
from sceneloc.nn.heads.scinr import (ModulationModule, ScinrConfig, ScinrHead, ScraModule, normalised_positions,
                                     positional_encoding)

SMALL = dict(width=32, modulation_width=24, hypernet_width=16, embedding_dim=8, complement_width=8, scra_bases=2,
             pe_frequencies=4, use_position=True, use_modulation=True)
"""A head small enough for unit tests; every module on, the thesis' pixel position and modulation included."""

pytestmark = pytest.mark.usefixtures("one_thread")
"""One torch thread for every test here (conftest.torch_threads)."""


def small(**changes) -> ScinrConfig:
    """SMALL with some fields changed."""
    return ScinrConfig(**{**SMALL, **changes})


def _inputs(n_rows: int = 12, n_scenes: int = 3, channels: int = 16):
    g = torch.Generator().manual_seed(0)
    return (torch.randn(n_rows, channels, generator=g), torch.rand(n_rows, 2, generator=g) - 0.5,
            torch.arange(n_rows) % n_scenes)


def test_positional_encoding_values():
    x = torch.tensor([[0.0, 0.5]])
    code = positional_encoding(x, 3)
    assert code.shape == (1, 12)
    # Layout: sin for (coordinate, frequency) pairs, then cos; sin(pi * 0.5) = 1, sin(2 pi * 0.5) = 0.
    torch.testing.assert_close(code[0, :6], torch.tensor([0.0, 0.0, 0.0, 1.0, 0.0, 0.0]), atol=1e-6, rtol=0)
    torch.testing.assert_close(code[0, 6:], torch.tensor([1.0, 1.0, 1.0, 0.0, -1.0, 1.0]), atol=1e-6, rtol=0)


def test_normalised_positions_follow_the_intrinsics():
    K = np.array([[100.0, 0, 80.5], [0, 101.0, 59.0], [0, 0, 1]])
    pos = normalised_positions(np.array([[80.5, 59.0], [180.5, 160.0]]), K)
    torch.testing.assert_close(pos, torch.tensor([[0.0, 0.0], [1.0, 1.0]]))


def test_module_shapes():
    config = small()
    features, positions, scene = _inputs()
    embeddings = torch.randn(3, config.embedding_dim)
    z = ScraModule(16, config)(features, scene, embeddings)
    assert z.shape == (12, 32)
    h = ModulationModule(16, config)(z, positional_encoding(positions, 4))
    assert h.shape == (12, 24)
    assert ScinrHead(16, config, 3)(features, positions, scene).shape == (12, 3)


def test_every_module_gets_gradients():
    head = ScinrHead(16, small(), 3, torch.randn(3, 3))
    features, positions, scene = _inputs()
    head(features, positions, scene).square().sum().backward()
    grads = {name: p.grad for name, p in head.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    # complement.0 has no gradient yet: the complement's last layer starts at zero (Delta y_n = anchor).
    for name in ("embeddings", "adjust.input_layer.weight", "adjust.layers.1.weight", "adjust.hypernet.0.weight",
                 "adjust.hypernet.2.weight", "adjust.bases.0", "adjust.bases.1", "regressor.synthesis.0.weight",
                 "regressor.synthesis.2.weight", "regressor.modulator.0.weight", "regressor.modulator.2.weight",
                 "output_layer.weight", "complement.2.weight"):
        assert grads[name].abs().sum() > 0, name


def test_scene_embedding_conditions_the_prediction():
    torch.manual_seed(0)
    head = ScinrHead(16, small(use_complement=False), 3)
    features, positions, _ = _inputs()
    with torch.no_grad():
        # Generated parameters start at a tenth of the hypernet's default scale; this is what training grows.
        head.adjust.hypernet[2].weight.mul_(10)
        by_scene = [head(features, positions, torch.full((12,), s)) for s in range(3)]
        assert (by_scene[0] - by_scene[1]).abs().max() > 1e-3
        mixed = head(features, positions, torch.arange(12) % 3)
        # A batch mixing scenes (unsorted) gives each row what its own scene alone gives (the grouped bases).
        for s in range(3):
            torch.testing.assert_close(mixed[s::3], by_scene[s][s::3], atol=1e-6, rtol=1e-5)
        head.embeddings[1] += 1.0
        after = [head(features, positions, torch.full((12,), s)) for s in range(3)]
        assert (after[1] - by_scene[1]).abs().max() > 1e-3
        torch.testing.assert_close(after[0], by_scene[0], atol=0, rtol=0)
        # Without SCRA (and complement) nothing depends on the scene.
        shared = ScinrHead(16, small(use_scra=False, use_complement=False), 3)
        torch.testing.assert_close(shared(features, positions, torch.zeros(12, dtype=torch.long)),
                                   shared(features, positions, torch.ones(12, dtype=torch.long)), atol=0, rtol=0)


@pytest.mark.parametrize("flag, gone", [
    ("use_scra", "adjust.hypernet."),
    ("use_modulation", "regressor.modulator."),
    ("use_complement", "complement."),
])
def test_ablation_flags_remove_parameters(flag, gone):
    full = ScinrHead(16, small(), 3)
    ablated = ScinrHead(16, small(**{flag: False}), 3)
    assert any(name.startswith(gone) for name, _ in full.named_parameters())
    assert not any(name.startswith(gone) for name, _ in ablated.named_parameters())
    assert sum(p.numel() for p in ablated.parameters()) < sum(p.numel() for p in full.parameters())
    features, positions, scene = _inputs()
    assert ablated(features, positions, scene).shape == (12, 3)


def test_scene_weights_mix_the_bases():
    """Layer l of scene n is relu((W_n y + b) * (1 + g_n) + beta_n) with W_n = W + sum_k c_nk B_k."""
    torch.manual_seed(0)
    config = small()
    scra = ScraModule(16, config)
    features, _, scene = _inputs()
    embeddings = torch.randn(3, config.embedding_dim)
    with torch.no_grad():
        z = scra(features, scene, embeddings)
        theta, w, per_layer = scra.hypernet(embeddings), config.width, scra.per_layer
        x = torch.relu(scra.input_layer(features))
        for n in range(3):
            y = x[scene == n]
            for k, layer in enumerate(scra.layers):
                p = theta[n, k * per_layer:(k + 1) * per_layer]
                weight = layer.weight + (p[2 * w:, None, None] * scra.bases[k]).sum(0)
                y = torch.relu((y @ weight.T + layer.bias) * (1 + p[:w]) + p[w:2 * w])
            torch.testing.assert_close(z[scene == n], x[scene == n] + y, atol=1e-5, rtol=1e-5)


def test_default_head_ignores_the_pixel_position():
    head = ScinrHead(16, ScinrConfig(width=32, modulation_width=24, hypernet_width=16, embedding_dim=8,
                                     complement_width=8), 3)
    features, positions, scene = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(head(features, positions, scene), head(features, -positions, scene),
                                   atol=0, rtol=0)
        with_position = ScinrHead(16, small(), 3)
        assert (with_position(features, positions, scene) - with_position(features, -positions, scene)).abs().max() \
            > 1e-4
    with pytest.raises(ValueError, match="use_modulation needs model.use_position"):
        ScinrConfig(use_modulation=True).validate()


def test_ablations_without_encoding_or_scene_parameters():
    head = ScinrHead(16, small(use_positional_encoding=False), 3)
    assert head.regressor.synthesis[0].in_features == 2
    bare = ScinrHead(16, small(use_scra=False, use_complement=False), 3)
    assert not hasattr(bare, "embeddings") and "anchors" not in dict(bare.named_buffers())


def test_scenes_a_kilometre_apart_start_in_place():
    centres = torch.tensor([[0.0, 0.0, 0.0], [1000.0, 5.0, -3.0]])
    head = ScinrHead(16, small(), 2, centres)
    features, positions, _ = _inputs(n_rows=8)
    with torch.no_grad():
        pred = head(features, positions, torch.tensor([0, 1] * 4))
    torch.testing.assert_close(head.mean, torch.tensor([500.0, 2.5, -1.5]))
    assert (pred[0::2] - centres[0]).norm(dim=1).max() < 20
    assert (pred[1::2] - centres[1]).norm(dim=1).max() < 20


def _small_map(tmp_path, centres=((0.0, 0.0, 0.0), (1000.25, -3.5, 2.0))):
    encoder = load_encoder("xfeat")
    head = ScinrHead(encoder.out_channels, small(), 2, torch.tensor(centres))
    with torch.no_grad():
        head.complement[2].weight.normal_()  # non-zero, so that a lost complement would show
    head.eval()
    meta = build_multimap_metadata(encoder, head.config, 120, [{"name": "a"}, {"name": "b"}], {"steps": 1},
                                   MultiSceneConfig().to_dict())
    path = tmp_path / "two.multimap"
    MultiSceneMap(head, "xfeat", 120, ["a", "b"], meta).save(path)
    return head, path


def test_map_round_trip_is_exact_at_fp16(tmp_path):
    head, path = _small_map(tmp_path)
    loaded = MultiSceneMap.load(path)
    assert loaded.scene_names == ["a", "b"] and loaded.image_height == 120 and loaded.scene_index("b") == 1
    with safe_open(str(path), framework="pt") as f:
        dtypes = {k: f.get_tensor(k).dtype for k in f.keys()}
        assert json.loads(f.metadata()["sceneloc"])["format"] == "sceneloc-multimap"
    assert dtypes["mean"] == dtypes["anchors"] == torch.float32 and dtypes["embeddings"] == torch.float16
    for k, v in head.state_dict().items():
        expected = v if dtypes[k] == torch.float32 else v.half().float()
        torch.testing.assert_close(loaded.head.state_dict()[k], expected, rtol=0, atol=0)
    features, positions, scene = _inputs(channels=64, n_scenes=2)
    rounded = ScinrHead(64, head.config, 2)
    rounded.load_state_dict({k: v if dtypes[k] == torch.float32 else v.half().float()
                             for k, v in head.state_dict().items()})
    with torch.no_grad():
        torch.testing.assert_close(loaded.head(features, positions, scene), rounded(features, positions, scene),
                                   rtol=0, atol=0)
    assert not list(tmp_path.glob("*.tmp"))


def test_map_file_errors(tmp_path):
    _, path = _small_map(tmp_path)
    with pytest.raises(InputError, match="holds no scene 'c'; its scenes are: a, b"):
        MultiSceneMap.load(path).scene_index("c")
    data = path.read_bytes()
    truncated = tmp_path / "cut.multimap"
    truncated.write_bytes(data[:len(data) // 2])
    with pytest.raises(InputError, match="cut.multimap: not a sceneloc multi-scene map"):
        MultiSceneMap.load(truncated)
    with safe_open(str(path), framework="pt") as f:
        meta, tensors = json.loads(f.metadata()["sceneloc"]), {k: f.get_tensor(k) for k in f.keys()}
    meta["encoder"]["version"] = "xfeat@0000000000000000"
    other = tmp_path / "other.multimap"
    save_file(tensors, str(other), metadata={"sceneloc": json.dumps(meta)})
    with pytest.raises(InputError, match="other.multimap: map was made with encoder xfeat@0000000000000000"):
        MultiSceneMap.load(other)


def test_batches_are_balanced_across_scenes():
    g = torch.Generator().manual_seed(0)
    balanced = scene_batches([1000, 100], 100, "balanced", g)
    batches = [balanced.next() for _ in range(4)]
    for rows in batches:
        assert (rows < 1000).sum() == 50 and (rows >= 1000).sum() == 50
    # The small scene's 100 rows are all used once before any repeats.
    assert sorted(torch.cat([b[b >= 1000] for b in batches[:2]]).tolist()) == list(range(1000, 1100))
    proportional = scene_batches([1000, 100], 100, "proportional", g)
    small = sum(int((proportional.next() >= 1000).sum()) for _ in range(11))
    assert small == 100  # one pass over all 1,100 rows


def test_buffer_shares():
    scenes = [Scene("a", None, [None] * 90), Scene("b", None, [None] * 10)]
    assert buffer_shares(scenes, 1000, "balanced") == [500, 500]
    assert buffer_shares(scenes, 1000, "proportional") == [900, 100]
    budget = MultiSceneConfig(mapping=MappingConfig(buffer_size=1000, iterations=30))
    assert total_budget(budget, 3) == (3000, 90)
    assert total_budget(dataclasses.replace(budget, per_scene_budget=False), 3) == (1000, 30)


def test_bad_scene_lists_are_input_errors(tmp_path):
    with pytest.raises(InputError, match="no scenes to map"):
        build_multi_scene_map([], MultiSceneConfig(), torch.device("cpu"), False)
    frame = Frame("f", tmp_path / "f.png", Camera(160, 120, 100.0, 100.0, 79.5, 59.5), Rigid3(np.eye(3), np.zeros(3)))
    twins = [Scene("room", tmp_path / "a", [frame]), Scene("room", tmp_path / "b", [frame])]
    with pytest.raises(InputError, match="b: scene name 'room' is used twice"):
        build_multi_scene_map(twins, MultiSceneConfig(), torch.device("cpu"), False)
    with pytest.raises(ValueError, match="sampling must be one of balanced, proportional"):
        MultiSceneConfig(sampling="uniform").validate()


# --- end to end ------------------------------------------------------------------------------------------------

OFFSET = np.array([1000.0, 0.0, 0.0])
"""The second room is moved this far (metres) in the shared world frame."""
CPU = torch.device("cpu")


def _moved(scene: Scene, offset: np.ndarray, name: str) -> Scene:
    """The scene with its world frame shifted by `offset` (world' = world + offset)."""
    shift = Rigid3(np.eye(3), -offset)
    return Scene(name, scene.root, [dataclasses.replace(f, cam_from_world=f.cam_from_world * shift)
                                    for f in scene.frames])


@pytest.fixture(scope="module")
def two_rooms(tmp_path_factory, one_thread):
    """Tiny rooms of seeds 0 and 1 (60 mapping, 20 query frames, 160x120), the second moved 1 km, mapped into one
    SCINR head. Returns (multi_map, mapping scenes, query scenes, summary)."""
    root = tmp_path_factory.mktemp("scinr")
    near_path = TrajectoryConfig(query_offset_m=0.05, query_height_m=0.03, query_yaw_deg=5.0, query_pitch_deg=2.0)
    config = dataclasses.replace(PRESETS["tiny-room"], n_map=60, n_query=20, trajectory=near_path)
    mapping, queries = [], []
    for seed, offset in ((0, np.zeros(3)), (1, OFFSET)):
        render_scene_to_folder(config.with_seed(seed), root / f"room{seed}", progress=False)
        mapping.append(_moved(read_scene(root / f"room{seed}", "train"), offset, f"room{seed}"))
        queries.append(_moved(read_scene(root / f"room{seed}", "test"), offset, f"room{seed}"))
    multi_map, summary = build_multi_scene_map(mapping, _tiny_config(), CPU, show_progress=False)
    return multi_map, mapping, queries, summary


def _tiny_config(iterations: int = 300) -> MultiSceneConfig:
    return MultiSceneConfig(
        mapping=MappingConfig(image_height=120, buffer_size=20_000, max_buffer_passes=1, iterations=iterations,
                              batch_size=1024, aug_scale_min=1.0, aug_scale_max=1.0, aug_rotation_deg=0.0),
        model=ScinrConfig(width=128, modulation_width=128, hypernet_width=32, embedding_dim=16, complement_width=16))


@pytest.fixture(scope="module")
def untrained(two_rooms) -> MultiSceneMap:
    """The baseline: the same head untrained (seeded initialisation, anchored at the rooms' centres as a trained one
    is), in a map like the trained one."""
    multi_map, mapping, _, _ = two_rooms
    centres = torch.tensor(np.stack([s.camera_centers().mean(0) for s in mapping]), dtype=torch.float32)
    torch.manual_seed(0)
    head = ScinrHead(load_encoder(multi_map.encoder_name).out_channels, _tiny_config().model, len(mapping), centres)
    return MultiSceneMap(head.eval(), multi_map.encoder_name, multi_map.image_height, multi_map.scene_names,
                         multi_map.metadata)


def _views(scene: Scene) -> Scene:
    """20 of the 60 mapping views: what the map was trained on."""
    return Scene(scene.name, scene.root, scene.frames[::3])


def _localize(multi_map: MultiSceneMap, scene: Scene, asked: str):
    return localize_multi_scene(multi_map, scene, asked, LocalizeConfig(), CPU, False)


def _errors(estimates, scene: Scene) -> tuple[np.ndarray, np.ndarray]:
    """Per image (translation m, rotation deg), infinite for a failed image."""
    errors = [pose_errors(e.cam_from_world, f.cam_from_world) if e.cam_from_world is not None else (np.inf, np.inf)
              for e, f in zip(estimates, scene.frames)]
    return np.array([t for t, _ in errors]), np.array([r for _, r in errors])


def _pooled_medians(runs: list[tuple[list, Scene]]) -> tuple[float, float]:
    """Median translation (m) and rotation (deg) error over all images of several (estimates, scene) runs."""
    t, r = zip(*(_errors(estimates, scene) for estimates, scene in runs))
    return float(np.median(np.concatenate(t))), float(np.median(np.concatenate(r)))


@pytest.fixture(scope="module")
def localized(two_rooms, untrained) -> dict:
    """(map: "trained" | "untrained", images: "queries" | "views", room index, asked: "named" | "auto") -> estimates,
    and ("scene", images, room index) -> the scene they belong to."""
    multi_map, mapping, queries, _ = two_rooms
    out = {}
    for index in (0, 1):
        for images, scene in (("queries", queries[index]), ("views", _views(mapping[index]))):
            out["scene", images, index] = scene
            for kind, m in (("trained", multi_map), ("untrained", untrained)):
                for asked in ("named", "auto"):
                    out[kind, images, index, asked] = _localize(m, scene, scene.name if asked == "named" else AUTO)
    return out


def _balanced_identification(localized: dict, kind: str, images: str) -> float:
    """Identification accuracy averaged over the two rooms: 0.5 for a classifier that ignores the image."""
    return float(np.mean([identification_accuracy(localized[kind, images, i, "auto"], f"room{i}") for i in (0, 1)]))


def _reprojection_errors(multi_map: MultiSceneMap, scene: Scene, index: int) -> np.ndarray:
    """Reprojection errors (px, working image) of the predicted scene coordinates of every cell of the scene's frames
    under their ground-truth poses; infinite for a prediction behind the camera."""
    errors = []
    for frame in scene.frames:
        features, pixels, work_cam = encode_query(multi_map.encoder_name, multi_map.image_height, frame.load_rgb(),
                                                  frame.camera, CPU)
        in_camera = frame.cam_from_world.apply(predict_multi_scene_coordinates(multi_map, features, pixels, work_cam,
                                                                               index))
        in_front = in_camera[:, 2] > 0.1
        error = np.full(len(pixels), np.inf)
        error[in_front] = np.linalg.norm(work_cam.project(in_camera[in_front]) - pixels[in_front], axis=1)
        errors.append(error)
    return np.concatenate(errors)


def test_both_rooms_are_learnt(two_rooms, untrained):
    multi_map, mapping, _, summary = two_rooms
    assert multi_map.scene_names == ["room0", "room1"]
    assert [s["buffer_rows"] for s in summary.scenes] == [18_000, 18_000]
    # Each room gets the 300 steps of a single-scene map (per_scene_budget).
    assert summary.steps == 600
    # Cells of 10 mapping views per room (3,000) whose prediction reprojects within the solver's inlier threshold
    # (20 px at 480 px: 5 px here) under the true pose. Measured 0.19-0.24 trained, 0 untrained (most of its
    # predictions fall behind the camera).
    for index, scene in enumerate(mapping):
        views = Scene(scene.name, scene.root, scene.frames[::6])
        trained, baseline = (float(np.mean(_reprojection_errors(m, views, index) < 5.0))
                             for m in (multi_map, untrained))
        assert trained > 0.1 and trained > baseline + 0.1, (scene.name, trained, baseline)


def test_queries_localize_in_their_room(localized):
    named = [(localized["trained", "queries", i, "named"], localized["scene", "queries", i]) for i in (0, 1)]
    baseline = [(localized["untrained", "queries", i, "named"], localized["scene", "queries", i]) for i in (0, 1)]
    (t_err, r_err), (t_base, r_base) = _pooled_medians(named), _pooled_medians(baseline)
    # Pooled over the 40 queries of both rooms (one room's 20 are too few for a small margin to mean much).
    assert t_err < 0.5 * t_base and r_err < 0.3 * r_base, (t_err, r_err, t_base, r_base)
    for i in (0, 1):
        assert all(e.details["scene"] == f"room{i}" for e in localized["trained", "queries", i, "named"])
        assert set(localized["trained", "queries", i, "auto"][0].details["scene_scores"]) == {"room0", "room1"}
    # Identification: the untrained head picks one room for most images of both (measured 0.85 / 0.2 right).
    accuracy, chance = (_balanced_identification(localized, kind, "queries") for kind in ("trained", "untrained"))
    assert accuracy >= 0.9 and accuracy > chance + 0.2, (accuracy, chance)
    assert min(identification_accuracy(localized["trained", "queries", i, "auto"], f"room{i}") for i in (0, 1)) >= 0.8
    auto_t, _ = _pooled_medians([(localized["trained", "queries", i, "auto"], localized["scene", "queries", i])
                                 for i in (0, 1)])
    assert auto_t < 0.5 * t_base, (auto_t, t_base)


@pytest.mark.parametrize("index", [0, 1])
def test_mapping_views_are_identified_without_doubt(localized, index):
    views = localized["scene", "views", index]
    trained, untrained = localized["trained", "views", index, "auto"], localized["untrained", "views", index, "auto"]
    # A 300-step toy map: a view may find as few inliers in both rooms (a tie, seen at 16 : 16 once in 20 views);
    # the margin over the other room is what the median ratio below holds to.
    assert identification_accuracy(trained, views.name) >= 0.9
    assert _balanced_identification(localized, "trained", "views") > \
        _balanced_identification(localized, "untrained", "views") + 0.2

    def ratio(estimates):
        scores = np.array([[e.details["scene_scores"][n] for n in ("room0", "room1")] for e in estimates])
        return float(np.median(scores[:, index] / np.maximum(scores[:, 1 - index], 1)))
    assert ratio(trained) > 2 and ratio(trained) > 2 * ratio(untrained), (ratio(trained), ratio(untrained))
    t_err, r_err = _pooled_medians([(trained, views)])
    t_base, r_base = _pooled_medians([(localized["untrained", "views", index, "named"], views)])
    assert t_err < 0.3 * t_base and r_err < 0.2 * r_base, (t_err, r_err, t_base, r_base)


def test_saved_map_predicts_the_far_room_alike(two_rooms, tmp_path):
    multi_map, _, queries, _ = two_rooms
    path = tmp_path / "rooms.multimap"
    multi_map.save(path)
    loaded = MultiSceneMap.load(path)
    frame = queries[1].frames[0]
    features, pixels, work_cam = encode_query(multi_map.encoder_name, multi_map.image_height, frame.load_rgb(),
                                              frame.camera, CPU)
    before = predict_multi_scene_coordinates(multi_map, features, pixels, work_cam, 1)
    after = predict_multi_scene_coordinates(loaded, features, pixels, work_cam, 1)
    assert abs(np.median(after[:, 0]) - OFFSET[0]) < 10
    # float16 weights move metre-sized predictions by millimetres; a float16 anchor would move them by ~0.5 m.
    assert np.median(np.linalg.norm(after - before, axis=1)) < 0.02
    with pytest.raises(InputError, match="holds no scene 'kitchen'"):
        localize_multi_scene(loaded, queries[1], "kitchen", LocalizeConfig(), CPU, False)


def test_a_room_added_to_an_existing_map(two_rooms, localized, tmp_path):
    """Stretch goal of issue #5: room 0 mapped alone (300 steps), then room 1 added with `map --multi --init`, room 0
    rehearsed from its buffer. The added run takes 600 steps: with balanced batches room 1 then gets the 600 half
    batches it gets in the joint run (at 300 steps it would get half that: measured 0.5-0.74 m on its own mapping
    views, against 0.17-0.20 m joint)."""
    from conftest import run_cli

    joint, mapping, _, _ = two_rooms
    alone, _ = build_multi_scene_map(mapping[:1], _tiny_config(), CPU, show_progress=False)
    added, summary = build_multi_scene_map(mapping, _tiny_config(600), CPU, show_progress=False, start=alone)
    assert summary.warm_started == ["room0"] and summary.steps == 600 and added.scene_names == ["room0", "room1"]
    views = [localized["scene", "views", i] for i in (0, 1)]
    medians = {("untrained", i): _pooled_medians([(localized["untrained", "views", i, "named"], views[i])])[0]
               for i in (0, 1)}
    medians["joint", 1] = _pooled_medians([(localized["trained", "views", 1, "named"], views[1])])[0]
    medians["alone", 0] = _pooled_medians([(_localize(alone, views[0], "room0"), views[0])])[0]
    for i in (0, 1):
        medians["added", i] = _pooled_medians([(_localize(added, views[i], f"room{i}"), views[i])])[0]
    # Measured on the mapping views (seeds 0 and 2, bf16 and fp32): room 0 alone 0.23-0.47 m, added 0.10-0.11 m;
    # room 1 joint 0.17-0.20 m, added 0.19-0.25 m; untrained 1.34-1.62 m.
    # Room 0 is not forgotten: as good as alone (better: rehearsal trains it further), far from the untrained head.
    assert medians["added", 0] < medians["alone", 0] + 0.05 and medians["added", 0] < 0.3 * medians["untrained", 0], \
        medians
    # Room 1 is learnt: far from the untrained head, near the joint map.
    assert medians["added", 1] < 0.3 * medians["untrained", 1] and medians["added", 1] < 2.5 * medians["joint", 1], \
        medians
    # The CLI: settings come from the map; a map of another shape cannot be continued.
    alone.save(tmp_path / "room0.multimap")
    code, out = run_cli("map", "--multi", mapping[0].root, "--init", tmp_path / "room0.multimap", "-o",
                        tmp_path / "x.multimap", "--set", "model.width=64")
    assert code != 0 and "room0.multimap: cannot continue from this map: its model config differs" in out
    assert not (tmp_path / "x.multimap").exists()
