"""The distinctiveness scores of structure maps (mapping/structure/scores.py, scorer.py, train_scores.py): the
point features against hand-computed values, verification labels that depend on the true pose, the scorer's
file round trip, a scorer that learns a known relation, and the score kinds end to end on the tiny room."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import run_cli

from sceneloc.data import read_scene
from sceneloc.geometry import Camera, Rigid3
from sceneloc.mapping.structure.build import StructureMapConfig
from sceneloc.mapping.structure.scorer import (SHIPPED_MODEL, DistinctivenessNet, load_scorer, save_scorer)
from sceneloc.mapping.structure.scores import (FEATURE_NAMES, SCORE_KINDS, coverage, distinctiveness,
                                               in_view_counts, nearest_descriptor_distance, point_features)
from sceneloc.mapping.structure.train_scores import (LabelledPoints, ScoreTrainingConfig, fit_scorer, kept_matches,
                                                     verification_labels)
from sceneloc.mapping.structure.triangulate import Triangulation, keypoint_scales, triangulate_scene
from sceneloc.runtime.errors import InputError


def test_nearest_descriptor_distance_is_the_exact_nearest_other_row():
    rng = np.random.default_rng(0)
    descriptors = rng.integers(0, 255, (3000, 128)).astype(np.uint8)  # more rows than one block
    unit = descriptors / np.linalg.norm(descriptors.astype(np.float64), axis=1, keepdims=True)
    sim = unit @ unit.T
    np.fill_diagonal(sim, -np.inf)
    expected = np.arccos(np.clip(sim.max(1), -1, 1))
    np.testing.assert_allclose(nearest_descriptor_distance(descriptors), expected, atol=2e-3)
    twin = np.vstack([descriptors[:1], descriptors[:1], descriptors[1:2]])
    assert nearest_descriptor_distance(twin)[:2].max() < 2e-3  # two identical descriptors: distance 0
    assert nearest_descriptor_distance(descriptors[:1])[0] == pytest.approx(np.pi)


def test_keypoint_scales_read_both_of_colmaps_keypoint_layouts():
    four = np.array([[1, 2, 3.0, 0.5]], np.float32)
    angle, scale = 0.3, 2.5  # an affine shape of a keypoint of scale 2.5 turned by 0.3 rad
    six = np.array([[1, 2, scale * np.cos(angle), -scale * np.sin(angle), scale * np.sin(angle),
                     scale * np.cos(angle)]], np.float32)
    np.testing.assert_allclose(keypoint_scales(four), [3.0])
    np.testing.assert_allclose(keypoint_scales(six), [2.5], rtol=1e-6)


def _two_view_model() -> tuple[Triangulation, object]:
    """One point at the origin seen by two cameras 2 m away, 1 m either side of its axis, looking at it; a second
    point 0.5 m to the right seen by the first camera only."""
    from sceneloc.data.scene import Frame, Scene

    camera = Camera(100, 100, 50.0, 50.0, 49.5, 49.5)
    frames = []
    for x in (-1.0, 1.0):
        centre = np.array([x, 0.0, -2.0])
        forward = -centre / np.linalg.norm(centre)
        right = np.cross([0.0, 1.0, 0.0], forward)
        right /= np.linalg.norm(right)
        rotation = np.stack([right, np.cross(forward, right), forward])  # rows: camera axes in the world
        frames.append(Frame(f"f{x:+.0f}", None, camera, Rigid3(rotation, -rotation @ centre)))
    model = Triangulation(points=np.array([[0, 0, 0], [0.5, 0, 0]], np.float32),
                          descriptors=np.eye(2, 128, dtype=np.uint8) * 200, errors_px=np.array([0.5, 1.0], np.float32),
                          descriptor_consistency=np.array([1.0, 0.8], np.float32),
                          scales_px=np.array([2.0, 4.0], np.float32), observation_point=np.array([0, 0, 1]),
                          observation_frame=np.array([0, 1, 0]), n_frames=2)
    return model, Scene("two-view", None, frames)


def test_point_features_on_a_hand_built_two_view_model():
    model, scene = _two_view_model()
    features = point_features(model, scene)
    assert features.shape == (2, len(FEATURE_NAMES))
    column = {name: features[:, i] for i, name in enumerate(FEATURE_NAMES)}
    # The two rays to the origin meet at 2 atan(1/2) = 53.13 degrees.
    assert np.expm1(column["log_triangulation_angle_deg"][0]) == pytest.approx(np.degrees(2 * np.arctan(0.5)),
                                                                               rel=1e-4)
    assert column["log_triangulation_angle_deg"][1] == 0.0  # one observation: no baseline
    np.testing.assert_allclose(np.exp(column["log_track_length"]), [2, 1])
    # Both points fall in both images (the second one 0.5 m off the axis, within the 90-degree field of view).
    np.testing.assert_array_equal(in_view_counts(model.points, scene), [2, 2])
    np.testing.assert_allclose(column["detection_rate"], [1.0, 0.5])
    np.testing.assert_allclose(column["nearest_descriptor_distance_rad"], [np.pi / 2, np.pi / 2], atol=1e-3)
    np.testing.assert_allclose(np.exp(column["log_scale_px"]), [2.0, 4.0], rtol=1e-6)
    np.testing.assert_allclose(coverage(model.track_lengths), [1.0, 0.0])


def test_a_scorer_learns_which_points_get_matched():
    """Points whose label follows one feature (the descriptor distance) through a logistic law: the trained
    scorer ranks held-out points by it, keeping far more of the correct matches than a random ranking."""
    rng = np.random.default_rng(1)

    def scene(n: int, name: str) -> LabelledPoints:
        features = rng.normal(size=(n, len(FEATURE_NAMES))).astype(np.float32)
        p = 1 / (1 + np.exp(-3 * features[:, FEATURE_NAMES.index("nearest_descriptor_distance_rad")]))
        visible = rng.integers(1, 6, n)
        return LabelledPoints(name, features, rng.binomial(visible, p), visible, {})

    train, held_out = scene(4000, "train"), scene(2000, "held-out")
    net, record = fit_scorer([train], ScoreTrainingConfig(steps=300), show_progress=False)
    learned = kept_matches(net.reliability(held_out.features), held_out.correct, 0.2)
    chance = kept_matches(rng.random(2000), held_out.correct, 0.2)
    assert record["n_points"] == 4000
    assert learned > chance + 0.1, (learned, chance)


def test_scorer_file_round_trips_and_bad_files_are_refused(tmp_path):
    torch.manual_seed(0)
    net = DistinctivenessNet()
    net.mean.copy_(torch.randn(len(FEATURE_NAMES)))
    path = tmp_path / "scorer.safetensors"
    save_scorer(path, net, {"note": "test"})
    features = np.random.default_rng(0).normal(size=(50, len(FEATURE_NAMES))).astype(np.float32)
    expected = DistinctivenessNet()
    # The file stores weights in fp16 and the feature normalisation in fp32.
    stored = {k: (v if k in ("mean", "std") else v.half().float()) for k, v in net.state_dict().items()}
    expected.load_state_dict(stored)
    np.testing.assert_array_equal(load_scorer(path).reliability(features), expected.reliability(features))
    (tmp_path / "junk.safetensors").write_bytes(b"not a model")
    with pytest.raises(InputError, match="junk.safetensors"):
        load_scorer(tmp_path / "junk.safetensors")


def test_the_shipped_scorer_loads():
    assert SHIPPED_MODEL.exists()
    assert load_scorer().reliability(np.zeros((3, len(FEATURE_NAMES)), np.float32)).shape == (3,)


@pytest.fixture(scope="module")
def tiny_model(tiny_room_sift):
    rendered, _ = tiny_room_sift
    mapping = read_scene(rendered.root, split="train")
    return rendered, mapping, triangulate_scene(mapping, StructureMapConfig().triangulation, show_progress=False)


def test_verification_labels_follow_the_true_pose(tiny_model):
    rendered, mapping, model = tiny_model
    queries = read_scene(rendered.root, split="test")
    settings = StructureMapConfig()
    correct, visible = verification_labels(model.points, model.descriptors, queries, settings.triangulation,
                                           settings.query_upsample_below_px, 4.0, 0.03, show_progress=False)
    assert (correct <= visible).all() and correct.sum() > 0.5 * len(queries.frames) * 10
    # The same frames with every pose moved 0.3 m sideways: the matches no longer reproject near their keypoints.
    for frame in queries.frames:
        frame.cam_from_world = Rigid3(frame.cam_from_world.rotation, frame.cam_from_world.translation + [0.3, 0, 0])
    moved, _ = verification_labels(model.points, model.descriptors, queries, settings.triangulation,
                                   settings.query_upsample_below_px, 4.0, 0.03, show_progress=False)
    assert moved.sum() < 0.1 * correct.sum()


@pytest.mark.parametrize("kind", SCORE_KINDS)
def test_every_score_kind_ranks_the_tiny_rooms_points_in_0_1(tiny_model, kind):
    _, mapping, model = tiny_model
    scores = distinctiveness(kind, model, mapping)
    assert scores.shape == (len(model.points),) and np.isfinite(scores).all()
    assert scores.min() >= 0 and scores.max() <= 1 and scores.std() > 0


def test_train_scores_refuses_bad_settings_in_one_line(tmp_path):
    code, out = run_cli("train-scores", "-o", tmp_path / "s.safetensors", "--scenes", "no-such-room:3")
    assert code == 2 and "no-such-room:3" in out and len(out.strip().splitlines()) == 1
    code, out = run_cli("train-scores", "-o", tmp_path / "s.json")
    assert code == 2 and "s.json" in out
    assert not list(tmp_path.iterdir())
