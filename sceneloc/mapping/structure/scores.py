"""Distinctiveness scores d of a structure map's points: what SceneSqueezer's QP (select.py) keeps points for.

Every kind is coverage x reliability, both in [0, 1]:
  coverage     log(track length) / log(longest track): how often a query is likely to see the point;
  reliability  how likely the point is to be matched correctly when a query sees it:
    "track"     1 (coverage alone);
    "simple"    exp(-reprojection error / 2 px) (select.simple_scores);
    "distinct"  the angular distance of its descriptor to the nearest other point's, over the map's largest: a
                point whose descriptor resembles another's fails the ratio test;
    "learned"   a small MLP over the point's features (point_features), trained on generated scenes to predict the
                fraction of verification frames that see the point in which a query's SIFT matches it correctly
                (train_scores.py). The paper learns d with a point transformer over positions and descriptors;
                this one sees no raw descriptor and no absolute position, so it cannot memorise the training
                rooms' photos or layouts, only how a point's track behaves.

The learned model (scorer.py) ships with the package (distinctiveness.safetensors, fp16, with DISTINCTIVENESS.md as
its card)."""

from __future__ import annotations

import math

import numpy as np

from sceneloc.data import Scene
from sceneloc.mapping.structure.quantise import unit_rows
from sceneloc.mapping.structure.triangulate import Triangulation

SCORE_KINDS = ("track", "simple", "distinct", "learned")
FEATURE_NAMES = ("log_track_length", "reprojection_error_px", "log_triangulation_angle_deg",
                 "descriptor_consistency", "nearest_descriptor_distance_rad", "log_scale_px", "detection_rate",
                 "log_relative_distance")
"""The columns of point_features, in order."""
NEAREST_CHUNK = 2048
"""Points per block of the nearest-descriptor search (a 2048 x P similarity block)."""


def coverage(track_length: np.ndarray) -> np.ndarray:
    """(P,) observations per point (>= 1) -> (P,) float64 log(n) / log(max(n_max, 2)) in [0, 1]: a point seen by
    more frames is more likely to be seen by a query (the log: the fifth observation adds less than the second),
    normalised by the longest track."""
    n = np.asarray(track_length, dtype=np.float64)
    return np.log(n) / math.log(max(float(n.max()), 2.0)) if n.size else np.zeros(0)


def simple_scores(track_length: np.ndarray, reprojection_error_px: np.ndarray) -> np.ndarray:
    """The "simple" scores: (P,) track lengths and (P,) mean reprojection errors (pixels) -> (P,) float64
    coverage x exp(-err / 2 px) in [0, 1]: a point that reprojects badly is a poor anchor for PnP, halved in weight
    every 2 ln 2 = 1.4 px. ValueError for arrays of other shapes, tracks below 1 or negative errors."""
    n = np.asarray(track_length, dtype=np.float64)
    err = np.asarray(reprojection_error_px, dtype=np.float64)
    if n.shape != err.shape or n.ndim != 1:
        raise ValueError(f"track_length and reprojection_error_px must be 1-D of one length, got {n.shape}, "
                         f"{err.shape}")
    if not (np.isfinite(n).all() and (n >= 1).all() and np.isfinite(err).all() and (err >= 0).all()):
        raise ValueError("track lengths must be finite and >= 1, reprojection errors finite and >= 0")
    return np.clip(coverage(n) * np.exp(-err / 2.0), 0.0, 1.0)


def nearest_descriptor_distance(descriptors: np.ndarray) -> np.ndarray:
    """(P, D) descriptors -> (P,) float32 angular distance (radians) of each to its most similar other row (pi
    for a single point). Exact, in blocks of NEAREST_CHUNK rows (P^2 D multiply-adds: about 2 s for 70,000 SIFT
    points on two cores)."""
    unit = unit_rows(descriptors)
    out = np.full(len(unit), np.pi, np.float32)
    if len(unit) < 2:
        return out
    for start in range(0, len(unit), NEAREST_CHUNK):
        sim = unit[start:start + NEAREST_CHUNK] @ unit.T
        rows = np.arange(len(sim))
        sim[rows, start + rows] = -np.inf  # not itself
        out[start:start + len(sim)] = np.arccos(np.clip(sim.max(1), -1.0, 1.0))
    return out


