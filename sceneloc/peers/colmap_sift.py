"""The structure-based peer `colmap-sift`: SIFT + triangulation from the known poses + 2D-3D matching + PnP, built
with pycolmap the way hloc builds its SIFT baseline. It is what a user would reach for instead of sceneloc.

Mapping (`build_sift_map`): sceneloc.mapping.structure.triangulate (SIFT, pairs from poses, COLMAP's matcher,
guided verification, triangulation with the poses fixed), then every 3D point with one descriptor, the renormalised
mean of the L1-root SIFT descriptors of its track, quantised to uint8 as COLMAP stores SIFT. One safetensors file:
float32 xyz + uint8 descriptors + JSON metadata, 140 bytes per point.
Localization (`localize_image`): SIFT on the query (same settings), exact 2D-3D nearest-neighbour search of
every query descriptor over every map descriptor (features.match_descriptors), kept with COLMAP's matching
rule (angular distance of the nearest below 0.7 and below 0.8 x that of the second nearest), then
pycolmap.estimate_and_refine_absolute_pose (LO-RANSAC P3P and non-linear refinement) with COLMAP/hloc's 12 px
inlier threshold, expressed for a 480-pixel-high image and scaled with the query's height. Fewer than
`min_inliers` inliers counts as a failure. Pixel conventions: sceneloc.mapping.structure.features.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import pycolmap
from safetensors.numpy import load_file, save_file

from sceneloc import __version__
from sceneloc.data import Scene
from sceneloc.runtime.errors import InputError
from sceneloc.geometry import Camera, Rigid3
from sceneloc.localize.estimate import PoseEstimate
from sceneloc.mapping.structure.features import colmap_camera, extract_sift, make_extractor, match_descriptors
from sceneloc.mapping.structure.quantise import unit_rows
from sceneloc.mapping.structure.triangulate import TriangulationConfig, triangulate_scene
from sceneloc.maps.files import load_map_file, save_map_file
from sceneloc.runtime.progress import make_progress

FORMAT = "sceneloc-colmap-sift"
FORMAT_VERSION = 1
REFERENCE_HEIGHT = 480
"""Image height at which ColmapSiftConfig.pnp_max_error_px is expressed."""


@dataclass
class ColmapSiftConfig(TriangulationConfig):
    """Settings of the colmap-sift peer: the triangulation's (COLMAP's defaults) and the query's."""

    pnp_max_error_px: float = 12.0
    """RANSAC inlier threshold (reprojection error) for a 480-pixel-high query; scaled with the image height."""
    min_inliers: int = 12
    """A query pose needs at least this many RANSAC inliers, else the image counts as not localised."""


@dataclass
class SiftMap:
    """A colmap-sift map. points: (N, 3) float32 world coordinates (metres); descriptors: (N, 128) uint8 mean
    L1-root SIFT descriptor of each point; metadata: format, format_version, sceneloc_version, config, scene
    {name, n_frames}, statistics of the build (pairs, tracks, timings)."""

    points: np.ndarray
    descriptors: np.ndarray
    metadata: dict = field(default_factory=dict)

    @cached_property
    def unit_descriptors(self) -> np.ndarray:
        """(N, 128) float32 L2-normalised descriptors, for matching."""
        return unit_rows(self.descriptors)

    def save(self, path: str | Path) -> None:
        """One safetensors file, written atomically."""
        tensors = {"points": np.ascontiguousarray(self.points, dtype=np.float32),
                   "descriptors": np.ascontiguousarray(self.descriptors, dtype=np.uint8)}
        save_map_file(path, tensors, self.metadata, save_file)

    @staticmethod
    def load(path: str | Path) -> "SiftMap":
        """Raises InputError for a missing, unreadable or foreign file, or an unknown format version."""
        tensors, meta = load_map_file(path, "colmap-sift", FORMAT, FORMAT_VERSION, load_file)
        points, descriptors = tensors.get("points"), tensors.get("descriptors")
        if (points is None or descriptors is None or points.ndim != 2 or points.shape[1] != 3
                or descriptors.shape != (len(points), 128) or descriptors.dtype != np.uint8):
            raise InputError(path, "colmap-sift map needs 'points' (N, 3) and 'descriptors' (N, 128) uint8")
        return SiftMap(points, descriptors, meta)


