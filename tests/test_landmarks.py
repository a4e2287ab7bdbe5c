"""Landmark maps (SLD*, `sceneloc map --type landmarks`): landmark selection and its spread, visibility and heatmap
targets against projected points, sub-cell peak extraction on synthetic heatmaps, the map file, and an end-to-end
map + localize on the tiny rendered room against an untrained head of the same map."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import pose_scores, run_cli, torch_threads

import sceneloc
from sceneloc.data import read_scene
from sceneloc.export.points import read_ply
from sceneloc.geometry import Camera, Rigid3
from sceneloc.localize.loop import LocalizeConfig
from sceneloc.mapping.landmarks.build import (LandmarkMapConfig, build_landmark_map, frame_tracks, heatmap_loss,
                                              training_steps)
from sceneloc.mapping.landmarks.select import select_landmarks, viewing_spread_deg
from sceneloc.mapping.landmarks.targets import HIDDEN, UNKNOWN, VISIBLE, render_heatmaps, view_targets, visibility
from sceneloc.mapping.structure.triangulate import Triangulation
from sceneloc.maps.landmark_map import LandmarkMap
from sceneloc.nn.encoders import load_encoder
from sceneloc.nn.heads.landmark import LandmarkHead, LandmarkHeadConfig, cell_to_pixel, heatmap_peaks
from sceneloc.runtime.errors import InputError


# --- selection --------------------------------------------------------------------------------------------------

def test_selection_spreads_the_landmarks_over_the_scene():
    rng = np.random.default_rng(0)
    # A textured corner: 2,000 high-score points in a 20 cm cube, and 2,000 lower-score points over a 10 m room.
    corner = rng.uniform(0, 0.2, (2000, 3))
    room = rng.uniform(0, 10, (2000, 3))
    points = np.concatenate([corner, room])
    scores = np.concatenate([rng.uniform(10, 20, 2000), rng.uniform(1, 5, 2000)])
    chosen, radius = select_landmarks(points, scores, 100)
    assert len(chosen) == len(set(chosen.tolist())) == 100
    picked = points[chosen]
    pairwise = np.linalg.norm(picked[:, None] - picked[None], axis=2) + np.eye(100) * 1e9
    assert pairwise.min() > radius > 0
    # Against the 100 best-scored points (all in the corner): every room point is much nearer a landmark.
    def coverage(landmarks):
        return np.median(np.min(np.linalg.norm(room[:, None] - landmarks[None], axis=2), axis=1))
    top = points[np.argsort(-scores)[:100]]
    assert coverage(picked) < 0.25 * coverage(top)
    # Saliency still matters: the best-scored point is the first landmark.
    assert chosen[0] == np.argmax(scores)


def test_selection_keeps_every_point_of_a_small_model():
    points = np.eye(3)
    chosen, radius = select_landmarks(points, np.array([1.0, 3.0, 2.0]), 10)
    assert chosen.tolist() == [1, 2, 0] and radius == 0.0


def test_viewing_spread_is_the_angle_between_the_views():
    # One point at the origin seen from two cameras 60 degrees apart, another from two cameras on one ray.
    centers = np.array([[np.sin(np.radians(30)), 0, np.cos(np.radians(30))],
                        [-np.sin(np.radians(30)), 0, np.cos(np.radians(30))], [0, 0, 1.0], [0, 0, 2.0]])
    model = Triangulation(points=np.zeros((2, 3), np.float32), descriptors=np.zeros((2, 128), np.uint8),
                          errors_px=np.zeros(2, np.float32), descriptor_consistency=np.ones(2, np.float32),
                          scales_px=np.ones(2, np.float32), observation_point=np.array([0, 0, 1, 1]),
                          observation_frame=np.array([0, 1, 2, 3]), n_frames=4)
    np.testing.assert_allclose(viewing_spread_deg(model, centers), [60.0, 0.0], atol=1e-4)


def test_frame_tracks_maps_observations_of_the_chosen_points():
    tracks = frame_tracks(np.array([0, 0, 1, 2, 2]), np.array([0, 2, 1, 0, 1]), np.array([2, 0]), 3)
    assert tracks.tolist() == [[True, True], [True, False], [False, True]]


# --- targets ------------------------------------------------------------------------------------------------------

CAMERA = Camera(fx=100.0, fy=101.0, cx=79.5, cy=59.5, width=160, height=120)


def test_visibility_from_depth_and_from_tracks():
    pose = Rigid3.identity()
    # In front on the wall at 2 m, behind the wall (3 m), behind the camera, outside the image, on a depth hole.
    # In front on the wall at 2 m, behind the wall (3 m), behind the camera, outside the image, on a depth hole,
    # and at 2 m one pixel past the edge of a 5 m background (the depth edge a landmark often sits on).
    landmarks = np.array([[0.1, 0.0, 2.0], [0.2, 0.1, 3.0], [0.0, 0.0, -1.0], [5.0, 0.0, 2.0], [-0.3, 0.2, 2.0],
                          [0.42, 0.0, 2.0]])
    depth = np.full((120, 160), 2.0, np.float32)
    depth[:, 100:] = 5.0  # landmark 5 projects to u = 100.5: the pixel it rounds to shows the background
    u, v = round(100 * -0.3 / 2 + 79.5), round(101 * 0.2 / 2 + 59.5)
    depth[v - 2:v + 3, u - 2:u + 3] = 0.0
    in_track = np.zeros(6, bool)
    uv, state = visibility(landmarks, CAMERA, pose, depth, in_track, 0.05)
    assert state.tolist() == [VISIBLE, HIDDEN, HIDDEN, HIDDEN, UNKNOWN, VISIBLE]
    np.testing.assert_allclose(uv[0], [100 * 0.05 + 79.5, 59.5])
    # SIFT saw it there: visible, on a depth hole or not.
    in_track[4] = True
    assert visibility(landmarks, CAMERA, pose, depth, in_track, 0.05)[1][4] == VISIBLE
    # Without depth the track decides inside the image: seen -> visible, not seen -> unknown.
    in_track[:] = [True, False, True, True, False, False]
    _, state = visibility(landmarks, CAMERA, pose, None, in_track, 0.05)
    assert state.tolist() == [VISIBLE, UNKNOWN, HIDDEN, HIDDEN, UNKNOWN, UNKNOWN]


def test_view_targets_follow_the_augmentation_homography():
    uv = np.array([[40.0, 30.0], [150.0, 100.0], [10.0, 10.0]])
    state = np.array([VISIBLE, VISIBLE, UNKNOWN], np.int8)
    half = np.diag([0.5, 0.5, 1.0])  # the view is the image at half size
    valid = np.ones((60, 80), bool)
    valid[45:, 70:] = False  # landmark 1 lands in the view's empty corner
    ids, cells, unknown = view_targets(uv, state, half, valid)
    assert ids.tolist() == [0] and unknown.tolist() == [2]
    np.testing.assert_allclose(cell_to_pixel(torch.from_numpy(cells)).numpy(), [[20.0, 15.0]], atol=1e-5)


@pytest.mark.parametrize("where", [(10.0, 7.0), (10.3, 6.8), (3.45, 11.4)])
def test_targets_peak_at_the_projection_and_the_peak_finder_recovers_it(where):
    cells = torch.tensor([where], dtype=torch.float32)
    target = render_heatmaps(torch.tensor([1]), cells, 3, (15, 20), sigma_cells=1.0)
    assert target[[0, 2]].abs().max() == 0  # landmarks not visible: empty heatmaps
    row, col = divmod(int(target[1].argmax()), 20)
    assert (col, row) == (round(where[0]), round(where[1]))
    assert target[1, row, col] == pytest.approx(np.exp(-((col - where[0]) ** 2 + (row - where[1]) ** 2) / 2), 1e-5)
    # The logit whose sigmoid is the target: the log-parabola refinement is exact for a Gaussian.
    logits = torch.logit(target[1:2].clamp(1e-6, 1 - 1e-6))
    pixels, confidence = heatmap_peaks(logits)
    truth = cell_to_pixel(cells)
    assert torch.linalg.norm(pixels - truth) < 0.05  # pixels: far below the 8 px cell
    assert confidence[0] == pytest.approx(float(target[1, row, col]), rel=1e-4)


def test_sub_cell_peaks_beat_the_strongest_cell_on_noisy_heatmaps():
    rng = np.random.default_rng(1)
    truth = torch.from_numpy(rng.uniform(2, 17, (200, 2)).astype(np.float32))
    target = render_heatmaps(torch.arange(200), truth, 200, (20, 20), sigma_cells=1.0)
    noisy = (target * torch.from_numpy(rng.uniform(0.9, 1.1, target.shape).astype(np.float32))).clamp(1e-4, 0.999)
    pixels, _ = heatmap_peaks(torch.logit(noisy))
    refined = torch.linalg.norm(pixels - cell_to_pixel(truth), dim=1)
    cells = torch.stack([noisy.reshape(200, -1).argmax(1) % 20, noisy.reshape(200, -1).argmax(1) // 20], 1)
    strongest = torch.linalg.norm(cell_to_pixel(cells.float()) - cell_to_pixel(truth), dim=1)
    assert refined.median() < 0.5 * strongest.median()  # measured: 0.58 px against 3.26 px


def test_loss_is_lowest_at_the_target_and_ignores_masked_heatmaps():
    target = render_heatmaps(torch.tensor([0]), torch.tensor([[4.2, 3.6]]), 2, (8, 10), 1.0)[None]
    mask = torch.ones_like(target)
    exact = torch.logit(target.clamp(1e-6, 1 - 1e-6))
    assert heatmap_loss(exact, target, mask, 50.0) < heatmap_loss(exact + 0.5, target, mask, 50.0)
    assert heatmap_loss(exact, target, mask, 50.0) < heatmap_loss(exact - 0.5, target, mask, 50.0)
    wrong = exact.clone()
    wrong[0, 1] = 5.0  # landmark 1 "detected" everywhere
    mask[0, 1] = 0.0  # ... where its visibility is unknown: no loss
    assert heatmap_loss(wrong, target, mask, 50.0) == pytest.approx(float(heatmap_loss(exact, target, mask, 50.0)))


# --- head and map file --------------------------------------------------------------------------------------------

def test_a_padded_view_gets_the_logits_it_gets_alone():
    torch.manual_seed(0)
    head = LandmarkHead(16, 5, LandmarkHeadConfig(width=8)).eval()
    for p in head.parameters():  # a head whose biases matter, as a trained one's do
        torch.nn.init.normal_(p, std=0.3)
    view = torch.randn(1, 16, 12, 16)
    padded = torch.zeros(1, 16, 19, 25)
    padded[:, :, :12, :16] = view
    inside = torch.zeros(1, 1, 19, 25)
    inside[:, :, :12, :16] = 1.0
    with torch.no_grad():
        alone, together = head(view), head(padded, inside)[:, :, :12, :16]
        unmasked = head(padded)[:, :, :12, :16]
    assert torch.allclose(alone, together, atol=1e-5)
    assert not torch.allclose(alone, unmasked, atol=1e-3)  # what the mask is for


def test_head_output_shape_and_prior():
    head = LandmarkHead(64, 7, LandmarkHeadConfig(width=16))
    logits = head(torch.randn(2, 64, 5, 6))
    assert logits.shape == (2, 7, 5, 6) and logits.dtype == torch.float32
    assert torch.sigmoid(head.output_layer.bias).allclose(torch.tensor(0.01))


def test_small_scenes_train_fewer_steps():
    config = LandmarkMapConfig()
    assert training_steps(config, 600) == 3000  # quick-room: 40 passes over its views
    assert training_steps(config, 20) == 250  # a 10-image fold: 100 passes
    assert training_steps(config, 2) == 100  # never fewer than 100 steps
    assert training_steps(LandmarkMapConfig(iterations=50), 2) == 50


@pytest.mark.parametrize("bad", ["num_landmarks=0", "image_height=4", "head.dilations=[]", "lr_max=-1",
                                 "aug_scale_min=2"])
def test_config_refuses_settings_that_cannot_work(bad, tmp_path):
    from sceneloc.runtime.config_overrides import apply_overrides

    with pytest.raises(ValueError):
        apply_overrides(LandmarkMapConfig(), [bad]).validate()


# --- end to end ---------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def mapped(tmp_path_factory):
    """(rendered tiny room, landmark map path) made through the command line (short training: 400 steps)."""
    from sceneloc.data.synthetic import PRESETS, render_scene_to_folder

    root = tmp_path_factory.mktemp("landmarks")
    rendered = render_scene_to_folder(PRESETS["tiny-room"], root / "tiny-room", progress=False)
    path = root / "room.lmap"
    with torch_threads(1):
        code, out = run_cli("map", rendered.root, "-o", path, "--type", "landmarks", "--landmarks", "100",
                            "--iterations", "400")
    assert code == 0, out
    assert "100 landmarks" in out
    return rendered, path


def test_landmark_map_localizes_far_better_than_its_untrained_head(mapped):
    rendered, path = mapped
    queries = read_scene(rendered.root, split="test")
    landmark_map = sceneloc.load_map(path)
    assert isinstance(landmark_map, LandmarkMap) and len(landmark_map.landmarks) == 100
    build = landmark_map.metadata["build"]
    assert build["visible_per_view"]["median"] >= 5 and build["final_peak_px"] < 4.0
    with torch_threads(1):
        ours = pose_scores(sceneloc.Localizer(landmark_map).localize_scene(queries), queries)
        # Baseline: the same map with the head as initialised (seeded), every peak taken as a detection.
        torch.manual_seed(0)
        untrained = LandmarkMap(LandmarkHead(64, 100, LandmarkHeadConfig()).eval(), landmark_map.landmarks,
                                landmark_map.encoder_name, landmark_map.image_height, landmark_map.metadata)
        every_peak = LocalizeConfig(landmark_min_confidence=0.0)
        base = pose_scores(sceneloc.Localizer(untrained, every_peak).localize_scene(queries), queries)
    # Measured (400 steps, 20 queries, seeds 0 / 1): median 7.1 / 5.4 cm, recall (50 cm, 5 deg) 0.75 / 0.75;
    # untrained: 6.3 m, 0.
    assert ours["median_t_cm"] < 0.05 * base["median_t_cm"]
    assert ours["recall"]["50cm5deg"] >= base["recall"]["50cm5deg"] + 0.5


def test_map_file_round_trips_and_exports_its_landmarks(mapped, tmp_path):
    rendered, path = mapped
    loaded = LandmarkMap.load(path)
    copy = tmp_path / "copy.lmap"
    loaded.save(copy)
    again = LandmarkMap.load(copy)
    assert torch.equal(again.landmarks, loaded.landmarks)
    weights = again.head.state_dict()
    for k, a in loaded.head.state_dict().items():
        assert torch.equal(a, weights[k]), k
    assert again.metadata == loaded.metadata
    ply = tmp_path / "landmarks.ply"
    code, out = run_cli("export", "points", path, "-o", ply)
    assert code == 0, out
    np.testing.assert_array_equal(read_ply(ply).xyz, loaded.landmarks.numpy())


def test_bad_landmark_inputs_fail_in_one_line(mapped, tmp_path):
    rendered, path = mapped
    for args, message in [(["--type", "landmarks", "--landmarks", "0"], "num_landmarks must be >= 1"),
                          (["--landmarks", "10"], "--landmarks is for --type landmarks"),
                          (["--type", "landmarks", "--precision", "fp8"], "unknown precision"),
                          (["--type", "landmarks", "--multi"], "--multi")]:
        code, out = run_cli("map", rendered.root, "-o", tmp_path / "x.lmap", *args)
        assert code == 2 and message in out, out
        assert not (tmp_path / "x.lmap").exists()
    broken = tmp_path / "broken.lmap"
    broken.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(InputError, match="broken.lmap"):
        LandmarkMap.load(broken)
    code, out = run_cli("localize", broken, rendered.root, "-o", tmp_path / "poses.txt")
    assert code == 2 and "broken.lmap" in out


def test_a_map_with_a_scene_trained_backbone_carries_its_encoder(mapped, tmp_path):
    rendered, _ = mapped
    scene = read_scene(rendered.root, split="train")
    queries = read_scene(rendered.root, split="test")
    config = LandmarkMapConfig(num_landmarks=20, iterations=20, backbone="scratch")
    with torch_threads(1):
        landmark_map = build_landmark_map(scene, config, torch.device("cpu"), show_progress=False)
        assert landmark_map.encoder is not None
        assert landmark_map.metadata["encoder"]["version"] == "scene-trained"
        path = tmp_path / "scratch.lmap"
        landmark_map.save(path)
        loaded = LandmarkMap.load(path)
        weights = loaded.encoder.state_dict()
        for k, a in landmark_map.encoder.state_dict().items():
            assert torch.equal(a, weights[k]), k
        shared = load_encoder("xfeat").state_dict()
        assert not torch.equal(loaded.encoder.state_dict()["net.block1.0.layer.0.weight"],
                               shared["net.block1.0.layer.0.weight"])
        loaded.save(tmp_path / "again.lmap")
        before = sceneloc.Localizer(loaded).localize_scene(queries)
        after = sceneloc.Localizer(LandmarkMap.load(tmp_path / "again.lmap")).localize_scene(queries)
    assert [e.details["n_correspondences"] for e in before] == [e.details["n_correspondences"] for e in after]
    assert [e.num_inliers for e in before] == [e.num_inliers for e in after]
