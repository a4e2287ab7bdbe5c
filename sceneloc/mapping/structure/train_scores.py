"""Training the learned distinctiveness scores (scores.py, kind "learned") on generated scenes, with labels from
matching success in verification frames, as SceneSqueezer trains its d:

    generated scene ──mapping frames──▶ triangulation ──▶ point_features (P, F)
                    ──verification frames (the scene's query split, never mapped)──▶ query SIFT, 2D-3D matching
                      against every triangulated point, correct when the point reprojects within
                      match_threshold_px of its keypoint under the true pose; visible when it projects into the
                      image in front of the rendered surface (the frame's exact depth)
    label  y = correct / visible (per point, over the frames that see it), weight = visible
    loss   weighted binary cross-entropy of DistinctivenessNet's logits, on the shared train_one_cycle loop

The training scenes are the package's procedural presets under seeds no benchmark suite uses (the suites use each
preset's own seed, and quick-room seeds 1 and 2), so the suites measure scenes the scorer never saw; their
surfaces are collages of the same 12 scikit-image photos as the suites' rooms (other crops), which is why the
scorer reads no raw descriptor. Validation scenes (other seeds again) report how much of the verification
matches each score kind keeps at a given fraction of the points: the selection's job."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from sceneloc.data import Scene
from sceneloc.mapping.structure.features import (SiftConfig, extract_sift, make_extractor, match_descriptors,
                                                 quiet_pycolmap)
from sceneloc.mapping.structure.quantise import unit_rows
from sceneloc.mapping.structure.scorer import DistinctivenessNet
from sceneloc.mapping.structure.scores import (FEATURE_NAMES, SCORE_KINDS, distinctiveness,
                                               point_features)
from sceneloc.mapping.structure.triangulate import TriangulationConfig, triangulate_scene
from sceneloc.runtime.errors import InputError
from sceneloc.runtime.progress import make_progress

KEPT_FRACTIONS = (0.05, 0.1, 0.2)
"""Fractions of the points at which validation reports the verification matches kept."""


@dataclass
class ScoreTrainingConfig:
    """`sceneloc train-scores`: which generated scenes, and how long to train."""

    scenes: list[str] = field(default_factory=lambda: [
        "quick-room:10", "quick-room:11", "quick-room:12", "quick-room:13", "office:10", "lowtex:10"])
    """Training scenes, "preset:seed" (sceneloc.data.synthetic.PRESETS)."""
    validation: list[str] = field(default_factory=lambda: ["quick-room:20", "office:20"])
    """Held-out scenes for the kept-matches report, "preset:seed"."""
    match_threshold_px: float = 1.5
    """A verification match is correct when its point reprojects this close to the keypoint, pixels. Tighter than
    the localizer's RANSAC threshold so that the labels reward precise points, not only matchable ones (with 4 px
    the median error was 9-75 % higher on copyroom and on quick-room at a 0.03 budget, 7 % lower on quick-room at
    the default budget; docs/BENCHMARKS.md section 17)."""
    depth_tolerance: float = 0.03
    """A point is visible in a frame when its depth is within this fraction (plus 2 cm) of the rendered depth."""
    steps: int = 3000
    """Optimiser steps (full batch)."""
    lr: float = 3e-3
    """Peak learning rate of the one-cycle schedule."""
    width: int = 32
    """Hidden width of the MLP."""
    seed: int = 0
    """Seed of the weights' initialisation."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """ValueError for a setting out of range or a scene name that is not "preset:seed"."""
        from sceneloc.data.synthetic import parse_scene_name

        if not self.scenes:
            raise ValueError("scenes must not be empty")
        for name in [*self.scenes, *self.validation]:
            parse_scene_name(name)
        if not (self.steps >= 1 and self.lr > 0 and self.width >= 1 and self.match_threshold_px > 0
                and self.depth_tolerance > 0):
            raise ValueError("steps, lr, width, match_threshold_px and depth_tolerance must be positive")


