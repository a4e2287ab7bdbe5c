"""Dense reconstruction (`sceneloc reconstruct`, `sceneloc evaluate-mesh`): TSDF fusion of exact rendered depth
reproduces the room's mesh, RGB-only fusion of a map's depth beats fusing an untrained map's, plane-sweep depth
against the rendered depth, and bad inputs fail in one line."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli, torch_threads

from sceneloc.data import read_scene
from sceneloc.evaluate.cloud import CloudEvalConfig, read_mesh
from sceneloc.evaluate.mesh import evaluate_mesh, visible_samples
from sceneloc.maps.scene_map import SceneMap
from sceneloc.reconstruct.fusion import ReconstructionConfig, reconstruct
from sceneloc.reconstruct.multiview import PlaneSweepConfig, choose_neighbours, plane_sweep_depth

MAPS = Path(__file__).parent / "data" / "maps_5b85055"


@pytest.fixture(scope="module")
def room(tmp_path_factory):
    """The 20-frame tiny room single_v1.map (tests/data/maps_5b85055) was made from."""
    from sceneloc.data.synthetic import PRESETS, render_scene_to_folder

    root = tmp_path_factory.mktemp("reconstruct") / "room"
    render_scene_to_folder(replace(PRESETS["tiny-room"], n_map=20, n_query=2), root, progress=False)
    return root


def _scores(mesh, root: Path, frames) -> dict:
    return evaluate_mesh(mesh, read_mesh(root / "mesh.ply"), CloudEvalConfig(n_mesh_samples=50_000), frames, 50_000)


def test_fusing_exact_depth_reproduces_the_seen_part_of_the_mesh(room):
    scene = read_scene(room, split="train")
    with torch_threads(1):
        mesh, stats = reconstruct(scene, ReconstructionConfig(depth="sensor"), show_progress=False)
    assert stats["depth_sources"] == {"sensor": 20} and stats["passes_m"] == [0.08, 0.02]
    scores = _scores(mesh, room, scene.frames)
    # Measured: precision 1.000, recall 0.989, F-score 0.994 (2 cm voxels, 5 cm threshold); whole mesh: recall 0.35.
    assert scores["precision"] > 0.99 and scores["fscore"] > 0.95
    assert scores["accuracy_median_m"] < 0.01
    # Against the whole mesh, what the 20 frames never saw counts as missing: the visibility cut is what makes
    # recall measure the reconstruction rather than the camera path.
    whole = evaluate_mesh(mesh, read_mesh(room / "mesh.ply"), CloudEvalConfig(n_mesh_samples=50_000), None, 50_000)
    assert whole["recall"] < scores["recall"] - 0.3 and scores["truth_visible_share"] < 0.5


def test_visibility_keeps_only_what_a_frame_sees(room):
    scene = read_scene(room, split="train")
    truth = read_mesh(room / "mesh.ply")
    frame = scene.frames[0]
    centre, axis = frame.cam_from_world.center, frame.cam_from_world.rotation[2]
    depth = frame.load_depth()
    wall = float(depth[depth.shape[0] // 2, depth.shape[1] // 2])  # the surface at the image centre
    # On that surface (seen), behind the camera, and 50 m further along the optical axis (behind the surface).
    points = np.array([centre + wall * axis, centre - 1.0 * axis, centre + (wall + 50.0) * axis])
    assert visible_samples(truth, points, [frame]).tolist() == [True, False, False]


def test_map_depth_fusion_beats_an_untrained_maps(room, tmp_path):
    """RGB-only: the depth of the (old, 1,500-step) map of these frames against the same map with its head
    re-initialised, both coarse to fine."""
    import torch

    scene = read_scene(room, split="train")
    trained = SceneMap.load(MAPS / "single_v1.map")
    untrained = SceneMap.load(MAPS / "single_v1.map")
    torch.manual_seed(0)
    for module in untrained.head.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
    config = ReconstructionConfig(depth="map")
    with torch_threads(1):
        ours = _scores(reconstruct(scene, config, trained, show_progress=False)[0], room, scene.frames)
        base = _scores(reconstruct(scene, config, untrained, show_progress=False)[0], room, scene.frames)
    # Measured: F-score 0.80 (precision 0.78, recall 0.83, median accuracy 2 cm) against 0.00 (0.84 m).
    assert ours["fscore"] > base["fscore"] + 0.4
    assert ours["accuracy_median_m"] < 0.3 * base["accuracy_median_m"]


@pytest.fixture(scope="module")
def path_room(tmp_path_factory):
    """The tiny-room preset's 60 mapping frames: a hand-held path, neighbours a few centimetres apart."""
    from sceneloc.data.synthetic import PRESETS, render_scene_to_folder

    root = tmp_path_factory.mktemp("sweep") / "room"
    render_scene_to_folder(PRESETS["tiny-room"], root, progress=False)
    return read_scene(root, split="train")


