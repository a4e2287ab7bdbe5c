"""Poses file round trip, pose metrics on hand-computed cases, report files and plots."""

import json
import math

import numpy as np
import pytest
from matplotlib.image import imread
from rich.console import Console

from conftest import perturbed_pose, random_pose
from sceneloc.runtime.errors import InputError
from sceneloc.evaluate import (RECALL_THRESHOLDS, evaluate_poses, format_summary_table, plot_error_cdf,
                               plot_trajectory, write_report)
from sceneloc.export import read_poses, write_pose_details_json, write_poses
from sceneloc.localize.estimate import PoseEstimate


@pytest.fixture
def case():
    """4 images with errors A (0.5 cm, 0.5 deg), B (1.5 cm, 3 deg), C (20 cm, 1 deg), D failed."""
    rng = np.random.default_rng(0)
    truth = {name: random_pose(rng) for name in "ABCD"}
    estimates = [PoseEstimate("A", perturbed_pose(truth["A"], 0.005, 0.5, rng), 500, 0.5),
                 PoseEstimate("B", perturbed_pose(truth["B"], 0.015, 3.0, rng), 300, 0.3),
                 PoseEstimate("C", perturbed_pose(truth["C"], 0.20, 1.0, rng), 100, 0.1),
                 PoseEstimate("D", None, 0, 0.0)]
    return truth, estimates


EXPECTED_RECALL = {"1cm1deg": 0.25, "2cm2deg": 0.25, "5cm5deg": 0.5, "10cm5deg": 0.5, "25cm2deg": 0.5,
                   "50cm5deg": 0.75}


def test_hand_computed_medians_and_recalls(case):
    truth, estimates = case
    result = evaluate_poses(estimates, truth)
    assert result["n_query"] == 4 and result["n_failed"] == 1 and result["n_missing"] == 0
    # t errors [0.5, 1.5, 20, inf] cm, r errors [0.5, 1, 3, inf] deg.
    assert result["median_t_cm"] == pytest.approx(10.75, abs=1e-9)
    assert result["median_r_deg"] == pytest.approx(2.0, abs=1e-9)
    assert result["recall"] == pytest.approx(EXPECTED_RECALL)
    per_image = {p["name"]: p for p in result["per_image"]}
    assert per_image["C"]["t_err_cm"] == pytest.approx(20.0) and per_image["C"]["r_err_deg"] == pytest.approx(1.0)
    assert per_image["D"]["status"] == "failed" and math.isinf(per_image["D"]["t_err_cm"])
    assert per_image["A"]["num_inliers"] == 500


def test_missing_images_count_as_failed(case):
    truth, estimates = case
    result = evaluate_poses(estimates[:3], truth)
    assert result["n_failed"] == 1 and result["n_missing"] == 1
    assert result["recall"] == pytest.approx(EXPECTED_RECALL)
    result = evaluate_poses(estimates[:1], truth)
    assert result["n_failed"] == 3 and math.isinf(result["median_t_cm"]) and math.isinf(result["median_r_deg"])
    assert result["recall"]["50cm5deg"] == pytest.approx(0.25)


def test_unknown_or_duplicate_estimates_are_input_errors(case):
    truth, estimates = case
    with pytest.raises(InputError, match="'E' has no ground-truth"):
        evaluate_poses(estimates + [PoseEstimate("E", None)], truth)
    with pytest.raises(InputError, match="twice"):
        evaluate_poses(estimates + [estimates[0]], truth)


