"""The structure-based peer `colmap-sift`: SIFT + triangulation from the known poses + 2D-3D matching + PnP, built
with pycolmap the way hloc builds its SIFT baseline. It is what a user would reach for instead of sceneloc.

Mapping (`build_sift_map`), all on the CPU:
  1. SIFT on every mapping image with pycolmap's FeatureExtractor at COLMAP's defaults (up to 8192 features,
     first octave -1, i.e. the image is upsampled once, L1-root normalisation, uint8 descriptors).
  2. Image pairs from the known poses, as hloc's pairs_from_poses does: each image is paired with its
     `num_neighbors` nearest mapping images by camera centre, among those whose optical axes are within
     `max_pair_angle_deg` of its own. This is tractable (~5 pairs per image after deduplication on a path),
     unlike exhaustive matching.
  3. COLMAP's SIFT matcher on those pairs (pycolmap.match_image_pairs: ratio 0.8, distance 0.7, cross check),
     then geometric verification against the known poses (pycolmap.guided_geometric_verification) instead of
     estimating E or F from the matches.
  4. Triangulation with the poses held fixed (pycolmap.triangulate_points: COLMAP's triangulator, track merging
     and completion, point-only bundle adjustment and filtering; min. triangulation angle 1.5 deg, 4 px).
  5. The map: every 3D point with one descriptor, the renormalised mean of the L1-root SIFT descriptors of its
     track, quantised to uint8 as COLMAP stores SIFT (x 512, clipped at 255). One safetensors file: float32
     xyz + uint8 descriptors + JSON metadata, 140 bytes per point.
Localization (`localize_image`): SIFT on the query (same settings), exact 2D-3D nearest-neighbour search of
every query descriptor over every map descriptor (numpy matrix products in chunks), kept with COLMAP's matching
rule (angular distance of the nearest below 0.7 and below 0.8 x that of the second nearest), then
pycolmap.estimate_and_refine_absolute_pose (LO-RANSAC P3P and non-linear refinement) with COLMAP/hloc's 12 px
inlier threshold, expressed for a 480-pixel-high image and scaled with the query's height. Fewer than
`min_inliers` inliers counts as a failure.

Pixel convention: COLMAP (and its SIFT keypoints) put the centre of the top-left pixel at (0.5, 0.5), sceneloc
uses OpenCV's (0, 0): principal points get +0.5 when cameras cross into pycolmap, keypoints are used as pycolmap
returns them, and the resulting poses need no change.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path

import cv2
import numpy as np
import pycolmap
from safetensors.numpy import load_file, save_file

from sceneloc import __version__
from sceneloc.data import Scene
from sceneloc.errors import InputError
from sceneloc.geometry import Camera, Rigid3
from sceneloc.localize import PoseEstimate
from sceneloc.map_files import load_map_file, save_map_file
from sceneloc.progress import make_progress

FORMAT = "sceneloc-colmap-sift"
FORMAT_VERSION = 1
REFERENCE_HEIGHT = 480
"""Image height at which ColmapSiftConfig.pnp_max_error_px is expressed."""
MATCH_CHUNK = 1024
"""Query descriptors per matrix product in 2D-3D matching: bounds the similarity block to 1024 x n_points."""


@dataclass
class ColmapSiftConfig:
    """Settings of the colmap-sift peer (defaults: COLMAP's, or hloc's where COLMAP has none)."""

    max_num_features: int = 8192
    """SIFT features kept per image (mapping and query)."""
    first_octave: int = -1
    """SIFT's first octave; -1 upsamples the image once, which small images need."""
    num_neighbors: int = 10
    """Mapping images each mapping image is matched with (nearest camera centres)."""
    max_pair_angle_deg: float = 60.0
    """Largest angle between the optical axes of a matched pair."""
    match_max_ratio: float = 0.8
    """Lowe's ratio: nearest / second-nearest angular descriptor distance, for pairs and for 2D-3D matches."""
    match_max_distance: float = 0.7
    """Largest angular descriptor distance (radians) of a match."""
    min_triangulation_angle_deg: float = 1.5
    """Smallest triangulation angle of a 3D point."""
    pnp_max_error_px: float = 12.0
    """RANSAC inlier threshold (reprojection error) for a 480-pixel-high query; scaled with the image height."""
    min_inliers: int = 12
    """A query pose needs at least this many RANSAC inliers, else the image counts as not localised."""
    seed: int = 0
    """Seed of COLMAP's RANSAC and triangulation."""


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
        return _unit(self.descriptors)

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


def _unit(descriptors: np.ndarray) -> np.ndarray:
    d = descriptors.astype(np.float32)
    return d / np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-12)