def test_plane_sweep_depth_against_the_rendered_depth(path_room):
    frames = path_room.frames
    config = PlaneSweepConfig(image_height=120)
    chosen = choose_neighbours(frames, config)
    centres = np.array([f.cam_from_world.center for f in frames])
    ours, far, coverage = [], [], []
    with torch_threads(1):
        for i in range(0, len(frames), 7):
            truth = frames[i].load_depth()
            depth = plane_sweep_depth(frames[i], [frames[j] for j in chosen[i]], config)
            known = depth > 0
            coverage.append(known.mean())
            ours.append(np.abs(depth[known] - truth[known]))
            # Baseline: the four frames farthest away as "neighbours" (no shared view: chance matches only).
            farthest = np.argsort(-np.linalg.norm(centres - centres[i], axis=1))[:4]
            depth = plane_sweep_depth(frames[i], [frames[j] for j in farthest], config)
            far.append(np.abs(depth[depth > 0] - truth[depth > 0]))
    ours, far = np.concatenate(ours), np.concatenate(far)
    # Measured: 70 % of the pixels get a depth (21-90 % per frame), median error 1.1 cm, 88 % within 5 cm; the
    # farthest frames as neighbours: no pixel passes.
    assert np.mean(coverage) > 0.4 and np.median(ours) < 0.03 and np.mean(ours < 0.05) > 0.75
    assert len(far) < 0.05 * len(ours) or np.median(far) > 10 * np.median(ours)


def test_a_frame_without_neighbours_gets_no_depth(path_room):
    frame = path_room.frames[0]
    assert not plane_sweep_depth(frame, [], PlaneSweepConfig()).any()
    assert choose_neighbours([frame], PlaneSweepConfig()) == [[]]


def test_reconstruct_and_evaluate_through_the_command_line(room, tmp_path):
    mesh_path = tmp_path / "room.ply"
    with torch_threads(1):
        code, out = run_cli("reconstruct", room, "-o", mesh_path, "--voxel", "0.04")
        assert code == 0, out
        code, out = run_cli("evaluate-mesh", mesh_path, "--mesh", room / "mesh.ply", "--visible-from", room, "-o",
                            tmp_path / "ev", "--samples", "30000")
    assert code == 0, out
    result = json.loads((tmp_path / "ev.json").read_text())
    assert {"accuracy_mean_m", "completeness_mean_m", "precision", "recall", "fscore"} <= set(result)
    assert result["fscore"] > 0.9  # 4 cm voxels on exact depth
    assert (tmp_path / "ev.png").stat().st_size > 10_000 and (tmp_path / "ev.md").is_file()
    assert (tmp_path / "ev_views.png").stat().st_size > 10_000
    colours = np.asarray(__import__("open3d").io.read_triangle_mesh(str(mesh_path)).vertex_colors)
    assert len(colours) > 1000 and colours.std() > 0.05  # coloured from the images, not one grey


def test_bad_inputs_fail_in_one_line(room, tmp_path):
    for args, message in [(["-o", tmp_path / "x.obj"], "give a .ply name"),
                          (["-o", tmp_path / "x.ply", "--depth", "lidar"], "unknown depth source"),
                          (["-o", tmp_path / "x.ply", "--depth", "map"], "needs a scene-coordinate map"),
                          (["-o", tmp_path / "x.ply", "--voxel", "0"], "voxel_m must be > 0")]:
        code, out = run_cli("reconstruct", room, *args)
        assert code == 2 and message in out, out
        assert not (tmp_path / "x.ply").exists()
    code, out = run_cli("reconstruct", MAPS / "frames", "-o", tmp_path / "x.ply", "--depth", "sensor")
    assert code == 2 and "has no depth" in out, out  # frames without depth
