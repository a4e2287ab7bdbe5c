"""The hybrid map (sceneloc map --type hybrid): guided matching's parts on hand-made inputs (the cell a keypoint falls
in, matching restricted to candidate pairs, the choice between the two poses), then end to end on the tiny rendered
room against its own two parts localized alone in the same test, the file round trip and the command line."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import pose_scores, run_cli

import sceneloc
from sceneloc.data import read_scene
from sceneloc.encode import cell_centres
from sceneloc.export.points import read_ply
from sceneloc.geometry import Camera, Rigid3
from sceneloc.localize.hybrid import CELLS, POINTS, HybridPredictor, keypoint_coordinates, pose_support
from sceneloc.localize.loop import LocalizeConfig, Prediction
from sceneloc.mapping.structure.features import match_candidates, match_descriptors
from sceneloc.mapping.structure.quantise import unit_rows
from sceneloc.maps.hybrid_map import HybridMap
from sceneloc.solve import PnPResult


def test_keypoints_take_the_coordinates_of_the_cell_they_fall_in_at_any_image_size():
    work = Camera(64, 48, 50.0, 50.0, 31.5, 23.5)
    pixels = cell_centres(48, 64).astype(np.float64)
    coords = np.column_stack([pixels, np.arange(len(pixels))]).astype(np.float64)  # z: the cell's index
    cells = Prediction(pixels, coords, work, None)
    full = Camera(256, 192, 200.0, 200.0, 127.5, 95.5)  # the same view at 4x
    rng = np.random.default_rng(0)
    work_px = rng.uniform([0, 0], [64, 48], (200, 2))
    keypoints = (work_px + 0.5) * 4 - 0.5  # pixel-centre-preserving scaling
    got = keypoint_coordinates(cells, np.vstack([keypoints, [[-10.0, 5.0], [300.0, 5.0]]]), full)
    cell = np.floor(work_px[:, 1] / 8).astype(int) * 8 + np.floor(work_px[:, 0] / 8).astype(int)
    np.testing.assert_array_equal(got[:200, 2], cell)
    assert np.isnan(got[200:]).all()  # outside the image: no cell


def test_matching_among_all_pairs_is_exact_matching_and_candidates_restrict_it():
    rng = np.random.default_rng(1)
    reference = unit_rows(rng.normal(size=(300, 32)).astype(np.float32))
    query = unit_rows(reference[rng.integers(0, 300, 80)] + rng.normal(0, 0.3, (80, 32)).astype(np.float32))
    every_q, every_r = np.divmod(np.arange(80 * 300), 300)
    got = match_candidates(query, reference, every_q, every_r, 0.8, 0.7)
    want = match_descriptors(query, reference, 0.8, 0.7)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])
    # One candidate per query: the ratio test has nothing to compare with, the distance bound alone decides.
    single = match_candidates(query, reference, np.arange(80), want[1][:1].repeat(80), 0.8, np.pi)
    assert len(single[0]) == 80
    near = match_candidates(query, reference, np.arange(80), want[1][:1].repeat(80), 0.8, 0.7)
    assert set(near[0]) <= set(np.flatnonzero(query @ reference[want[1][0]] >= np.cos(0.7)))


TRUE = Rigid3.identity()
WRONG = Rigid3(np.eye(3), np.array([0.5, 0.0, 0.0]))  # half a metre off: every cell reprojects far away


def _result(inliers: int, pose: Rigid3 | None = TRUE) -> PnPResult:
    return PnPResult(pose, inliers, inliers / 100, 10, np.zeros(100, bool))


def _cells(n: int = 300) -> Prediction:
    """Cells of a 64x48 view at the identity pose whose coordinates reproject exactly onto their pixels."""
    camera = Camera(64, 48, 50.0, 50.0, 31.5, 23.5)
    rng = np.random.default_rng(2)
    pixels = rng.uniform([0, 0], [64, 48], (n, 2))
    depth = rng.uniform(2, 4, n)
    coords = np.column_stack([(pixels - [31.5, 23.5]) / 50.0 * depth[:, None], depth])
    return Prediction(pixels, coords, camera, None)


@pytest.mark.parametrize("points, cells, want", [((40, WRONG), (300, TRUE), POINTS),  # enough inliers
                                                  ((10, TRUE), (300, TRUE), POINTS),
                                                  ((9, TRUE), (300, TRUE), POINTS),  # the cells agree
                                                  ((9, WRONG), (300, TRUE), CELLS),  # they do not
                                                  ((5, WRONG), (0, None), POINTS),  # no other pose
                                                  ((0, None), (50, TRUE), CELLS)])
def test_the_points_pose_is_taken_from_enough_inliers_or_the_cells_agreement(points, cells, want):
    predictor = HybridPredictor.__new__(HybridPredictor)
    config = LocalizeConfig()
    predictor.min_inliers, predictor.min_support = config.hybrid_min_inliers, config.hybrid_min_support
    predictor.cells_threshold_px = config.solver.inlier_threshold_px
    assert predictor.min_inliers == 10
    problems = [Prediction(np.zeros((0, 2)), np.zeros((0, 3)), Camera(64, 48, 50.0, 50.0, 31.5, 23.5), None),
                _cells()]
    assert predictor.choose(problems, [_result(*points), _result(*cells)]) == want


def test_pose_support_counts_the_cells_that_reproject_under_a_pose():
    cells = _cells()
    assert pose_support(TRUE, cells, 1.0) == 300
    assert pose_support(WRONG, cells, 1.0) == 0
    cells.coords[:100] = np.nan  # no prediction: not counted
    assert pose_support(TRUE, cells, 1.0) == 200


@pytest.fixture(scope="module")
def built(tiny_room_sift, tmp_path_factory):
    """(rendered room, hybrid map path) made through the command line: a small head (120 px, 1,500 steps) and a
    quarter of the uncompressed points' bytes, as the structure map's test (test_structure_map.py)."""
    rendered, _ = tiny_room_sift
    path = tmp_path_factory.mktemp("hybrid") / "room.map"
    code, out = run_cli("map", rendered.root, "-o", path, "--type", "hybrid", "--image-height", "120",
                        "--iterations", "1500", "--buffer-size", "20000", "--set", "structure.budget_fraction=0.25")
    assert code == 0, out
    return rendered, path


def test_hybrid_is_at_least_as_good_as_either_of_its_parts_alone(built):
    rendered, path = built
    queries = read_scene(rendered.root, split="test")
    hybrid = sceneloc.load_map(path)
    assert isinstance(hybrid, HybridMap)
    ours = pose_scores(sceneloc.Localizer(hybrid).localize_scene(queries), queries)
    cells = pose_scores(sceneloc.Localizer(hybrid.scene_map).localize_scene(queries), queries)
    points = pose_scores(sceneloc.Localizer(hybrid.structure_map).localize_scene(queries), queries)
    best = max(cells["recall"]["5cm5deg"], points["recall"]["5cm5deg"])
    # 20 queries: one query is 5 points of recall.
    assert ours["recall"]["5cm5deg"] >= best - 0.05, (ours["recall"], cells["recall"], points["recall"])
    assert ours["median_t_cm"] <= 1.5 * min(cells["median_t_cm"], points["median_t_cm"]) + 0.5


def test_hybrid_map_file_round_trips_exactly_and_gives_the_same_poses(built, tmp_path):
    rendered, path = built
    loaded = HybridMap.load(path)
    copy = tmp_path / "copy.map"
    loaded.save(copy)
    again = HybridMap.load(copy)
    for part in ("scene_map", "structure_map"):
        a, b = getattr(loaded, part).file_contents()[0], getattr(again, part).file_contents()[0]
        assert sorted(a) == sorted(b)
        for name in a:
            np.testing.assert_array_equal(np.asarray(a[name]), np.asarray(b[name]))
    queries = read_scene(rendered.root, split="test")
    config = LocalizeConfig(precision="fp32")
    first = sceneloc.Localizer(loaded, config).localize_scene(queries)
    second = sceneloc.Localizer(again, config).localize_scene(queries)
    assert [e.details["pose_from"] for e in first] == [e.details["pose_from"] for e in second]
    for a, b in zip(first, second):
        assert (a.cam_from_world is None) == (b.cam_from_world is None)
        if a.cam_from_world is not None:
            np.testing.assert_allclose(a.cam_from_world.matrix(), b.cam_from_world.matrix(), atol=1e-9)


def test_localize_and_export_points_take_a_hybrid_map(built, tmp_path):
    rendered, path = built
    code, out = run_cli("localize", path, rendered.root, "-o", tmp_path / "poses.txt")
    assert code == 0, out
    assert len(sceneloc.read_poses(tmp_path / "poses.txt")) == 20
    code, out = run_cli("export", "points", path, "-o", tmp_path / "points.ply")
    assert code == 0, out
    cloud = read_ply(tmp_path / "points.ply")
    assert len(cloud.xyz) == len(HybridMap.load(path).structure_map.points)


@pytest.mark.parametrize("extra, problem", [(["--multi"], "--multi and --init are for scr maps"),
                                            (["--budget-mb", "0"], "budget_mb must be > 0")])
def test_bad_hybrid_settings_fail_in_one_line_before_mapping(extra, problem, tiny_room_sift, tmp_path):
    rendered, _ = tiny_room_sift
    code, out = run_cli("map", rendered.root, "-o", tmp_path / "x.map", "--type", "hybrid", *extra)
    assert code == 2 and problem in out and "Traceback" not in out, out
    assert not (tmp_path / "x.map").exists()