def _quiet_pycolmap() -> None:
    # COLMAP's INFO log prints several lines per image and pair.
    pycolmap.logging.minloglevel = max(pycolmap.logging.minloglevel, 1)


def colmap_camera(camera: Camera) -> pycolmap.Camera:
    """A PINHOLE pycolmap camera with known intrinsics, in COLMAP's pixel convention (principal point +0.5)."""
    cam = pycolmap.Camera(model="PINHOLE", width=camera.width, height=camera.height,
                          params=[camera.fx, camera.fy, camera.cx + 0.5, camera.cy + 0.5])
    cam.has_prior_focal_length = True
    return cam


def make_extractor(config: ColmapSiftConfig) -> pycolmap.FeatureExtractor:
    """pycolmap's CPU SIFT extractor with the config's settings."""
    _quiet_pycolmap()
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


def pose_pairs(poses: list[Rigid3], num_neighbors: int, max_angle_deg: float) -> list[tuple[int, int]]:
    """Pairs (i < j) of frames to match: each frame with its num_neighbors nearest frames by camera centre whose
    optical axes are within max_angle_deg. poses: cam_from_world of each frame. Memory is linear in the frames."""
    centers = np.array([p.center for p in poses]).reshape(-1, 3)
    axes = np.array([p.rotation[2] for p in poses]).reshape(-1, 3)  # optical axis in world = R^T e_z
    min_cos = np.cos(np.radians(max_angle_deg))
    pairs = set()
    for i in range(len(poses)):
        dist = np.linalg.norm(centers - centers[i], axis=1)
        dist[(axes @ axes[i]) < min_cos] = np.inf
        dist[i] = np.inf
        for j in np.argsort(dist, kind="stable")[:num_neighbors]:
            if np.isfinite(dist[j]):
                pairs.add((min(i, int(j)), max(i, int(j))))
    return sorted(pairs)


def _reconstruction(scene: Scene) -> pycolmap.Reconstruction:
    """The mapping frames as a posed pycolmap reconstruction without points: image ids 1..N in frame order, one
    camera per distinct intrinsics."""
    reconstruction = pycolmap.Reconstruction()
    camera_ids: dict[Camera, int] = {}
    for image_id, frame in enumerate(scene.frames, 1):
        if frame.camera not in camera_ids:
            cam = colmap_camera(frame.camera)
            cam.camera_id = camera_ids[frame.camera] = len(camera_ids) + 1
            reconstruction.add_camera_with_trivial_rig(cam)
        pose = frame.cam_from_world
        image = pycolmap.Image(image_id=image_id, name=frame.name, camera_id=camera_ids[frame.camera])
        reconstruction.add_image_with_trivial_frame(
            image, pycolmap.Rigid3d(np.column_stack([pose.rotation, pose.translation])))
    return reconstruction


def _track_descriptors(reconstruction: pycolmap.Reconstruction, db: pycolmap.Database
                       ) -> tuple[np.ndarray, np.ndarray]:
    """(points (N, 3) float32, descriptors (N, 128) uint8): each point's renormalised mean track descriptor."""
    point_ids = sorted(reconstruction.points3D)
    rows, image_ids, keypoint_idx = [], [], []
    for row, point_id in enumerate(point_ids):
        for element in reconstruction.points3D[point_id].track.elements:
            rows.append(row)
            image_ids.append(element.image_id)
            keypoint_idx.append(element.point2D_idx)
    rows, image_ids, keypoint_idx = np.array(rows), np.array(image_ids), np.array(keypoint_idx)
    sums = np.zeros((len(point_ids), 128), np.float32)
    for image_id in np.unique(image_ids):
        sel = image_ids == image_id
        np.add.at(sums, rows[sel], _unit(db.read_descriptors(int(image_id)).data[keypoint_idx[sel]]))
    descriptors = np.clip(np.round(_unit(sums) * 512.0), 0, 255).astype(np.uint8)
    points = np.array([reconstruction.points3D[i].xyz for i in point_ids], np.float32).reshape(-1, 3)
    return points, descriptors