@dataclass
class LabelledPoints:
    """One scene's triangulated points with their features and verification labels."""

    name: str
    features: np.ndarray
    """(P, F) float32 point_features."""
    correct: np.ndarray
    """(P,) int64 verification frames in which the point was matched correctly."""
    visible: np.ndarray
    """(P,) int64 verification frames that see the point."""
    scores: dict[str, np.ndarray]
    """The non-learned score kinds of these points, (P,) each."""


def verification_labels(points: np.ndarray, descriptors: np.ndarray, verification: Scene,
                        config: TriangulationConfig, query_upsample_below_px: int, match_threshold_px: float,
                        depth_tolerance: float, show_progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(correct (P,), visible (P,)) int64 counts over the frames of `verification` (posed, with depth) for map
    points (P, 3) with descriptors (P, 128): each frame's SIFT at the query settings (first octave -1 below
    query_upsample_below_px, as StructureMapPredictor extracts) matched against every point with COLMAP's rule.
    A point matched correctly also counts as visible (the depth test can miss a point on an edge)."""
    quiet_pycolmap()
    reference = unit_rows(descriptors)
    correct = np.zeros(len(points), np.int64)
    visible = np.zeros(len(points), np.int64)
    extractors: dict[int, object] = {}
    with make_progress(show_progress) as progress:
        task = progress.add_task("verification frames", total=len(verification.frames), info="")
        for frame in verification.frames:
            depth = frame.load_depth()
            if frame.cam_from_world is None or depth is None:
                raise InputError(frame.rgb_path, "a verification frame needs a pose and a depth image")
            octave = -1 if frame.camera.height < query_upsample_below_px else 0
            if octave not in extractors:
                extractors[octave] = make_extractor(SiftConfig(config.max_num_features, octave))
            keypoints, sift = extract_sift(extractors[octave], frame.load_rgb())
            cam = frame.cam_from_world.apply(points.astype(np.float64))
            front = np.flatnonzero(cam[:, 2] > 1e-6)
            uv = np.round(frame.camera.project(cam[front])).astype(np.int64)
            inside = ((uv[:, 0] >= 0) & (uv[:, 0] < frame.camera.width) & (uv[:, 1] >= 0)
                      & (uv[:, 1] < frame.camera.height))
            idx, uv = front[inside], uv[inside]
            surface = depth[uv[:, 1], uv[:, 0]]
            z = cam[idx, 2]
            seen = idx[(surface > 0) & (np.abs(z - surface) <= depth_tolerance * surface + 0.02)]
            hits = np.zeros(len(points), bool)
            if len(keypoints):
                q, p = match_descriptors(unit_rows(np.asarray(sift.data)), reference, config.match_max_ratio,
                                         config.match_max_distance)
                projected = frame.camera.project(cam[p]) if len(p) else np.zeros((0, 2))
                error = np.linalg.norm(projected - (keypoints[q, :2] - 0.5), axis=1)  # COLMAP -> OpenCV pixels
                ok = (cam[p, 2] > 1e-6) & (error <= match_threshold_px)
                hits[p[ok]] = True
            seen_mask = np.zeros(len(points), bool)
            seen_mask[seen] = True
            correct += hits
            visible += seen_mask | hits
            progress.update(task, advance=1, info=f"{int(hits.sum())} correct")
    return correct, visible


def labelled_scene(name: str, config: ScoreTrainingConfig, cache_dir: Path | None,
                   show_progress: bool = True) -> LabelledPoints:
    """Render (or read from the bench cache) the generated scene "preset:seed", triangulate its mapping frames
    with the structure map's defaults and label its points on its query frames."""
    from sceneloc.bench.scenes import SyntheticSceneSpec, default_cache_dir
    from sceneloc.data import read_scene
    from sceneloc.data.synthetic import parse_scene_name
    from sceneloc.mapping.structure.build import StructureMapConfig

    prepared = SyntheticSceneSpec(*parse_scene_name(name)).prepare(cache_dir or default_cache_dir(), show_progress)
    mapping, verification = read_scene(prepared.root, "train"), read_scene(prepared.root, "test")
    defaults = StructureMapConfig()
    model = triangulate_scene(mapping, defaults.triangulation, show_progress)
    features = point_features(model, mapping)
    correct, visible = verification_labels(model.points, model.descriptors, verification, defaults.triangulation,
                                           defaults.query_upsample_below_px, config.match_threshold_px,
                                           config.depth_tolerance, show_progress)
    scores = {kind: distinctiveness(kind, model, mapping, features) for kind in SCORE_KINDS if kind != "learned"}
    return LabelledPoints(name, features, correct, visible, scores)