def test_poses_file_round_trip_is_exact(case, tmp_path):
    truth, estimates = case
    estimates.append(PoseEstimate("seq 1/frame-000001.color.png", truth["A"], 42))
    path = tmp_path / "poses.txt"
    write_poses(path, estimates)
    text = path.read_text()
    assert text.startswith("#") and "cam_from_world" in text.split("\n")[1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["poses.txt"]  # no temporary file left behind
    back = read_poses(path)
    assert [e.name for e in back] == [e.name for e in estimates]
    for est, got in zip(estimates, back):
        assert got.num_inliers == est.num_inliers
        if est.cam_from_world is None:
            assert got.cam_from_world is None
            continue
        np.testing.assert_allclose(got.cam_from_world.qvec_wxyz, est.cam_from_world.qvec_wxyz, rtol=0, atol=1e-12)
        np.testing.assert_allclose(got.cam_from_world.translation, est.cam_from_world.translation, rtol=0, atol=1e-12)
    failed_line = next(line for line in text.splitlines() if line.startswith("D "))
    assert failed_line.split() == ["D"] + ["nan"] * 7 + ["0"]


@pytest.mark.parametrize("bad_line", [
    "img.png 1 0 0 0 0 0",                    # too few fields
    "img.png 1 0 0 zero 0 0 0 10",             # not a number
    "img.png 2 0 0 0 0 0 0 10",               # quaternion norm 2
    "img.png nan 0 0 0 0 0 0 10",             # partial nan
    "img.png 1 0 0 0 0 0 0 -3",               # negative inlier count
    "a.png 1 0 0 0 0 0 0 10",                 # listed twice
])
def test_malformed_poses_line_names_its_line(tmp_path, bad_line):
    path = tmp_path / "poses.txt"
    path.write_text("# header\n\na.png 1 0 0 0 0.5 0 0 10\n" + bad_line + "\n")
    with pytest.raises(InputError, match="line 4") as info:
        read_poses(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_poses_file_errors(tmp_path):
    with pytest.raises(InputError, match="not found"):
        read_poses(tmp_path / "missing.txt")
    with pytest.raises(InputError, match="cannot be stored"):
        write_poses(tmp_path / "p.txt", [PoseEstimate("a\tb.png", None)])
    assert not (tmp_path / "p.txt").exists()


def test_pose_details_json(case, tmp_path):
    truth, estimates = case
    estimates[0].details = {"time_ms": np.float32(12.5), "iterations": np.int64(300), "score": float("nan")}
    path = tmp_path / "details.json"
    write_pose_details_json(path, estimates)
    images = {d["name"]: d for d in json.loads(path.read_text())["images"]}
    assert images["A"]["details"] == {"time_ms": 12.5, "iterations": 300, "score": None}
    np.testing.assert_allclose(images["A"]["world_from_cam_center"], estimates[0].cam_from_world.center)
    np.testing.assert_allclose(images["A"]["cam_from_world"]["tvec"], estimates[0].cam_from_world.translation)
    assert images["D"]["cam_from_world"] is None and images["D"]["num_inliers"] == 0


def assert_png(path, min_width, min_height):
    image = imread(path)
    assert image.shape[1] >= min_width and image.shape[0] >= min_height
    assert image[..., :3].std() > 0.05  # something is drawn


def test_report_files(case, tmp_path):
    truth, estimates = case
    result = evaluate_poses(estimates, truth)
    paths = write_report(result, tmp_path / "out" / "ace.v1")
    assert [p.name for p in paths] == ["ace.v1.json", "ace.v1.md", "ace.v1_cdf.png"]
    assert all(p.exists() for p in paths)
    data = json.loads(paths[0].read_text())
    assert set(data["recall"]) == set(RECALL_THRESHOLDS)
    assert data["median_t_cm"] == pytest.approx(10.75) and data["median_r_deg"] == pytest.approx(2.0)
    assert data["recall"] == pytest.approx(EXPECTED_RECALL)
    failed = next(p for p in data["per_image"] if p["name"] == "D")
    assert failed["t_err_cm"] is None  # infinite error is null in strict JSON
    markdown = paths[1].read_text()
    assert "| median translation error | 10.75 cm |" in markdown
    assert "| recall 50 cm, 5 deg | 75.0 % |" in markdown
    assert_png(paths[2], 800, 300)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(p.name for p in paths)


def test_summary_table(case):
    truth, estimates = case
    table = format_summary_table(evaluate_poses(estimates, truth))
    assert table.row_count == 4 + len(RECALL_THRESHOLDS)
    console = Console(record=True, width=100)
    console.print(table)
    text = console.export_text()
    assert "10.75 cm" in text and "25.0 %" in text


def test_plots_with_several_methods_and_a_failure(case, tmp_path):
    truth, estimates = case
    good = evaluate_poses(estimates, truth)
    none = evaluate_poses([], truth)
    plot_error_cdf({"method": good, "nothing localised": none}, tmp_path / "cdf.png")
    assert_png(tmp_path / "cdf.png", 800, 300)
    plot_trajectory(truth, estimates, tmp_path / "trajectory.png")
    assert_png(tmp_path / "trajectory.png", 400, 300)
    with pytest.raises(InputError, match="no ground-truth"):
        plot_trajectory(truth, [PoseEstimate("E", None)], tmp_path / "t2.png")
