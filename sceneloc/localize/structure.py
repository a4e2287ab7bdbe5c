"""Localization with a StructureMap: the loop of sceneloc.localize.loop with a predictor whose encoding is SIFT on
the full-resolution query (the map's extraction settings) and whose 3D points come from 2D-3D matching:

    query SIFT ──codec.encode_query──▶ descriptors in the map's space ──visual words──▶ the clusters most like
    the query (LocalizeConfig.retrieval_clusters) ──exact matching, COLMAP's ratio rule──▶ a 3D point per matched
    keypoint (NaN for the others) ──RANSAC-PnP (the loop's solver)──▶ PoseEstimate
"""

from __future__ import annotations

import time

import numpy as np
import torch

from sceneloc.data import Scene
from sceneloc.encode import EncodedImage
from sceneloc.geometry import Camera
from sceneloc.localize.estimate import PoseEstimate
from sceneloc.localize.loop import LocalizeConfig, localize_rgb, localize_with_progress
from sceneloc.mapping.structure.build import nearest_words
from sceneloc.mapping.structure.features import SiftConfig, extract_sift, make_extractor, match_descriptors, unit_rows
from sceneloc.maps.structure_map import StructureMap
from sceneloc.solve import PnPResult


class StructureMapPredictor:
    """2D-3D matches of a query's SIFT features against a StructureMap's points (one candidate: the union of the
    retrieved clusters)."""

    image_height = None  # SIFT runs on the image as it is, as it did on the mapping images

    def __init__(self, structure_map: StructureMap, config: LocalizeConfig):
        self.map = structure_map
        settings = structure_map.metadata["config"]["triangulation"]
        self.sift = SiftConfig(settings["max_num_features"], settings["first_octave"])
        self.max_ratio, self.max_distance = settings["match_max_ratio"], settings["match_max_distance"]
        self.retrieval_clusters = config.retrieval_clusters
        self._extractor = None
        words = structure_map.cluster_words.astype(np.float32)
        # tf-idf weights of the visual words: words seen in every cluster tell clusters apart least.
        self.idf = np.log((1 + len(words)) / (1 + (words > 0).sum(0))).astype(np.float32) + 1
        self.cluster_vectors = unit_rows(words * self.idf)
        self.vocabulary = structure_map.descriptors[structure_map.vocabulary_points]

    def encode(self, images: list[np.ndarray], cameras: list[Camera], device: torch.device, precision: str
               ) -> list[EncodedImage]:
        if self._extractor is None:
            self._extractor = make_extractor(self.sift)
        out = []
        for image, camera in zip(images, cameras):
            keypoints, descriptors = extract_sift(self._extractor, image)
            # COLMAP's keypoints put the top-left pixel's centre at (0.5, 0.5); the solver uses OpenCV's (0, 0).
            pixels = keypoints[:, :2].astype(np.float64) - 0.5
            out.append(EncodedImage(self.map.codec.encode_query(unit_rows(descriptors.data)), pixels, camera))
        return out

    def candidates(self, encoded: EncodedImage) -> tuple[list, dict]:
        clusters = self.map.n_clusters
        if self.retrieval_clusters <= 0 or self.retrieval_clusters >= clusters:
            return [None], {"clusters": clusters}
        t0 = time.perf_counter()
        counts = np.bincount(nearest_words(encoded.features, self.vocabulary), minlength=len(self.vocabulary))
        scores = self.cluster_vectors @ unit_rows((counts * self.idf)[None])[0]
        chosen = np.argsort(-scores, kind="stable")[:self.retrieval_clusters]
        return [tuple(int(c) for c in chosen)], {"retrieved_clusters": [int(c) for c in chosen],
                                                 "retrieve_ms": (time.perf_counter() - t0) * 1e3}

    def predict(self, encoded: EncodedImage, scene) -> tuple[np.ndarray, None]:
        points = (np.arange(len(self.map.points)) if scene is None
                  else np.unique(np.concatenate([self.map.cluster_points[c] for c in scene])))
        query_idx, point_idx = match_descriptors(encoded.features, self.map.descriptors[points], self.max_ratio,
                                                 self.max_distance)
        coords = np.full((len(encoded.pixels), 3), np.nan)
        coords[query_idx] = self.map.points[points[point_idx]]
        return coords, None

    def finish(self, details: dict, scenes: list, results: list[PnPResult], best: int) -> None:
        pass


def localize_structure_image(structure_map: StructureMap, name: str, rgb: np.ndarray, camera: Camera,
                             config: LocalizeConfig) -> PoseEstimate:
    """One image -> PoseEstimate (details as localize.loop.localize_rgb)."""
    return localize_rgb(StructureMapPredictor(structure_map, config), name, rgb, camera, config,
                        torch.device("cpu"))


def localize_structure_scene(structure_map: StructureMap, scene: Scene, config: LocalizeConfig,
                             show_progress: bool = True) -> list[PoseEstimate]:
    """Localize every frame of `scene` through the one loop (details as localize.loop.localize_frames)."""
    return localize_with_progress(StructureMapPredictor(structure_map, config), scene, config, torch.device("cpu"),
                                  show_progress, "localizing (structure map)")