def kept_matches(scores: np.ndarray, correct: np.ndarray, fraction: float) -> float:
    """Share of all correct verification matches that fall on the `fraction` best-scored points."""
    keep = np.argsort(-scores, kind="stable")[:max(1, int(round(fraction * len(scores))))]
    return float(correct[keep].sum() / max(int(correct.sum()), 1))


def fit_scorer(train: list[LabelledPoints], config: ScoreTrainingConfig, show_progress: bool = True
               ) -> tuple[DistinctivenessNet, dict]:
    """DistinctivenessNet trained on the visible points of `train` -> (net, {final_loss, n_points, train_s})."""
    from sceneloc.mapping.optimise import train_one_cycle

    x = np.concatenate([s.features[s.visible > 0] for s in train])
    visible = np.concatenate([s.visible[s.visible > 0] for s in train]).astype(np.float32)
    y = np.concatenate([s.correct[s.visible > 0] for s in train]).astype(np.float32) / visible
    torch.manual_seed(config.seed)
    net = DistinctivenessNet(len(FEATURE_NAMES), config.width)
    features = torch.from_numpy(x)
    net.mean.copy_(features.mean(0))
    net.std.copy_(features.std(0).clamp_min(1e-6))
    target, weight = torch.from_numpy(y), torch.from_numpy(visible / visible.mean())

    def batch_loss(_threshold: float):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(net(features), target, weight=weight)
        return loss, {}

    t0 = time.perf_counter()
    with make_progress(show_progress) as progress:
        loss, _, history = train_one_cycle([{"params": net.parameters()}], 1e-4, config.steps,
                                           (config.lr / 25, config.lr, config.lr / 1000), batch_loss, lambda t: 0.0,
                                           progress, "training the distinctiveness scorer",
                                           info=lambda loss, stats, thr: f"loss {loss:.4f}")
    return net.eval(), {"final_loss": loss, "n_points": int(len(x)), "train_s": time.perf_counter() - t0,
                        "history": history}


def validation_report(net: DistinctivenessNet, scenes: list[LabelledPoints]) -> list[dict]:
    """Per scene: its points, visible points, correct matches, and for every score kind the share of the correct
    matches kept at each of KEPT_FRACTIONS of the points (best-scored first)."""
    rows = []
    for s in scenes:
        track = s.scores["track"]  # coverage: learned = coverage x reliability (scores.distinctiveness)
        kinds = {**s.scores, "learned": track * net.reliability(s.features)}
        rows.append({"scene": s.name, "n_points": int(len(s.correct)), "n_visible": int((s.visible > 0).sum()),
                     "n_correct": int(s.correct.sum()),
                     "kept": {kind: {f"{f:g}": kept_matches(v, s.correct, f) for f in KEPT_FRACTIONS}
                              for kind, v in kinds.items()}})
    return rows


def train_scorer(config: ScoreTrainingConfig, cache_dir: Path | None = None, show_progress: bool = True
                 ) -> tuple[DistinctivenessNet, dict]:
    """Label every training and validation scene, fit the scorer -> (net, the training record with the
    validation report)."""
    t0 = time.perf_counter()
    train = [labelled_scene(name, config, cache_dir, show_progress) for name in config.scenes]
    held_out = [labelled_scene(name, config, cache_dir, show_progress) for name in config.validation]
    net, record = fit_scorer(train, config, show_progress)
    return net, {"config": asdict(config), **record, "total_s": time.perf_counter() - t0,
                 "train_scenes": [{"scene": s.name, "n_points": int(len(s.correct)),
                                   "n_visible": int((s.visible > 0).sum()), "n_correct": int(s.correct.sum())}
                                  for s in train],
                 "validation": validation_report(net, held_out)}
