"""Local features of structure-based maps: SIFT keypoints and descriptors through pycolmap (COLMAP's extractor),
and exact 2D-3D descriptor matching with COLMAP's rule. Shared by the colmap-sift peer and the SceneSqueezer map.

Pixel convention: COLMAP (and its SIFT keypoints) put the centre of the top-left pixel at (0.5, 0.5), sceneloc
uses OpenCV's (0, 0): principal points get +0.5 when cameras cross into pycolmap (colmap_camera), so keypoints
can be used as pycolmap returns them with pycolmap's solvers (the peer); sceneloc's own solver takes keypoints
minus 0.5 (localize/structure.py)."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import pycolmap

from sceneloc.geometry import Camera

MATCH_CHUNK = 1024
"""Query descriptors per matrix product in 2D-3D matching: bounds the similarity block to 1024 x n_points."""
PAIR_CHUNK = 65536
"""Candidate pairs per gathered block in guided matching (bounds its memory to a few MB)."""


@dataclass
class SiftConfig:
    """SIFT extraction (COLMAP's defaults)."""

    max_num_features: int = 8192
    """SIFT features kept per image (mapping and query)."""
    first_octave: int = -1
    """SIFT's first octave; -1 upsamples the image once, which small images need."""


def quiet_pycolmap() -> None:
    """COLMAP's INFO log prints several lines per image and pair: keep warnings and errors only."""
    pycolmap.logging.minloglevel = max(pycolmap.logging.minloglevel, 1)


def colmap_camera(camera: Camera) -> pycolmap.Camera:
    """A PINHOLE pycolmap camera with known intrinsics, in COLMAP's pixel convention (principal point +0.5)."""
    cam = pycolmap.Camera(model="PINHOLE", width=camera.width, height=camera.height,
                          params=[camera.fx, camera.fy, camera.cx + 0.5, camera.cy + 0.5])
    cam.has_prior_focal_length = True
    return cam


def make_extractor(config: SiftConfig) -> pycolmap.FeatureExtractor:
    """pycolmap's CPU SIFT extractor with the config's settings."""
    quiet_pycolmap()
    options = pycolmap.FeatureExtractionOptions()
    options.sift.max_num_features = config.max_num_features
    options.sift.first_octave = config.first_octave
    return pycolmap.FeatureExtractor.create(options, pycolmap.Device.cpu)


def extract_sift(extractor: pycolmap.FeatureExtractor, rgb: np.ndarray
                 ) -> tuple[np.ndarray, pycolmap.FeatureDescriptors]:
    """rgb: (H, W, 3) uint8 -> (keypoints (N, 4) float32 x, y, scale, orientation in COLMAP pixels, descriptors:
    N x 128 uint8 L1-root SIFT)."""
    keypoints, descriptors = extractor.extract_from_uint8_array(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY))
    return pycolmap.keypoints_to_matrix(keypoints).astype(np.float32), descriptors


def nearest_words(descriptors: np.ndarray, vocabulary: np.ndarray) -> np.ndarray:
    """(N, D) and (W, D) unit rows -> (N,) index of each descriptor's most similar visual word."""
    return np.argmax(descriptors @ vocabulary.T, axis=1) if len(descriptors) else np.zeros(0, np.int64)


def match_descriptors(query: np.ndarray, reference: np.ndarray, max_ratio: float, max_distance: float
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Exact nearest-neighbour matching of unit descriptors. query (M, D), reference (P, D) float32 unit rows ->
    (query indices (K,), reference indices (K,)) of the matches passing COLMAP's rule: angular distance (radians)
    of the nearest reference <= max_distance and < max_ratio x that of the second nearest."""
    if len(reference) < 2 or len(query) == 0:
        return np.zeros(0, int), np.zeros(0, int)
    best, first, second = [], [], []
    for start in range(0, len(query), MATCH_CHUNK):
        sim = query[start:start + MATCH_CHUNK] @ reference.T
        rows = np.arange(len(sim))
        nearest = sim.argmax(1)
        first.append(sim[rows, nearest])
        sim[rows, nearest] = -np.inf
        second.append(sim.max(1))
        best.append(nearest)
    d1 = np.arccos(np.clip(np.concatenate(first), -1.0, 1.0))
    d2 = np.arccos(np.clip(np.concatenate(second), -1.0, 1.0))
    keep = np.flatnonzero((d1 <= max_distance) & (d1 < max_ratio * d2))
    return keep, np.concatenate(best)[keep]


def match_candidates(query: np.ndarray, reference: np.ndarray, pair_query: np.ndarray, pair_reference: np.ndarray,
                     max_ratio: float, max_distance: float) -> tuple[np.ndarray, np.ndarray]:
    """Matching restricted to candidate pairs (guided matching: each query descriptor is compared only with the
    references a prior allows, e.g. points near where a scene-coordinate head puts its pixel). query (M, D) and
    reference (P, D) float32 unit rows, pair_query / pair_reference (K,) int indices of the allowed pairs ->
    (query indices, reference indices) of the matches passing COLMAP's rule among each query's candidates (a query
    with a single candidate needs only the distance bound)."""
    if len(pair_query) == 0:
        return np.zeros(0, int), np.zeros(0, int)
    sim = np.concatenate([np.einsum("kd,kd->k", query[pair_query[s:s + PAIR_CHUNK]],
                                    reference[pair_reference[s:s + PAIR_CHUNK]])
                          for s in range(0, len(pair_query), PAIR_CHUNK)])
    order = np.lexsort((-sim, pair_query))  # by query, most similar first
    q, r, sim = pair_query[order], pair_reference[order], sim[order]
    first = np.flatnonzero(np.r_[True, q[1:] != q[:-1]])
    has_second = np.r_[first[1:], len(q)] - first > 1
    second = np.where(has_second, sim[np.minimum(first + 1, len(q) - 1)], -1.0)
    d1 = np.arccos(np.clip(sim[first], -1.0, 1.0))
    d2 = np.arccos(np.clip(second, -1.0, 1.0))
    keep = first[(d1 <= max_distance) & (~has_second | (d1 < max_ratio * d2))]
    return q[keep], r[keep]