def build_sift_map(scene: Scene, config: ColmapSiftConfig, show_progress: bool = True) -> SiftMap:
    """Map a posed scene (module docstring). Raises InputError when the scene has no frames or unposed frames, or
    when no 3D point could be triangulated."""
    model = triangulate_scene(scene, config, show_progress)
    metadata = {"format": FORMAT, "format_version": FORMAT_VERSION, "sceneloc_version": __version__,
                "config": asdict(config), "scene": {"name": scene.name, "n_frames": len(scene.frames)},
                "n_pairs": model.stats["n_pairs"], "n_verified_pairs": model.stats["n_verified_pairs"],
                "n_points": len(model.points), "mean_track_length": model.stats["mean_track_length"],
                "timings": model.stats["timings"]}
    return SiftMap(model.points, model.descriptors, metadata)


def match_to_map(query_descriptors: np.ndarray, sift_map: SiftMap, max_ratio: float, max_distance: float
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Exact 2D-3D matching. query_descriptors: (M, 128) uint8 -> (query indices (K,), map point indices (K,))
    of the matches passing COLMAP's rule (features.match_descriptors)."""
    return match_descriptors(unit_rows(query_descriptors), sift_map.unit_descriptors, max_ratio, max_distance)


def localize_image(sift_map: SiftMap, name: str, rgb: np.ndarray, camera: Camera, config: ColmapSiftConfig,
                   extractor: pycolmap.FeatureExtractor | None = None) -> PoseEstimate:
    """One image -> PoseEstimate (cam_from_world None when it fails). details: time_ms, sift_ms, match_ms,
    pnp_ms, n_keypoints, n_matches. Pass an extractor from make_extractor(config) to reuse it across images."""
    extractor = extractor or make_extractor(config)
    t0 = time.perf_counter()
    keypoints, descriptors = extract_sift(extractor, rgb)
    t1 = time.perf_counter()
    query_idx, point_idx = match_to_map(descriptors.data, sift_map, config.match_max_ratio,
                                        config.match_max_distance)
    t2 = time.perf_counter()
    pose, num_inliers = None, 0
    if len(query_idx) >= 4:
        estimation = pycolmap.AbsolutePoseEstimationOptions()
        estimation.ransac.max_error = config.pnp_max_error_px * camera.height / REFERENCE_HEIGHT
        estimation.ransac.random_seed = config.seed
        result = pycolmap.estimate_and_refine_absolute_pose(
            keypoints[query_idx, :2].astype(np.float64), sift_map.points[point_idx].astype(np.float64),
            colmap_camera(camera), estimation, pycolmap.AbsolutePoseRefinementOptions())
        if result is not None and result["num_inliers"] >= config.min_inliers:
            matrix = result["cam_from_world"].matrix()
            pose, num_inliers = Rigid3(matrix[:, :3], matrix[:, 3]), int(result["num_inliers"])
    t3 = time.perf_counter()
    return PoseEstimate(name=name, cam_from_world=pose, num_inliers=num_inliers,
                        inlier_ratio=num_inliers / len(query_idx) if len(query_idx) else 0.0,
                        details={"time_ms": (t3 - t0) * 1e3, "sift_ms": (t1 - t0) * 1e3,
                                 "match_ms": (t2 - t1) * 1e3, "pnp_ms": (t3 - t2) * 1e3,
                                 "n_keypoints": len(keypoints), "n_matches": len(query_idx)})


def localize_scene(sift_map: SiftMap, scene: Scene, config: ColmapSiftConfig,
                   show_progress: bool = True) -> list[PoseEstimate]:
    """Localize every frame of `scene` (its poses, if any, are ignored)."""
    extractor = make_extractor(config)
    estimates = []
    with make_progress(show_progress) as progress:
        task = progress.add_task("localizing (colmap-sift)", total=len(scene.frames), info="")
        for frame in scene.frames:
            estimates.append(localize_image(sift_map, frame.name, frame.load_rgb(), frame.camera, config,
                                            extractor))
            ms = np.median([e.details["time_ms"] for e in estimates])
            progress.update(task, advance=1, info=f"{1000 / ms:.1f} img/s")
    return estimates
