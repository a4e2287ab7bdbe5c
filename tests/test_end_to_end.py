"""End to end through the installed `sceneloc` command: render tiny-room, map it, localize its query path, evaluate,
and check the outputs, the accuracy against a baseline and that mapping is reproducible.

Every command runs with OMP_NUM_THREADS=1: mapping is bit-reproducible for a given thread count only (1 and 2 threads
give different weights), and on a shared 2-core machine one thread is also several times faster than two.

The mapping config is the default one with a 240 px working height and 2,500 instead of 10,000 steps, so that it
takes about a minute on one thread. The baseline is the same map with its head untrained (seeded), localized and
evaluated the same way. Measured on tiny-room (60 mapping frames turning up to 30 degrees between frames, 20 queries)
with seeds 0 and 1, bf16 and fp32 (docs/BENCHMARKS.md, section 11): median 11.4-15.3 cm and 3.1-3.9 deg, recall
(50 cm, 5 deg) and fraction within (25 cm, 5 deg) 0.65-0.80; the untrained head 140-141 cm and 140-145 deg, 0 and 0."""

from __future__ import annotations

import dataclasses
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from sceneloc.evaluate import RECALL_THRESHOLDS
from sceneloc.maps.scene_map import SceneMap
from sceneloc.nn.heads import RegressionHead

MAPPING = ["--image-height", "240", "--iterations", "2500"]
"""The defaults, shortened (see the module docstring)."""
QUICK_MAPPING = ["--image-height", "120", "--buffer-size", "20000", "--iterations", "40", "--set",
                 "max_buffer_passes=1", "--set", "head.width=64", "--set", "batch_size=1024"]
"""For the reproducibility check only: a few seconds."""
RECALL_KEYS = {"1cm1deg", "2cm2deg", "5cm5deg", "10cm5deg", "25cm2deg", "50cm5deg"}
TIMING_KEYS = {"encode_s", "train_s", "keypoint_s", "total_s", "peak_rss_mb"}
"""Map metadata that legitimately differs between two identical runs."""


