"""Depth completion (sceneloc/export/depth.py, `sceneloc complete-depth`): hole filling and errors on hand-made
arrays, the per-image regressor against nearest-neighbour filling and its prior, and the command on a rendered room
with the map written before issue 13 (tests/data/maps_5b85055) as the prior."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import run_cli, torch_threads

from sceneloc.export.depth import DepthCompletionConfig, complete_depth, depth_errors, nearest_fill, punch_holes

MAPS = Path(__file__).parent / "data" / "maps_5b85055"


def test_nearest_fill_and_errors_on_hand_made_arrays():
    depth = np.array([[1.0, 0.0, 0.0, 4.0]], np.float32)
    np.testing.assert_array_equal(nearest_fill(depth), [[1.0, 1.0, 4.0, 4.0]])
    truth = np.array([[1.0, 2.0, 3.0, 4.0]])
    errors = depth_errors(nearest_fill(depth), truth, depth == 0)
    assert errors["mae_m"] == pytest.approx(1.0) and errors["rmse_m"] == pytest.approx(1.0)
    assert errors["abs_rel"] == pytest.approx((1 / 2 + 1 / 3) / 2) and errors["delta_1.25"] == 0.0
    assert errors["pixels"] == 2


def test_punched_holes_cover_the_asked_share_of_known_depth():
    depth = np.ones((120, 160), np.float32)
    depth[:, :20] = 0.0  # already missing
    removed = punch_holes(depth, 0.3, np.random.default_rng(0), (0.03, 0.12))
    share = removed.sum() / (depth > 0).sum()
    assert 0.3 <= share < 0.4 and not removed[:, :20].any()


def _tilted_plane(h: int = 96, w: int = 128) -> np.ndarray:
    v, u = np.mgrid[:h, :w]
    return (2.0 + 0.01 * u + 0.004 * v).astype(np.float32)


def test_regressor_corrects_a_wrong_prior_better_than_either_baseline():
    truth = _tilted_plane()
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 255, truth.shape + (3,), dtype=np.uint8)
    removed = punch_holes(truth, 0.3, rng, (0.1, 0.2))
    holed = np.where(removed, 0.0, truth).astype(np.float32)
    v, u = np.mgrid[:truth.shape[0], :truth.shape[1]]
    prior = truth * (1.15 + 0.1 * u / truth.shape[1])  # a map 15-25 % off, the error growing across the image
    with torch_threads(1):
        filled, stats = complete_depth(holed, rgb, prior, replace(DepthCompletionConfig(), steps=400))
    ours = depth_errors(filled, truth, removed)["mae_m"]
    assert ours < 0.3 * depth_errors(nearest_fill(holed), truth, removed)["mae_m"]
    assert ours < 0.1 * depth_errors(prior, truth, removed)["mae_m"]
    np.testing.assert_array_equal(filled[~removed], truth[~removed])  # known depth is kept as it is
    assert stats["validation_mae_m"] < 0.1 * stats["prior_validation_mae_m"]


@pytest.fixture(scope="module")
def room(tmp_path_factory):
    """The 20-frame tiny room single_v1.map was made from, with a hole punched into every depth image."""
    from sceneloc.data.synthetic import PRESETS, render_scene_to_folder

    root = tmp_path_factory.mktemp("depth") / "room"
    render_scene_to_folder(replace(PRESETS["tiny-room"], n_map=20, n_query=2), root, progress=False)
    truth = {}
    for path in sorted((root / "train" / "depth").glob("*.png")):
        depth = cv2.imread(str(path), cv2.IMREAD_ANYDEPTH)
        truth[path.name] = depth.copy()
        depth[40:80, 50:110] = 0
        cv2.imwrite(str(path), depth)
    return root, truth


def test_complete_depth_fills_the_holes_and_keeps_known_depth(room, tmp_path):
    root, truth = room
    out = tmp_path / "completed"
    with torch_threads(1):
        code, text = run_cli("complete-depth", MAPS / "single_v1.map", root, "-o", out, "--stride", "5",
                             "--set", "steps=200")
    assert code == 0, text
    written = sorted(out.glob("*.depth.png"))
    assert len(written) == 4
    for path in written:
        filled = cv2.imread(str(path), cv2.IMREAD_ANYDEPTH)
        holed = cv2.imread(str(root / "train" / "depth" / path.name), cv2.IMREAD_ANYDEPTH)
        assert (filled > 0).all()
        np.testing.assert_array_equal(filled[holed > 0], holed[holed > 0])
        hole = holed == 0
        # The room's walls are 2-3.5 m away: filled within 10 cm of the rendered depth (median over the hole).
        assert np.median(np.abs(filled[hole].astype(float) - truth[path.name][hole])) < 100


def test_evaluation_reports_each_method_and_the_regressor_beats_the_nearest_fill(room, tmp_path):
    root, _ = room
    out = tmp_path / "report"
    with torch_threads(1):
        code, text = run_cli("complete-depth", MAPS / "single_v1.map", root, "-o", out, "--evaluate", "--stride",
                             "5", "--set", "steps=200")
    assert code == 0, text
    result = json.loads((out / "depth_completion.json").read_text())
    assert len(result["frames"]) == 4 and set(result["mean"]) == {"nearest", "prior", "regressor"}
    # Measured: MAE 1.13 cm against the nearest fill's 2.86 cm and the map's own 2.79 cm.
    assert result["mean"]["regressor"]["mae_m"] < 0.7 * result["mean"]["nearest"]["mae_m"]
    assert result["mean"]["regressor"]["mae_m"] < 0.7 * result["mean"]["prior"]["mae_m"]
    assert "| regressor |" in (out / "depth_completion.md").read_text()


def test_bad_inputs_fail_in_one_line(room, tmp_path):
    root, _ = room
    for args, message in [(["--fraction", "1.5", "--evaluate"], "--fraction"),
                          (["--set", "steps=0"], "steps must be >= 1"),
                          (["-o", root / "train" / "depth"], "is also an input")]:
        target = [] if "-o" in args else ["-o", tmp_path / "out"]
        code, text = run_cli("complete-depth", MAPS / "single_v1.map", root, *target, *args)
        assert code == 2 and message in text, text
    code, text = run_cli("complete-depth", MAPS / "single_v1.map", MAPS / "frames", "-o", tmp_path / "out")
    assert code == 2 and "no frame has depth" in text, text