def build_sift_map(scene: Scene, config: ColmapSiftConfig, show_progress: bool = True) -> SiftMap:
    """Map a posed scene (steps in the module docstring). Raises InputError when the scene has no frames or
    unposed frames, or when no 3D point could be triangulated."""
    if not scene.frames:
        raise InputError(scene.root, "scene has no frames")
    scene.require_poses()
    _quiet_pycolmap()
    reconstruction = _reconstruction(scene)
    with tempfile.TemporaryDirectory(prefix="colmap-sift-") as tmp, make_progress(show_progress) as progress:
        work = Path(tmp)
        db_path = work / "database.db"
        t0 = time.perf_counter()
        extractor = make_extractor(config)
        task = progress.add_task("SIFT (mapping images)", total=len(scene.frames), info="")
        with pycolmap.Database.open(db_path) as db:
            for camera in reconstruction.cameras.values():
                db.write_camera(camera, use_camera_id=True)
            for rig in reconstruction.rigs.values():
                db.write_rig(rig, use_rig_id=True)
            for frame in reconstruction.frames.values():
                db.write_frame(frame, use_frame_id=True)
            for image in reconstruction.images.values():
                db.write_image(image, use_image_id=True)
            for image_id, frame in enumerate(scene.frames, 1):
                keypoints, descriptors = extract_sift(extractor, frame.load_rgb())
                db.write_keypoints(image_id, keypoints)
                db.write_descriptors(image_id, descriptors)
                progress.update(task, advance=1, info=f"{len(keypoints)} features")
        t1 = time.perf_counter()

        pairs = pose_pairs([f.cam_from_world for f in scene.frames], config.num_neighbors,
                           config.max_pair_angle_deg)
        names = [f.name for f in scene.frames]
        pairs_path = work / "pairs.txt"
        pairs_path.write_text("".join(f"{names[i]} {names[j]}\n" for i, j in pairs))
        task = progress.add_task(f"matching {len(pairs)} pairs", total=1, info="")
        matching = pycolmap.FeatureMatchingOptions()
        matching.skip_geometric_verification = True
        matching.sift.max_ratio = config.match_max_ratio
        matching.sift.max_distance = config.match_max_distance
        pycolmap.match_image_pairs(db_path, matching_options=matching,
                                   pairing_options=pycolmap.ImportedPairingOptions(match_list_path=str(pairs_path)),
                                   device=pycolmap.Device.cpu)
        verification = pycolmap.TwoViewGeometryOptions()
        verification.ransac.random_seed = config.seed
        pycolmap.guided_geometric_verification(reconstruction, db_path, two_view_geometry_options=verification)
        progress.update(task, advance=1)
        t2 = time.perf_counter()

        task = progress.add_task("triangulating", total=1, info="")
        options = pycolmap.IncrementalPipelineOptions()
        options.triangulation.min_angle = config.min_triangulation_angle_deg
        options.mapper.filter_min_tri_angle = config.min_triangulation_angle_deg
        options.random_seed = config.seed
        (work / "sparse").mkdir()
        (work / "no-images").mkdir()
        # triangulate_points colours the points from the image files whatever extract_colors says; we have no
        # files under the frame names (and need no colours), so its per-image warnings are silenced.
        log_level, pycolmap.logging.minloglevel = pycolmap.logging.minloglevel, 2
        try:
            triangulated = pycolmap.triangulate_points(reconstruction, db_path, work / "no-images",
                                                       work / "sparse", clear_points=True, options=options)
        finally:
            pycolmap.logging.minloglevel = log_level
        with pycolmap.Database.open(db_path) as db:
            points, descriptors = _track_descriptors(triangulated, db)
            n_verified = db.num_verified_image_pairs()
        progress.update(task, advance=1, info=f"{len(points)} points")
        t3 = time.perf_counter()
    if len(points) == 0:
        raise InputError(scene.root, "colmap-sift: no 3D point could be triangulated (too few SIFT matches "
                                     "between the mapping images)")
    timings = {"sift_s": t1 - t0, "match_s": t2 - t1, "triangulate_s": t3 - t2}
    metadata = {"format": FORMAT, "format_version": FORMAT_VERSION, "sceneloc_version": __version__,
                "config": asdict(config), "scene": {"name": scene.name, "n_frames": len(scene.frames)},
                "n_pairs": len(pairs), "n_verified_pairs": int(n_verified), "n_points": len(points),
                "mean_track_length": float(triangulated.compute_mean_track_length()), "timings": timings}
    return SiftMap(points, descriptors, metadata)


def match_to_map(query_descriptors: np.ndarray, sift_map: SiftMap, max_ratio: float, max_distance: float
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Exact 2D-3D matching. query_descriptors: (M, 128) uint8 -> (query indices (K,), map point indices (K,))
    of the matches passing COLMAP's rule: angular distance of the nearest map descriptor <= max_distance and
    < max_ratio x that of the second nearest."""
    reference = sift_map.unit_descriptors
    if len(reference) < 2 or len(query_descriptors) == 0:
        return np.zeros(0, int), np.zeros(0, int)
    query = _unit(query_descriptors)
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
