"""Localization with a StructureMap: the loop of sceneloc.localize.loop with a predictor whose encoding is SIFT on
the full-resolution query (the map's extraction settings) and whose 3D points come from 2D-3D matching:

    query SIFT ──codec.encode_query──▶ descriptors in the map's space ──visual words──▶ the clusters most like
    the query (LocalizeConfig.retrieval_clusters) ──exact matching, COLMAP's ratio rule──▶ a 3D point per matched
    keypoint (NaN for the others) ──RANSAC-PnP (the loop's solver, LocalizeConfig.structure_threshold_px)──▶
    PoseEstimate

One RANSAC on the union of the retrieved clusters' matches, where the paper runs one per retrieved cluster and a
last one on the clusters that registered: the union needs one solve per image and, with the clusters' overlap,
loses little (a co-visible cluster's points are mostly seen by its neighbours too).
"""

from __future__ import annotations

import time

import numpy as np
import torch

from sceneloc.data import Scene
from sceneloc.encode import EncodedImage
from sceneloc.geometry import Camera
from sceneloc.localize.estimate import PoseEstimate
from sceneloc.localize.loop import LocalizeConfig, Prediction, localize_with_progress, most_inliers
from sceneloc.mapping.structure.features import (SiftConfig, extract_sift, make_extractor, match_descriptors,
                                                 nearest_words)
from sceneloc.mapping.structure.quantise import unit_rows
from sceneloc.maps.structure_map import StructureMap
from sceneloc.solve import PnPResult


SIFT_DIMS = 128


class StructureMapPredictor:
    """2D-3D matches of a query's SIFT features against a StructureMap's points (one candidate: the union of the
    retrieved clusters)."""

    image_height = None  # SIFT runs on the image as it is, as it did on the mapping images

    def __init__(self, structure_map: StructureMap, config: LocalizeConfig):
        self.map = structure_map
        settings = structure_map.triangulation
        self.max_features = settings.max_num_features
        self.max_ratio, self.max_distance = settings.match_max_ratio, settings.match_max_distance
        self.retrieval_clusters = config.retrieval_clusters
        self.retrieval_min_points = config.retrieval_min_points
        self.threshold_px = config.structure_threshold_px
        self._extractors: dict[int, object] = {}
        self._every_point = np.arange(len(structure_map.points))
        words = structure_map.cluster_words.astype(np.float32)
        # tf-idf weights of the visual words: words seen in every cluster tell clusters apart least.
        self.idf = np.log((1 + len(words)) / (1 + (words > 0).sum(0))).astype(np.float32) + 1
        self.cluster_vectors = unit_rows(words * self.idf)
        self.vocabulary = structure_map.descriptors[structure_map.vocabulary_points]

    def encode(self, images: list[np.ndarray], cameras: list[Camera], device: torch.device, precision: str
               ) -> list[EncodedImage]:
        return [self.encode_one(image, camera) for image, camera in zip(images, cameras)]

    def encode_one(self, image: np.ndarray, camera: Camera) -> EncodedImage:
        """(H, W, 3) uint8 image of `camera` -> its SIFT keypoints (N, 2) (OpenCV pixels) and descriptors (N, D')
        in the map's descriptor space (codec.encode_query)."""
        octave = -1 if camera.height < self.map.query_upsample_below_px else 0
        if octave not in self._extractors:
            self._extractors[octave] = make_extractor(SiftConfig(self.max_features, octave))
        keypoints, descriptors = extract_sift(self._extractors[octave], image)
        # COLMAP's keypoints put the top-left pixel's centre at (0.5, 0.5); the solver uses OpenCV's (0, 0).
        pixels = keypoints[:, :2].astype(np.float64).reshape(-1, 2) - 0.5
        data = np.asarray(descriptors.data)
        sift = unit_rows(data) if len(data) else np.zeros((0, SIFT_DIMS), np.float32)  # an image without features
        return EncodedImage(self.map.codec.encode_query(sift), pixels, camera)

    def points_prediction(self, encoded: EncodedImage, query_idx: np.ndarray, point_idx: np.ndarray) -> Prediction:
        """The correspondences of matches (query keypoint indices, map point indices): a point per matched
        keypoint, NaN for the others, at the structure threshold."""
        coords = np.full((len(encoded.pixels), 3), np.nan)
        coords[query_idx] = self.map.points[point_idx]
        return Prediction(encoded.pixels, coords, encoded.camera, None, self.threshold_px)

    def candidates(self, encoded: EncodedImage) -> tuple[list, dict]:
        """One candidate: (the map points to match against, (K,) int64: every point, or those of the retrieved
        clusters), with n_candidate_points (and retrieved_clusters, retrieve_ms) in the details."""
        clusters = self.map.n_clusters
        if (self.retrieval_clusters <= 0 or self.retrieval_clusters >= clusters
                or len(self.map.points) < self.retrieval_min_points):
            return [self._every_point], {"clusters": clusters, "n_candidate_points": len(self._every_point)}
        t0 = time.perf_counter()
        counts = np.bincount(nearest_words(encoded.features, self.vocabulary), minlength=len(self.vocabulary))
        scores = self.cluster_vectors @ unit_rows((counts * self.idf)[None])[0]
        chosen = np.argsort(-scores, kind="stable")[:self.retrieval_clusters]
        points = np.unique(np.concatenate([self.map.cluster_points(c) for c in chosen]))
        return [points], {"retrieved_clusters": [int(c) for c in chosen], "n_candidate_points": len(points),
                          "retrieve_ms": (time.perf_counter() - t0) * 1e3}

    def predict(self, encoded: EncodedImage, points: np.ndarray) -> Prediction:
        query_idx, point_idx = match_descriptors(encoded.features, self.map.descriptors[points], self.max_ratio,
                                                 self.max_distance)
        return self.points_prediction(encoded, query_idx, points[point_idx])

    def choose(self, problems: list[Prediction], results: list[PnPResult]) -> int:
        return most_inliers(results)

    def finish(self, details: dict, scenes: list, results: list[PnPResult], best: int) -> None:
        pass  # the candidates' details say all there is (the loop's pipeline may run finish after later images)


def localize_structure_scene(structure_map: StructureMap, scene: Scene, config: LocalizeConfig,
                             show_progress: bool = True) -> list[PoseEstimate]:
    """Localize every frame of `scene` through the one loop (details as localize.loop.localize_frames, plus
    n_candidate_points: the map points matched against, those of the retrieved clusters)."""
    return localize_with_progress(StructureMapPredictor(structure_map, config), scene, config, torch.device("cpu"),
                                  show_progress, "localizing (structure map)")
