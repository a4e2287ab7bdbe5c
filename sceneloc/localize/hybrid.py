"""Localization with a HybridMap: scene coordinates guide 2D-3D matching against compressed points, and stand in
for them where the points do not hold a pose.

    image ──map's encoder (resized)──▶ cells ──head──▶ scene coordinates per cell ───────────────────┐
      └──SIFT (as it is)──▶ keypoints ──the structure map's own matching (localize/structure.py)──▶    │
        matched keypoints; each keypoint it left unmatched ──the coordinate of its cell──▶ map points   │
        within LocalizeConfig.hybrid_radius_m of it ──descriptor matching among them only (COLMAP's   │
        rule)──▶ more matched keypoints                                                                │
    two candidates for the loop's solver: the points' matches (structure threshold) and the cells ◀───┘
    (scene-coordinate threshold) ──▶ the points' pose when it has hybrid_min_inliers inliers or the cells' own
    inliers agree with it (hybrid_min_support), else the cells'

The guidance is per keypoint, not a first pose: it needs no RANSAC before matching, so both solves run in the
loop's solver stage (pipelined like any map's). It only adds matches: a keypoint the whole map's ratio test
matched keeps that match (so a poor head cannot cost the points their own pose); one it rejected as ambiguous is
matched again among the few points near where the head puts it, where the ratio test compares neighbours, not the
whole map. Textureless images, where SIFT finds little, fall back to the regression."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.spatial import cKDTree

from sceneloc.encode import EncodedImage
from sceneloc.geometry import Camera, Rigid3
from sceneloc.localize.loop import REFERENCE_HEIGHT, LocalizeConfig, Prediction, SceneMapPredictor, working_image
from sceneloc.localize.structure import StructureMapPredictor
from sceneloc.mapping.structure.features import match_candidates
from sceneloc.maps.hybrid_map import HybridMap
from sceneloc.nn.encoders.base import STRIDE
from sceneloc.solve import PnPResult

POINTS, CELLS = 0, 1
"""Candidate order: the guided matches first, the cells second."""


@dataclass
class HybridEncoded:
    """One query image for a hybrid map: the encoder's cells (working image) and the SIFT keypoints (the image as
    it is)."""

    cells: EncodedImage
    keypoints: EncodedImage

    @property
    def pixels(self) -> np.ndarray:
        """(N, 2) the cells' pixels (the loop's n_cells)."""
        return self.cells.pixels


class HybridPredictor:
    """The HybridMap's two predictors (the head's and the points') and the guidance between them. Candidates are
    the two Predictions themselves (the loop hands each back to predict)."""

    image_height = None  # SIFT runs on the image as it is; encode resizes for the head

    def __init__(self, hybrid_map: HybridMap, config: LocalizeConfig):
        self.map = hybrid_map
        self.cells = SceneMapPredictor(hybrid_map.scene_map, config.precision)
        self.points = StructureMapPredictor(hybrid_map.structure_map, config)
        self.tree = cKDTree(hybrid_map.structure_map.points)
        self.radius_m = config.hybrid_radius_m
        self.min_inliers = config.hybrid_min_inliers
        self.min_support = config.hybrid_min_support
        self.cells_threshold_px = config.solver.inlier_threshold_px

    def encode(self, images: list[np.ndarray], cameras: list[Camera], device: torch.device, precision: str
               ) -> list[HybridEncoded]:
        work = [working_image(image, camera, self.cells.image_height) for image, camera in zip(images, cameras)]
        cells = self.cells.encode([w[0] for w in work], [w[1] for w in work], device, precision)
        return [HybridEncoded(c, self.points.encode_one(image, camera))
                for c, image, camera in zip(cells, images, cameras)]

    def candidates(self, encoded: HybridEncoded) -> tuple[list[Prediction], dict]:
        """[the points' correspondences, the cells'], with n_keypoints, n_matches (the structure map's own
        matching) and n_guided_matches (keypoints it left unmatched that guided matching matched) in the details."""
        cells = self.cells.predict(encoded.cells)
        keypoints = encoded.keypoints
        retrieved, details = self.points.candidates(keypoints)
        points = self.points.predict(keypoints, retrieved[0])
        unmatched = np.flatnonzero(np.isnan(points.coords[:, 0]))
        guide = keypoint_coordinates(cells, keypoints.pixels[unmatched], keypoints.camera)
        query, point = self.guided_matches(keypoints.features[unmatched], guide)
        points.coords[unmatched[query]] = self.map.structure_map.points[point]
        details.update({"n_keypoints": len(keypoints.pixels), "n_matches": len(keypoints.pixels) - len(unmatched),
                        "n_guided_matches": len(query)})
        return [points, cells], details

    def guided_matches(self, descriptors: np.ndarray, guide: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """descriptors (M, D') of the keypoints in the map's space, guide (M, 3) world coordinates the head gives
        their cells (NaN: none) -> (keypoint indices, map point indices) of the matches among each keypoint's map
        points within radius_m of its guide."""
        valid = np.flatnonzero(np.isfinite(guide).all(1))
        near = self.tree.query_ball_point(guide[valid], self.radius_m) if len(valid) else []
        counts = np.fromiter((len(n) for n in near), np.int64, len(valid))
        pair_query = np.repeat(valid, counts)
        pair_point = np.fromiter((p for n in near for p in n), np.int64, int(counts.sum()))
        return match_candidates(descriptors, self.map.structure_map.descriptors, pair_query, pair_point,
                                self.points.max_ratio, self.points.max_distance)

    def predict(self, encoded: HybridEncoded, candidate: Prediction) -> Prediction:
        return candidate

    def choose(self, problems: list[Prediction], results: list[PnPResult]) -> int:
        """The points' pose when it has min_inliers inliers, or when min_support of the cells' inliers agree with
        it, or when the cells found none; else the cells'."""
        points, cells = results[POINTS], results[CELLS]
        if points.cam_from_world is None:
            return CELLS if cells.cam_from_world is not None else POINTS
        if cells.cam_from_world is None or points.num_inliers >= self.min_inliers:
            return POINTS
        camera = problems[CELLS].camera
        support = pose_support(points.cam_from_world, problems[CELLS],
                               self.cells_threshold_px * camera.height / REFERENCE_HEIGHT)
        return POINTS if support >= self.min_support * cells.num_inliers else CELLS

    def finish(self, details: dict, scenes: list, results: list[PnPResult], best: int) -> None:
        details["pose_from"] = "points" if best == POINTS else "cells"
        details["points_inliers"] = results[POINTS].num_inliers
        details["cells_inliers"] = results[CELLS].num_inliers


def pose_support(cam_from_world: Rigid3, cells: Prediction, threshold_px: float) -> int:
    """How many of the cells' correspondences (finite ones) reproject within threshold_px (pixels of their camera)
    under cam_from_world."""
    finite = np.isfinite(cells.coords).all(1)
    in_camera = cam_from_world.apply(cells.coords[finite])
    front = in_camera[:, 2] > 0
    error = np.linalg.norm(cells.camera.project(in_camera[front]) - cells.pixels[finite][front], axis=1)
    return int((error < threshold_px).sum())


def keypoint_coordinates(cells: Prediction, keypoints: np.ndarray, camera: Camera) -> np.ndarray:
    """The scene coordinate of the cell each keypoint falls in. cells: the head's Prediction (cell-centre pixels of
    the working image, its camera); keypoints (M, 2) pixels of `camera`, the same view at another size -> (M, 3)
    world coordinates, NaN for keypoints outside every predicted cell."""
    work = cells.camera
    u = (keypoints[:, 0] - camera.cx) / camera.fx * work.fx + work.cx
    v = (keypoints[:, 1] - camera.cy) / camera.fy * work.fy + work.cy
    rows, cols = -(-work.height // STRIDE), -(-work.width // STRIDE)
    # encode.cell_centres: cell (r, c) has its centre at (c * STRIDE + 3.5, r * STRIDE + 3.5).
    cell_row = np.round((cells.pixels[:, 1] - (STRIDE - 1) / 2) / STRIDE).astype(np.int64)
    cell_col = np.round((cells.pixels[:, 0] - (STRIDE - 1) / 2) / STRIDE).astype(np.int64)
    index = np.full((rows, cols), -1, np.int64)
    index[cell_row, cell_col] = np.arange(len(cells.pixels))
    r = np.floor(v / STRIDE).astype(np.int64)
    c = np.floor(u / STRIDE).astype(np.int64)
    inside = (r >= 0) & (r < rows) & (c >= 0) & (c < cols)
    found = np.full(len(keypoints), -1, np.int64)
    found[inside] = index[r[inside], c[inside]]
    out = np.full((len(keypoints), 3), np.nan)
    out[found >= 0] = cells.coords[found[found >= 0]]
    return out
