"""Localization with a LandmarkMap (SLD*): the loop of sceneloc.localize.loop with a predictor whose encoding keeps
the map's encoder's feature map whole (the shared frozen one, or the map's own; the head is convolutional) and
whose correspondences are the detected landmarks:

    query ──encoder──▶ feature map ──heatmap head──▶ one heatmap per landmark ──peak, sub-cell refinement──▶ the
    landmarks whose peak confidence reaches LocalizeConfig.landmark_min_confidence, each a pixel and its known 3D
    position ──RANSAC-PnP and refinement (the loop's solver, LocalizeConfig.landmark_threshold_px)──▶ PoseEstimate

Too few detections (under the solver's 4) give no pose; details["n_correspondences"] says how many there were."""

from __future__ import annotations

import numpy as np
import torch

from sceneloc.encode import EncodedImage, cell_centres, feature_maps
from sceneloc.geometry import Camera
from sceneloc.localize.loop import CellPredictor, LocalizeConfig, Prediction
from sceneloc.maps.landmark_map import LandmarkMap
from sceneloc.nn.heads.landmark import heatmap_peaks
from sceneloc.runtime.device import autocast
from sceneloc.solve import PnPResult


class LandmarkPredictor(CellPredictor):
    """A LandmarkMap's heatmap head on its encoder's feature maps (LandmarkMap.backbone); one candidate."""

    def __init__(self, landmark_map: LandmarkMap, config: LocalizeConfig):
        self.map = landmark_map
        self.image_height = landmark_map.image_height
        self.precision = config.precision
        self.min_confidence = config.landmark_min_confidence
        self.threshold_px = config.landmark_threshold_px
        self._points = landmark_map.landmarks.numpy().astype(np.float64)

    @torch.no_grad()
    def encode(self, images: list[np.ndarray], cameras: list[Camera], device: torch.device, precision: str
               ) -> list[EncodedImage]:
        """Working images of one size -> EncodedImage each, its features the whole (C, h, w) feature map (not the
        (N, C) cell rows of the scene-coordinate maps), its pixels every cell's centre."""
        fmaps = feature_maps(self.map.backbone(), images, device, precision)
        pixels = cell_centres(*images[0].shape[:2]).astype(np.float64)
        return [EncodedImage(fmap, pixels, camera) for fmap, camera in zip(fmaps, cameras)]

    def candidates(self, encoded: EncodedImage) -> tuple[list, dict]:
        return [0], {}

    @torch.no_grad()
    def predict(self, encoded: EncodedImage, scene: int = 0) -> Prediction:
        features = encoded.features
        with autocast(features.device, self.precision):
            logits = self.map.head(features[None])[0]
        pixels, confidence = heatmap_peaks(logits)
        keep = (confidence >= self.min_confidence).cpu().numpy()
        return Prediction(pixels.cpu().numpy().astype(np.float64)[keep], self._points[keep], encoded.camera, None,
                          self.threshold_px)

    def finish(self, details: dict, scenes: list, results: list[PnPResult], best: int) -> None:
        pass
