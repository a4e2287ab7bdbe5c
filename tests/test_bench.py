"""`sceneloc bench` on the tiny suite: the results.json schema, the report table, the plots, the scene cache, the
mapping child's own peak memory, and option checking."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import torch_threads
from sceneloc.evaluate.report import strict_json
from sceneloc.bench.methods import METHODS
from sceneloc.bench.runner import RESULT_KEYS, BenchOptions, check_options, split_overrides
from sceneloc.cli import app
from sceneloc.data import read_scene
from sceneloc.runtime.errors import InputError
from sceneloc.evaluate import RECALL_THRESHOLDS, evaluate_poses
from sceneloc.export import read_poses

# A small, fast scr: its accuracy is not under test here, only that it runs through the bench.
FAST_SCR = ["image_height=120", "buffer_size=20000", "iterations=60", "head.width=128"]


def _bench(out, cache, *extra):
    args = ["bench", "--suite", "tiny", "--out", str(out), "--cache", str(cache), "--device", "cpu"]
    for item in FAST_SCR:
        args += ["--set", item]
    result = CliRunner().invoke(app, args + list(extra))
    assert result.exit_code == 0, result.output
    return json.loads((out / "results.json").read_text())


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    # Two torch threads on two cores shared with other jobs can be 100x slower than one: keep the test's runtime
    # predictable (the mapping child reads the environment, this process the setting).
    patch = pytest.MonkeyPatch()
    patch.setenv("OMP_NUM_THREADS", "1")
    base = tmp_path_factory.mktemp("bench")
    try:
        with torch_threads(1):
            rows = _bench(base / "out", base / "cache")
    finally:
        patch.undo()
    return base, rows


def test_results_json_has_the_exact_schema(first_run):
    base, rows = first_run
    assert [(r["suite"], r["scene"], r["method"]) for r in rows] == [("tiny", "tiny-room", "scr"),
                                                                     ("tiny", "tiny-room", "colmap-sift")]
    (scene,) = (base / "cache" / "scenes").iterdir()
    truth = {f.name: f.cam_from_world for f in read_scene(scene, split="test").frames}
    for row in rows:
        assert tuple(row)[:len(RESULT_KEYS)] == RESULT_KEYS
        assert (row["n_map"], row["n_query"], row["seed"], row["device"]) == (60, 20, 0, "cpu")
        assert set(row["recall"]) == set(RECALL_THRESHOLDS)
        # The row's accuracy is that of the poses file it wrote, scored against the scene's ground truth.
        expected = evaluate_poses(read_poses(base / "out" / "poses" / f"tiny_tiny-room_{row['method']}.txt"), truth)
        assert all(isinstance(v, float) for v in row["recall"].values()) and row["recall"] == expected["recall"]
        assert row["n_failed"] == expected["n_failed"]
        for key in ("median_t_cm", "median_r_deg"):
            assert row[key] == (None if math.isinf(expected[key]) else pytest.approx(expected[key], rel=1e-9))
        assert isinstance(row["map_s"], float) and row["map_s"] > 0
        assert isinstance(row["query_ms_median"], float) and row["query_ms_median"] > 0
        assert isinstance(row["map_peak_rss_mb"], float) and 20 < row["map_peak_rss_mb"] < 8000
        suffix = ".map" if row["method"] == "scr" else ".sift.safetensors"
        assert row["map_bytes"] == (base / "out" / "maps" / f"tiny_tiny-room_{row['method']}{suffix}").stat().st_size
        assert row["commit"] is None or re.fullmatch(r"[0-9a-f]{40}(-dirty)?", row["commit"])
        assert row["resolution"] == "160x120"
    sift = rows[1]
    # The peer really localizes: its numbers are measurements, not placeholders.
    assert sift["median_t_cm"] < 5.0 and sift["recall"]["5cm5deg"] >= 0.8
    assert sift["map_details"]["n_points"] * 140 < sift["map_bytes"]
    assert rows[0]["settings"]["iterations"] == 60 and rows[0]["settings"]["head"]["width"] == 128


def test_report_has_a_scene_row_and_method_columns(first_run):
    base, rows = first_run
    lines = (base / "out" / "report.md").read_text().splitlines()
    header = lines.index("| scene | scr | colmap-sift |")
    scene_row = lines[header + 2]
    assert scene_row.startswith("| tiny-room (160x120, 60 mapping / 20 query) |")
    cells = [c.strip() for c in scene_row.strip("|").split("|")[1:]]
    assert len(cells) == 2
    sift_cell = re.fullmatch(r"([0-9.]+) cm / ([0-9.]+)°, (\d+) %", cells[1])
    assert sift_cell and float(sift_cell[1]) == pytest.approx(rows[1]["median_t_cm"], abs=0.006)
    assert int(sift_cell[3]) == round(rows[1]["recall"]["5cm5deg"] * 100)


def test_plots_and_poses_are_written(first_run):
    base, _ = first_run
    for name in ("tiny_tiny-room_cdf.png", "tiny_tiny-room_size.png", "tiny_tiny-room_scr_trajectory.png",
                 "tiny_tiny-room_colmap-sift_trajectory.png"):
        data = (base / "out" / "plots" / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    poses = (base / "out" / "poses" / "tiny_tiny-room_colmap-sift.txt").read_text().splitlines()
    assert sum(not line.startswith("#") for line in poses) == 20


def test_second_run_uses_the_cache_and_the_child_reports_its_own_memory(first_run):
    base, rows = first_run
    assert rows[0]["scene_from_cache"] is False
    scenes = list((base / "cache" / "scenes").iterdir())
    assert len(scenes) == 1 and scenes[0].name.startswith("tiny-room-seed0-")
    frame = scenes[0] / "train" / "rgb" / "frame-000000.color.png"
    mtime = frame.stat().st_mtime_ns
    # 600 MB held by this process while the child maps: a child's ru_maxrss would include it (inherited through
    # fork), the child's own peak (VmHWM) must not.
    ballast = np.ones(600 * 2**20 // 8)
    second = _bench(base / "out2", base / "cache", "--methods", "colmap-sift")
    assert ballast.sum() > 0
    assert [r["method"] for r in second] == ["colmap-sift"] and second[0]["scene_from_cache"] is True
    assert frame.stat().st_mtime_ns == mtime and list((base / "cache" / "scenes").iterdir()) == scenes
    # Against the same method's child in the first run, without the ballast.
    assert second[0]["map_peak_rss_mb"] < rows[1]["map_peak_rss_mb"] + 300, (second[0], rows[1]["map_peak_rss_mb"])


def test_keypoint_methods_extend_the_plain_map_and_resume_reuses_maps(first_run, monkeypatch):
    base, _ = first_run
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    out = base / "kp"
    fast_keypoints = ["--set", "keypoints.iterations=50", "--set", "keypoints.net.width=32", "--set",
                      "keypoints.fine_tune_iterations=20"]
    with torch_threads(1):
        rows = _bench(out, base / "cache", "--methods", "scr,scr-acehead-kp", *fast_keypoints)
        records = {p.name: json.loads(p.read_text()) for p in (out / "maps").glob("*.build.json")}
        resumed = _bench(out, base / "cache", "--methods", "scr,scr-acehead-kp", "--resume", *fast_keypoints)
    plain, kp = records["tiny_tiny-room_scr.map.build.json"], records["tiny_tiny-room_scr-acehead-kp.map.build.json"]
    # The keypoint map was made from the plain one, and its map time counts both builds.
    details = kp["built"]["details"]
    assert details["base_map"] == "tiny_tiny-room_scr.map" and details["keypoints"]["fine_tune_rows"] > 0
    assert kp["built"]["map_s"] == pytest.approx(plain["built"]["map_s"] + details["extension_map_s"])
    assert rows[1]["map_s"] == kp["built"]["map_s"] and rows[1]["settings"]["keypoints"]["enabled"] is True
    # Resuming rebuilt nothing: the same records, the same maps, hence the same poses.
    assert {p.name: json.loads(p.read_text()) for p in (out / "maps").glob("*.build.json")} == records
    assert [(r["map_s"], r["median_t_cm"], r["recall"]) for r in resumed] == [
        (r["map_s"], r["median_t_cm"], r["recall"]) for r in rows]


def test_options_are_checked_before_anything_runs(tmp_path):
    with pytest.raises(InputError, match=r"unknown suite 'nope'; available: tiny, quick, speed"):
        check_options(BenchOptions(tmp_path, suites=["nope"]))
    # Every method, in METHODS' order (the variants are many; the message must list them all).
    assert list(METHODS)[:2] == ["scr", "scr-effnet"] and {"squeeze", "hybrid", "colmap-sift"} <= set(METHODS)
    with pytest.raises(InputError, match=re.escape("unknown method 'sift'; available: " + ", ".join(METHODS))):
        check_options(BenchOptions(tmp_path, suites=["tiny"], methods=["sift"]))
    with pytest.raises(InputError, match=r"unknown scene 'hall' in suite\(s\) quick; available: quick-room"):
        check_options(BenchOptions(tmp_path, suites=["quick"], scenes=["hall"]))
    with pytest.raises(InputError, match=r"colmap-sift: --set nope: unknown field 'nope'"):
        check_options(BenchOptions(tmp_path, overrides=["colmap-sift.nope=1"]))
    settings = check_options(BenchOptions(tmp_path, overrides=["iterations=3", "colmap-sift.num_neighbors=4"]))
    assert settings["scr"]["iterations"] == 3 and settings["colmap-sift"]["num_neighbors"] == 4
    routed = split_overrides(["iterations=3", "scr.head.width=64", "colmap-sift.seed=2", "scinr.sampling=x"], "fp32")
    # Every method with a precision setting gets --precision first (a --set may override it); colmap-sift has none.
    assert routed["scinr"] == ["mapping.precision=fp32", "sampling=x"]
    assert routed["scinr-no-scra"] == ["mapping.precision=fp32"]
    assert routed["scr"] == ["precision=fp32", "iterations=3", "head.width=64"] and routed["colmap-sift"] == ["seed=2"]
    assert all(routed[name] == ["precision=fp32", "iterations=3"] for name in routed if name.startswith("scr-"))
    # A variant's own settings come first, the user's override after them.
    assert settings["scr-reshead-kp"]["head"]["num_blocks"] == 6 and settings["scr-reshead-kp"]["iterations"] == 3
    assert settings["scr-reshead-kp"]["keypoints"]["enabled"] is True
    assert not (tmp_path / "results.json").exists()


def test_infinite_medians_become_null():
    row = {"median_t_cm": math.inf, "median_r_deg": float("nan"), "recall": {"5cm5deg": 0.0}, "rows": [math.inf]}
    assert strict_json(row) == {"median_t_cm": None, "median_r_deg": None, "recall": {"5cm5deg": 0.0},
                                "rows": [None]}


DATA = __import__("pathlib").Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.mark.skipif(not (DATA / "slambook_rgbd").is_dir(), reason="needs ../shared/data/slambook_rgbd")
def test_folds_pool_into_one_row_and_query_variants_reuse_the_map(tmp_path, monkeypatch):
    from sceneloc.bench import suites
    from sceneloc.bench.real_scenes import SLAMBOOK
    from sceneloc.bench.runner import run_bench
    from sceneloc.bench.scenes import SyntheticSceneSpec
    from sceneloc.bench.variant_scenes import DegradedQueriesSpec

    suite = suites.Suite("t", "test", (DegradedQueriesSpec(SyntheticSceneSpec("tiny-room"), ("jpeg",)), SLAMBOOK),
                         ("colmap-sift",))
    monkeypatch.setitem(suites.SUITES, "t", suite)
    rows = run_bench(BenchOptions(tmp_path / "out", suites=["t"], cache_dir=tmp_path / "cache", data_root=DATA,
                                  show_progress=False))
    assert [(r["scene"], r["n_folds"], r["n_map"], r["n_query"]) for r in rows] == [
        ("tiny-room", 1, 60, 20), ("tiny-room+jpeg", 1, 60, 20), ("slambook", 5, 4, 5)]
    # One map serves the original and the degraded queries; the folds made five maps.
    maps = sorted(p.name for p in (tmp_path / "out" / "maps").iterdir() if not p.name.endswith(".build.json"))
    assert maps == ["t_slambook_fold%02d_colmap-sift.sift.safetensors" % k for k in range(5)] + [
        "t_tiny-room_colmap-sift.sift.safetensors"]
    assert rows[0]["map_bytes"] == rows[1]["map_bytes"]
    poses = (tmp_path / "out" / "poses" / "t_slambook_colmap-sift.txt").read_text().splitlines()
    assert sorted(line.split()[0] for line in poses if not line.startswith("#")) == ["1", "2", "3", "4", "5"]
    assert rows[0]["median_t_cm"] < 5.0 and rows[1]["recall"]["50cm5deg"] > 0.5


FAST_SCINR = ["scinr.mapping.image_height=120", "scinr.mapping.buffer_size=20000", "scinr.mapping.iterations=60",
              "scinr.model.width=128"]


def test_quick_suite_with_the_peer_and_one_multi_scene_map(tmp_path, monkeypatch):
    """`sceneloc bench --suite quick` end to end (mapping shortened to seconds: the schema and the plumbing are
    under test; docs/BENCHMARKS.md has the full-length numbers)."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    out = tmp_path / "out"
    args = ["bench", "--suite", "quick", "--methods", "scr,colmap-sift,scinr", "--out", str(out),
            "--cache", str(tmp_path / "cache"), "--device", "cpu"]
    for item in FAST_SCR + FAST_SCINR:
        args += ["--set", item]
    with torch_threads(1):
        result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    rows = json.loads((out / "results.json").read_text())
    assert [(r["scene"], r["method"]) for r in rows] == [
        ("quick-room", "scr"), ("quick-room", "colmap-sift"), ("quick-room", "scinr"),
        ("quick-room-seed1", "scinr"), ("quick-room-seed2@1000_0_0m", "scinr")]
    for row in rows:
        assert tuple(row)[:len(RESULT_KEYS)] == RESULT_KEYS
        assert row["n_query"] == 200 and row["resolution"] == "320x240"
        assert set(row["recall"]) == set(RECALL_THRESHOLDS)
    sift = rows[1]
    assert sift["n_map"] == 300 and sift["median_t_cm"] < 5.0 and sift["recall"]["5cm5deg"] >= 0.8
    scinr = rows[2:]
    # One map for the three rooms: the same file, time and size in every row.
    assert len({(r["map_s"], r["map_bytes"]) for r in scinr}) == 1 and all(r["n_scenes_in_map"] == 3 for r in scinr)
    assert sorted(p.name for p in (out / "maps").iterdir() if "scinr" in p.name) == [
        "quick_scinr.multimap", "quick_scinr.multimap.build.json"]
    # Identification ("auto") of each room's 200 queries: a count of images, and better than any map that ignores
    # the image, whose accuracy averaged over the three rooms is 1/3 however biased it is.
    assert all(r["identification_accuracy"] * 200 == pytest.approx(round(r["identification_accuracy"] * 200))
               for r in scinr)
    # Measured 0.81 / 0.435 / 0.345 (mean 0.53) with these 60 steps; 600 queries put a map that ignores the image
    # within 1/3 +- 0.02.
    assert np.mean([r["identification_accuracy"] for r in scinr]) > 1 / 3 + 0.08, [
        r["identification_accuracy"] for r in scinr]
    assert scinr[0]["settings"]["mapping"]["iterations"] == 60
    assert (out / "plots" / "quick_quick-room_cdf.png").is_file()
    assert "| quick-room (320x240, 300 mapping / 200 query) |" in (out / "report.md").read_text()
