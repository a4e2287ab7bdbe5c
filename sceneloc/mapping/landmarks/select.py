"""Landmark selection (SLD, Do et al.): from the triangulated points, a few hundred salient ones spread over the
scene. A point's saliency rewards what makes it detectable from new views: seen from many mapping frames (track
length), over a wide range of directions (the triangulation angle: a point seen from one spot only is not known to
be repeatable), and consistently (low reprojection error). The selection is greedy by saliency with a minimum
distance r between landmarks; r is the largest that still yields the wanted count (bisection), so the landmarks
cover the scene instead of crowding its most textured corner."""

from __future__ import annotations

import numpy as np

from sceneloc.mapping.structure.triangulate import Triangulation

FULL_ANGLE_DEG = 10.0
"""A viewing-direction spread at which the angle term of the saliency saturates."""


def viewing_spread_deg(model: Triangulation, centers: np.ndarray) -> np.ndarray:
    """(P,) float64: per point, twice the largest angle between a ray from the point to one of its observing
    cameras and the mean of those rays, degrees (about the widest angle between two of its views).
    centers: (F, 3) camera centres of the mapping frames, world metres."""
    rays = centers[model.observation_frame] - model.points[model.observation_point]
    rays /= np.maximum(np.linalg.norm(rays, axis=1, keepdims=True), 1e-12)
    mean = np.zeros((len(model.points), 3))
    np.add.at(mean, model.observation_point, rays)
    mean /= np.maximum(np.linalg.norm(mean, axis=1, keepdims=True), 1e-12)
    cos = np.clip(np.sum(rays * mean[model.observation_point], axis=1), -1.0, 1.0)
    widest = np.full(len(model.points), 1.0)
    np.minimum.at(widest, model.observation_point, cos)
    return 2 * np.degrees(np.arccos(widest))


def saliency(model: Triangulation, centers: np.ndarray) -> np.ndarray:
    """(P,) float64 saliency: track length x min(1, spread / FULL_ANGLE_DEG) / (1 + reprojection error in px)."""
    spread = np.minimum(1.0, viewing_spread_deg(model, centers) / FULL_ANGLE_DEG)
    return model.track_lengths * spread / (1.0 + model.errors_px.astype(np.float64))


def spread_greedy(points: np.ndarray, order: np.ndarray, radius: float, limit: int) -> np.ndarray:
    """Indices (in `order`'s order) of the points accepted by walking `order` and keeping each point farther than
    `radius` from every point kept so far, stopping at `limit` kept. points: (P, 3) metres."""
    kept: list[int] = []
    chosen = np.empty((limit, 3))
    for i in order:
        if kept and np.min(np.sum((chosen[:len(kept)] - points[i]) ** 2, axis=1)) <= radius * radius:
            continue
        chosen[len(kept)] = points[i]
        kept.append(int(i))
        if len(kept) == limit:
            break
    return np.array(kept, np.int64)


def select_landmarks(points: np.ndarray, scores: np.ndarray, count: int, steps: int = 12) -> tuple[np.ndarray, float]:
    """(indices of at most `count` landmarks in descending score order, the minimum distance r between them in
    metres): the largest r (bisection over `steps` halvings of the scene's diagonal) for which the greedy walk by
    score reaches `count`; all points when there are not more than `count`.
    points: (P, 3) metres; scores: (P,) saliency."""
    order = np.argsort(-scores, kind="stable")
    if len(points) <= count:
        return order, 0.0
    low, high = 0.0, float(np.linalg.norm(points.max(0) - points.min(0)))
    best = spread_greedy(points, order, low, count)
    for _ in range(steps):
        middle = 0.5 * (low + high)
        kept = spread_greedy(points, order, middle, count)
        if len(kept) == count:
            low, best = middle, kept
        else:
            high = middle
    return best, low