def sceneloc(*args) -> str:
    """Run the installed command; fails the test with its output on a non-zero exit. Returns stdout + stderr."""
    script = Path(sys.executable).with_name("sceneloc")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "sceneloc.cli"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    done = subprocess.run(command + [str(a) for a in args], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


@pytest.fixture(scope="module")
def room(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("e2e") / "tiny-room"
    sceneloc("render", "tiny-room", "-o", root)
    return root


@pytest.fixture(scope="module")
def pipeline(room) -> dict:
    out = room.parent / "out"
    map_file, poses = out / "room.map", out / "poses.txt"
    sceneloc("map", room, "-o", map_file, *MAPPING, "--seed", "0")
    sceneloc("localize", map_file, room, "-o", poses)
    sceneloc("evaluate", poses, "--gt", room, "-o", out / "eval")
    # The baseline: the same map with its head untrained, localized and evaluated the same way.
    baseline = room.parent / "baseline"
    baseline.mkdir()
    scene_map = SceneMap.load(map_file)
    torch.manual_seed(0)
    head = RegressionHead(scene_map.head.input_layer.in_features, scene_map.head.config, scene_map.head.mean.clone())
    dataclasses.replace(scene_map, head=head.eval()).save(baseline / "untrained.map")
    sceneloc("localize", baseline / "untrained.map", room, "-o", baseline / "poses.txt")
    sceneloc("evaluate", baseline / "poses.txt", "--gt", room, "-o", baseline / "eval")
    return {"map": map_file, "poses": poses, "report": json.loads((out / "eval.json").read_text()), "out": out,
            "baseline": json.loads((baseline / "eval.json").read_text())}


def query_names(room: Path) -> list[str]:
    return sorted(p.name.removesuffix(".color.png") for p in (room / "test" / "rgb").iterdir())


def test_outputs_are_all_there(pipeline):
    assert sorted(p.name for p in pipeline["out"].iterdir()) == [
        "eval.json", "eval.md", "eval_cdf.png", "poses.txt", "poses.txt.json", "room.map"]


def test_map_is_small_and_loads(pipeline):
    assert pipeline["map"].stat().st_size < 4e6
    scene_map = SceneMap.load(pipeline["map"])
    assert scene_map.encoder_name == "xfeat" and scene_map.image_height == 240
    assert scene_map.metadata["scene"]["n_frames"] == 60
    assert scene_map.metadata["mapping_config"]["iterations"] == 2500


def test_poses_file_has_one_line_per_query_image(pipeline, room):
    lines = [line.split() for line in pipeline["poses"].read_text().splitlines() if not line.startswith("#")]
    assert len(query_names(room)) == 20
    assert sorted(fields[0] for fields in lines) == query_names(room)
    assert all(len(fields) == 9 for fields in lines)


def _per_image_errors(report: dict) -> tuple[np.ndarray, np.ndarray]:
    """(translation cm, rotation deg) of every image of an evaluation report; a failed image (null) is inf."""
    def value(x):
        return np.inf if x is None else x
    return (np.array([value(p["t_err_cm"]) for p in report["per_image"]]),
            np.array([value(p["r_err_deg"]) for p in report["per_image"]]))


def test_evaluation_report_keys(pipeline):
    report = pipeline["report"]
    assert {"median_t_cm", "median_r_deg", "recall"} <= report.keys()
    assert set(report["recall"]) == RECALL_KEYS == set(RECALL_THRESHOLDS)
    assert report["n_query"] == len(report["per_image"]) == 20
    # The summary is that of the per-image errors.
    t_cm, r_deg = _per_image_errors(report)
    assert report["median_t_cm"] == pytest.approx(np.median(t_cm), rel=1e-12)
    assert report["median_r_deg"] == pytest.approx(np.median(r_deg), rel=1e-12)
    for key, (t_m, r_max) in RECALL_THRESHOLDS.items():
        assert report["recall"][key] == np.mean((t_cm < 100 * t_m) & (r_deg < r_max)), key


def test_accuracy_on_tiny_room(pipeline):
    report, baseline = pipeline["report"], pipeline["baseline"]

    def within_25cm_5deg(evaluation):
        t_cm, r_deg = _per_image_errors(evaluation)
        return float(np.mean((t_cm < 25) & (r_deg < 5)))
    numbers = {name: (e["median_t_cm"], e["median_r_deg"], e["recall"]["50cm5deg"], within_25cm_5deg(e))
               for name, e in (("map", report), ("untrained", baseline))}
    assert report["median_t_cm"] < 0.3 * baseline["median_t_cm"], numbers
    assert report["median_r_deg"] < 0.1 * baseline["median_r_deg"], numbers
    assert report["recall"]["50cm5deg"] >= baseline["recall"]["50cm5deg"] + 0.4, numbers
    assert within_25cm_5deg(report) >= within_25cm_5deg(baseline) + 0.4, numbers


def tensor_bytes(path: Path) -> bytes:
    """The data section of a safetensors file (everything after its JSON header)."""
    data = path.read_bytes()
    header_size = struct.unpack("<Q", data[:8])[0]
    return data[8 + header_size:]


def metadata_without_timings(path: Path) -> dict:
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["sceneloc"])
    meta["training"] = {k: v for k, v in meta["training"].items() if k not in TIMING_KEYS}
    return meta


def test_mapping_is_reproducible(room):
    out = room.parent / "repro"
    for name, seed in [("a", 0), ("b", 0), ("c", 1)]:
        sceneloc("map", room, "-o", out / f"{name}.map", *QUICK_MAPPING, "--seed", seed)
    a, b, c = (out / f"{name}.map" for name in "abc")
    # The weights are bit-identical; the files differ only in the recorded timings (which belong in the metadata).
    assert tensor_bytes(a) == tensor_bytes(b)
    assert metadata_without_timings(a) == metadata_without_timings(b)
    assert tensor_bytes(a) != tensor_bytes(c)
