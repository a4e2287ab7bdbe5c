"""3D points from the mapping images with their known poses, as hloc builds a SIFT model from poses: SIFT on every
image, pairs from the poses, COLMAP's matcher, guided verification, triangulation with the poses held fixed. Every
point keeps its track (the frames and keypoints that see it), which the SceneSqueezer map clusters and selects on.

Steps (triangulate_scene), all on the CPU:
  1. SIFT on every mapping image (features.py, COLMAP's defaults).
  2. Image pairs from the known poses, as hloc's pairs_from_poses does: each image with its `num_neighbors`
     nearest mapping images by camera centre, among those whose optical axes are within `max_pair_angle_deg` of
     its own (~5 pairs per image after deduplication on a path, unlike exhaustive matching).
  3. COLMAP's SIFT matcher on those pairs (ratio 0.8, distance 0.7, cross check), then geometric verification
     against the known poses (pycolmap.guided_geometric_verification) instead of estimating E or F.
  4. Triangulation with the poses fixed (pycolmap.triangulate_points: COLMAP's triangulator, track merging and
     completion, point-only bundle adjustment and filtering; min. triangulation angle 1.5 deg, 4 px).
  5. Per point: the renormalised mean of its track's L1-root SIFT descriptors, quantised as COLMAP stores SIFT
     (x 512, clipped at 255), how much the track's descriptors agree, their mean SIFT scale, its reprojection
     error and its observations.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pycolmap

from sceneloc.data import Scene
from sceneloc.geometry import Camera, Rigid3
from sceneloc.mapping.structure.features import (SiftConfig, colmap_camera, extract_sift, make_extractor,
                                                 quiet_pycolmap)
from sceneloc.mapping.structure.quantise import unit_rows
from sceneloc.runtime.errors import InputError
from sceneloc.runtime.progress import make_progress


@dataclass
class TriangulationConfig(SiftConfig):
    """Pairs, matching and triangulation (COLMAP's defaults, or hloc's where COLMAP has none), on top of SIFT's."""

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
    seed: int = 0
    """Seed of COLMAP's RANSAC and triangulation."""


@dataclass
class Triangulation:
    """The triangulated points of a scene's mapping frames, with their tracks."""

    points: np.ndarray
    """(P, 3) float32 world coordinates (metres)."""
    descriptors: np.ndarray
    """(P, 128) uint8 mean L1-root SIFT descriptor of each point's track (COLMAP's scale)."""
    errors_px: np.ndarray
    """(P,) float32 mean reprojection error of each point over its track, pixels."""
    descriptor_consistency: np.ndarray
    """(P,) float32 length of the mean of the track's unit descriptors, in (0, 1]: 1 when every observation has
    the same descriptor, lower the more they change with the viewpoint."""
    scales_px: np.ndarray
    """(P,) float32 mean SIFT scale of the track's keypoints, pixels."""
    observation_point: np.ndarray
    """(O,) int64 point index of every observation (the track elements of all points, point by point)."""
    observation_frame: np.ndarray
    """(O,) int64 mapping-frame index (scene.frames order) of every observation."""
    n_frames: int
    stats: dict = field(default_factory=dict)
    """n_pairs, n_verified_pairs, mean_track_length, timings (sift_s, match_s, triangulate_s)."""

    @property
    def track_lengths(self) -> np.ndarray:
        """(P,) int64 observations per point."""
        return np.bincount(self.observation_point, minlength=len(self.points))


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


def keypoint_scales(keypoints: np.ndarray) -> np.ndarray:
    """(N,) float64 SIFT scales, pixels, of keypoints as COLMAP's database stores them: (N, 4) x, y, scale,
    orientation, or (N, 6) x, y and the affine shape a11, a12, a21, a22 (scale: the root of its determinant)."""
    if keypoints.shape[1] == 4:
        return keypoints[:, 2].astype(np.float64)
    a = keypoints[:, 2:6].astype(np.float64)
    return np.sqrt(np.abs(a[:, 0] * a[:, 3] - a[:, 1] * a[:, 2]))


def _tracks(reconstruction: pycolmap.Reconstruction, db: pycolmap.Database, n_frames: int) -> dict:
    """Points, mean track descriptors, errors and observations of a triangulated reconstruction (Triangulation's
    fields)."""
    point_ids = sorted(reconstruction.points3D)
    rows, image_ids, keypoint_idx = [], [], []
    for row, point_id in enumerate(point_ids):
        for element in reconstruction.points3D[point_id].track.elements:
            rows.append(row)
            image_ids.append(element.image_id)
            keypoint_idx.append(element.point2D_idx)
    rows = np.array(rows, np.int64)
    image_ids, keypoint_idx = np.array(image_ids, np.int64), np.array(keypoint_idx, np.int64)
    sums = np.zeros((len(point_ids), 128), np.float32)
    scale_sums = np.zeros(len(point_ids), np.float64)
    for image_id in np.unique(image_ids):
        sel = image_ids == image_id
        np.add.at(sums, rows[sel], unit_rows(db.read_descriptors(int(image_id)).data[keypoint_idx[sel]]))
        np.add.at(scale_sums, rows[sel], keypoint_scales(db.read_keypoints(int(image_id))[keypoint_idx[sel]]))
    counts = np.maximum(np.bincount(rows, minlength=len(point_ids)), 1)
    return {"points": np.array([reconstruction.points3D[i].xyz for i in point_ids], np.float32).reshape(-1, 3),
            "descriptors": np.clip(np.round(unit_rows(sums) * 512.0), 0, 255).astype(np.uint8),
            "errors_px": np.array([reconstruction.points3D[i].error for i in point_ids], np.float32),
            "descriptor_consistency": (np.linalg.norm(sums, axis=1) / counts).astype(np.float32),
            "scales_px": (scale_sums / counts).astype(np.float32),
            "observation_point": rows, "observation_frame": image_ids - 1, "n_frames": n_frames}


def triangulate_scene(scene: Scene, config: TriangulationConfig, show_progress: bool = True) -> Triangulation:
    """The scene's mapping frames -> Triangulation (steps in the module docstring). Raises InputError when the scene
    has no frames or unposed frames, or when no 3D point could be triangulated."""
    if not scene.frames:
        raise InputError(scene.root, "scene has no frames")
    scene.require_poses()
    quiet_pycolmap()
    reconstruction = _reconstruction(scene)
    with tempfile.TemporaryDirectory(prefix="sceneloc-sfm-") as tmp, make_progress(show_progress) as progress:
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
            tracks = _tracks(triangulated, db, len(scene.frames))
            n_verified = db.num_verified_image_pairs()
        progress.update(task, advance=1, info=f"{len(tracks['points'])} points")
        t3 = time.perf_counter()
    if len(tracks["points"]) == 0:
        raise InputError(scene.root, "no 3D point could be triangulated (too few SIFT matches between the mapping "
                                     "images)")
    stats = {"n_pairs": len(pairs), "n_verified_pairs": int(n_verified),
             "mean_track_length": float(triangulated.compute_mean_track_length()),
             "timings": {"sift_s": t1 - t0, "match_s": t2 - t1, "triangulate_s": t3 - t2}}
    return Triangulation(**tracks, stats=stats)