def _view_geometry(model: Triangulation, scene: Scene) -> tuple[np.ndarray, np.ndarray]:
    """(P,) triangulation angle spread (degrees: twice the largest angle between a ray of the track and the
    track's mean ray) and (P,) mean distance to the observing cameras (metres)."""
    centres = scene.camera_centers()
    p, f = model.observation_point, model.observation_frame
    rays = centres[f] - model.points[p].astype(np.float64)
    distance = np.linalg.norm(rays, axis=1)
    rays /= np.maximum(distance, 1e-12)[:, None]
    mean = np.zeros((len(model.points), 3))
    np.add.at(mean, p, rays)
    mean /= np.maximum(np.linalg.norm(mean, axis=1), 1e-12)[:, None]
    angle = np.degrees(np.arccos(np.clip(np.einsum("od,od->o", rays, mean[p]), -1.0, 1.0)))
    spread = np.zeros(len(model.points))
    np.maximum.at(spread, p, 2.0 * angle)
    counts = np.maximum(model.track_lengths, 1)
    return spread, np.bincount(p, weights=distance, minlength=len(model.points)) / counts


def in_view_counts(points: np.ndarray, scene: Scene) -> np.ndarray:
    """(P,) int64: the frames of `scene` in whose image each world point (P, 3) projects, in front of the camera
    (occlusion not checked)."""
    counts = np.zeros(len(points), np.int64)
    for frame in scene.frames:
        cam = frame.cam_from_world.apply(points.astype(np.float64))
        z = cam[:, 2]
        front = z > 1e-6
        uv = frame.camera.project(cam[front])
        inside = ((uv[:, 0] >= -0.5) & (uv[:, 0] < frame.camera.width - 0.5) & (uv[:, 1] >= -0.5)
                  & (uv[:, 1] < frame.camera.height - 0.5))
        counts[np.flatnonzero(front)[inside]] += 1
    return counts


def point_features(model: Triangulation, scene: Scene) -> np.ndarray:
    """(P, len(FEATURE_NAMES)) float32 features of the triangulated points of `scene`'s mapping frames, each
    invariant to the scene's scale and to where it lies: the columns of FEATURE_NAMES (detection rate: track length
    over the mapping frames whose image the point falls in; relative distance: mean distance to the observing
    cameras over the map's median)."""
    track = model.track_lengths.astype(np.float64)
    spread, distance = _view_geometry(model, scene)
    in_view = np.maximum(in_view_counts(model.points, scene), track)
    median = float(np.median(distance)) if len(distance) else 1.0
    columns = [np.log(track), model.errors_px, np.log1p(spread), model.descriptor_consistency,
               nearest_descriptor_distance(model.descriptors), np.log(np.maximum(model.scales_px, 1e-3)),
               track / np.maximum(in_view, 1), np.log(np.maximum(distance, 1e-6) / max(median, 1e-6))]
    return np.stack(columns, 1).astype(np.float32)


def distinctiveness(kind: str, model: Triangulation, scene: Scene, features: np.ndarray | None = None,
                    scorer=None) -> np.ndarray:
    """(P,) float64 scores in [0, 1] of the points of `model` (module docstring). features: point_features(model,
    scene) when already computed; scorer: the learned scorer.DistinctivenessNet (default: the shipped one)."""
    if kind not in SCORE_KINDS:
        raise ValueError(f"unknown score kind {kind!r} ({', '.join(SCORE_KINDS)})")
    cover = coverage(model.track_lengths)
    if kind == "track":
        return cover
    if kind == "simple":
        return simple_scores(model.track_lengths, model.errors_px)
    if kind == "distinct":
        nearest = (features[:, FEATURE_NAMES.index("nearest_descriptor_distance_rad")] if features is not None
                   else nearest_descriptor_distance(model.descriptors)).astype(np.float64)
        return cover * nearest / max(float(nearest.max()), 1e-12)
    from sceneloc.mapping.structure.scorer import load_scorer

    if features is None:
        features = point_features(model, scene)
    return cover * (scorer or load_scorer()).reliability(features)
