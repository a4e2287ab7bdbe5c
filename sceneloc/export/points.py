"""Point-cloud export from a scene-coordinate map (keypoint paper, section 6): predict the scene coordinate of every
stride-8 cell of every mapping frame, colour it from the image, and keep the points that pass the paper's filters
(keypoint probability, agreement with the prediction on the image rotated in-plane, camera-frame depth bounds).
Also the PLY file the cloud is stored in (xyz float32 + rgb uint8, binary, written through Open3D)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import open3d as o3d
import torch

from sceneloc.runtime.atomic import atomic_output
from sceneloc.data import Scene
from sceneloc.encode import prepare_image
from sceneloc.runtime.errors import InputError
from sceneloc.geometry import Camera, Rigid3
from sceneloc.localize.loop import Prediction, most_probable, predict_scene_coordinates
from sceneloc.mapping.augment import roll_homography
from sceneloc.maps.scene_map import SceneMap
from sceneloc.runtime.progress import make_progress

REMAP_ROW = 4096
"""Pixels per row of the maps lookup_coordinates gives cv2.remap."""
STRIDE = 8
"""Encoder stride: cell centres of a prediction grid lie STRIDE pixels apart, the first at (STRIDE - 1) / 2."""


@dataclass
class PointExportConfig:
    """Which predicted scene coordinates become points. A point is kept when it passes every enabled filter."""

    use_keypoints: bool = True
    """When the map has a keypoint network, keep only the cells it rates highest (keypoint_top_fraction of each
    frame) or above keypoint_min_probability; maps without one skip this filter."""
    keypoint_top_fraction: float | None = 0.25
    """Keep each frame's cells in this top fraction by keypoint probability; None: use keypoint_min_probability.
    A rank rather than the paper's threshold because our network's probabilities rarely pass 0.9 (keypoints are
    about 15 % of its training labels): on copyroom 93 of 240,000 cells did (docs/BENCHMARKS.md section 9)."""
    keypoint_min_probability: float = 0.9
    """With keypoint_top_fraction None: keypoint probability a cell must exceed (the paper's 0.9)."""
    consistency: bool = True
    """Predict again on the working image rotated in-plane about its principal point and keep the cells whose two
    scene coordinates agree (the paper's second filter). Costs a second network pass per frame."""
    consistency_rotation_deg: float = 20.0
    """In-plane rotation of the second image (the paper's 20 degrees). Cells that leave the rotated image fail."""
    consistency_max_distance: float = 0.1
    """The two predictions of a kept cell are less than this far apart (metres; the paper's 0.1 m)."""
    min_depth: float = 0.1
    """Smallest camera-frame depth (z, metres, in the mapping frame's ground-truth camera) of a kept point."""
    max_depth: float = 10.0
    """Largest camera-frame depth (metres) of a kept point."""
    frame_stride: int = 1
    """Use every frame_stride-th mapping frame (1: all of them)."""

    def validate(self) -> None:
        """Raise ValueError naming the first field that cannot work."""
        if self.frame_stride < 1:
            raise ValueError(f"frame_stride must be at least 1, got {self.frame_stride}")
        if not self.min_depth < self.max_depth:
            raise ValueError(f"min_depth..max_depth must be a non-empty range, got {self.min_depth}..{self.max_depth}")
        if self.keypoint_top_fraction is not None and not 0.0 < self.keypoint_top_fraction <= 1.0:
            raise ValueError(f"keypoint_top_fraction must be in (0, 1], got {self.keypoint_top_fraction}")
        if not 0.0 <= self.keypoint_min_probability < 1.0:
            raise ValueError(f"keypoint_min_probability must be in [0, 1), got {self.keypoint_min_probability}")
        if self.consistency_max_distance <= 0:
            raise ValueError(f"consistency_max_distance must be positive, got {self.consistency_max_distance}")


@dataclass
class PointCloud:
    """A coloured point cloud in world coordinates (metres)."""

    xyz: np.ndarray
    """(N, 3) float32 positions."""
    rgb: np.ndarray
    """(N, 3) uint8 colours."""
    counts: dict[str, int] = field(default_factory=dict)
    """What export_points saw: frames, cells (predictions made), failed_keypoint / failed_consistency /
    failed_depth (cells failing that filter, each counted on its own, so a cell can fail several; a filter that
    did not run has no entry) and kept (= N). Empty for a cloud read from a file."""


def rotation_homography(camera: Camera, angle_deg: float) -> np.ndarray:
    """(3, 3) homography K R K^-1 taking pixels of `camera` to the image of the same camera rotated by angle_deg
    about its optical axis (the augmentation's roll_homography, same camera in and out)."""
    return roll_homography(camera, camera, np.radians(angle_deg))[1]


def lookup_coordinates(prediction: Prediction, pixels: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """Bilinear lookup of a prediction grid at arbitrary pixels of its image.

    pixels: (M, 2) (x, y) in the prediction's image; valid: (h, w) bool mask of that image's pixels that show the
    scene (cells centred elsewhere are not trusted). Returns (M, 3) float64 scene coordinates, NaN for pixels
    outside the image or next to an untrusted cell. Between the first/last cell centre and the image border the
    outermost cells are extended."""
    xs, ys = np.unique(prediction.pixels[:, 0]), np.unique(prediction.pixels[:, 1])
    grid = prediction.coords.reshape(len(ys), len(xs), 3).astype(np.float32)
    if valid is not None:
        centre_ok = valid[prediction.pixels[:, 1].astype(int), prediction.pixels[:, 0].astype(int)]
        grid[~centre_ok.reshape(len(ys), len(xs))] = np.nan
    offset = (STRIDE - 1) / 2
    gx = np.clip((pixels[:, 0] - offset) / STRIDE, 0, len(xs) - 1).astype(np.float32)
    gy = np.clip((pixels[:, 1] - offset) / STRIDE, 0, len(ys) - 1).astype(np.float32)
    # NaN neighbours poison the interpolation even at weight 0: a point next to an untrusted cell is not checked.
    # cv2.remap takes maps of fewer than 32,767 columns: the pixels go in as rows of REMAP_ROW (the last one padded).
    rows = -(-len(pixels) // REMAP_ROW)
    maps = [np.resize(g, rows * REMAP_ROW).reshape(rows, REMAP_ROW) for g in (gx, gy)]
    out = cv2.remap(grid, maps[0], maps[1], cv2.INTER_LINEAR,
                    borderMode=cv2.BORDER_REPLICATE).reshape(-1, 3)[:len(pixels)]
    w, h = prediction.camera.width, prediction.camera.height
    inside = (pixels[:, 0] >= -0.5) & (pixels[:, 0] < w - 0.5) & (pixels[:, 1] >= -0.5) & (pixels[:, 1] < h - 0.5)
    out[~inside] = np.nan
    return out.astype(np.float64)


def consistency_mask(first: np.ndarray, second: np.ndarray, max_distance: float) -> np.ndarray:
    """first, second: (N, 3) two predictions of the same points -> (N,) bool, True where they are less than
    max_distance apart (a NaN second prediction fails)."""
    return np.linalg.norm(first - second, axis=1) < max_distance


def depth_mask(points: np.ndarray, cam_from_world: Rigid3, min_depth: float, max_depth: float) -> np.ndarray:
    """points: (N, 3) world -> (N,) bool, True where the camera-frame depth z lies in [min_depth, max_depth]."""
    z = cam_from_world.apply(points)[:, 2]
    return (z >= min_depth) & (z <= max_depth)


def sample_colours(image: np.ndarray, pixels: np.ndarray) -> np.ndarray:
    """image: (h, w, 3) uint8, pixels: (N, 2) -> (N, 3) uint8, bilinear."""
    if len(pixels) == 0:  # cv2.remap rejects empty maps
        return np.zeros((0, 3), np.uint8)
    p = pixels.astype(np.float32)
    return cv2.remap(image, p[None, :, 0], p[None, :, 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)[0]


def _rotated_prediction(scene_map: SceneMap, image: np.ndarray, camera: Camera, prediction: Prediction,
                        angle_deg: float, device: torch.device) -> np.ndarray:
    """(N, 3) the scene coordinates predicted on the rotated image, looked up where each cell of `prediction`
    lands in it (NaN where it leaves the image)."""
    homography = rotation_homography(camera, angle_deg)
    size = (camera.width, camera.height)
    rotated = cv2.warpPerspective(image, homography, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    valid = cv2.warpPerspective(np.ones(image.shape[:2], np.uint8), homography, size, flags=cv2.INTER_NEAREST) > 0
    second = predict_scene_coordinates(scene_map, rotated, camera, device)
    mapped = cv2.perspectiveTransform(prediction.pixels[None], homography)[0]
    return lookup_coordinates(second, mapped, valid)


def _keypoint_mask(prob: np.ndarray, config: PointExportConfig) -> np.ndarray:
    """(N,) bool: the cells the keypoint filter keeps (PointExportConfig.keypoint_top_fraction)."""
    if config.keypoint_top_fraction is None:
        return prob > config.keypoint_min_probability
    keep = np.zeros(len(prob), bool)
    keep[most_probable(prob, config.keypoint_top_fraction, minimum=0)] = True
    return keep


def export_points(scene_map: SceneMap, scene: Scene, config: PointExportConfig, device: torch.device,
                  show_progress: bool = True) -> PointCloud:
    """The filtered, coloured point cloud of the mapping frames of `scene` (every frame_stride-th one). Frames need
    ground-truth poses (for the depth bounds): raises InputError otherwise, and ValueError for a bad config."""
    config.validate()
    scene.require_poses()
    frames = scene.frames[::config.frame_stride]
    use_keypoints = config.use_keypoints and scene_map.keypoint_net is not None
    failed = {name: 0 for name, on in (("keypoint", use_keypoints), ("consistency", config.consistency),
                                       ("depth", True)) if on}
    xyz, rgb, n_cells = [], [], 0
    with make_progress(show_progress) as progress:
        task = progress.add_task("exporting points", total=len(frames), info="")
        for frame in frames:
            image, camera = prepare_image(frame.load_rgb(), frame.camera, scene_map.image_height)
            prediction = predict_scene_coordinates(scene_map, image, camera, device)
            checks = {}
            if use_keypoints:
                checks["keypoint"] = _keypoint_mask(prediction.keypoint_prob, config)
            if config.consistency:
                second = _rotated_prediction(scene_map, image, camera, prediction, config.consistency_rotation_deg,
                                             device)
                checks["consistency"] = consistency_mask(prediction.coords, second, config.consistency_max_distance)
            checks["depth"] = depth_mask(prediction.coords, frame.cam_from_world, config.min_depth, config.max_depth)
            keep = np.logical_and.reduce(list(checks.values()))
            for name, ok in checks.items():
                failed[name] += int(np.count_nonzero(~ok))
            n_cells += len(keep)
            xyz.append(prediction.coords[keep].astype(np.float32))
            rgb.append(sample_colours(image, prediction.pixels[keep]))
            kept = sum(len(p) for p in xyz)
            progress.update(task, advance=1, info=f"{kept:,} of {n_cells:,} points kept")
    xyz_all = np.concatenate(xyz) if xyz else np.zeros((0, 3), np.float32)
    rgb_all = np.concatenate(rgb) if rgb else np.zeros((0, 3), np.uint8)
    counts = {"frames": len(frames), "cells": n_cells, **{f"failed_{k}": v for k, v in failed.items()},
              "kept": len(xyz_all)}
    return PointCloud(xyz_all, rgb_all, counts)


def structure_points(structure_map) -> PointCloud:
    """A StructureMap's points, each coloured by the first co-visible cluster it belongs to (matplotlib's tab20
    colours, in cluster order). counts: kept (points), clusters."""
    from matplotlib import colormaps

    first = np.full(len(structure_map.points), -1)
    for c in range(structure_map.n_clusters - 1, -1, -1):  # backwards: the lowest cluster index wins
        first[structure_map.cluster_points(c)] = c
    palette = (np.array(colormaps["tab20"].colors) * 255).round().astype(np.uint8)
    rgb = np.where(first[:, None] >= 0, palette[np.maximum(first, 0) % len(palette)], 128).astype(np.uint8)
    return PointCloud(structure_map.points.astype(np.float32), rgb,
                      {"kept": len(structure_map.points), "clusters": structure_map.n_clusters})


def landmark_points(landmark_map) -> PointCloud:
    """A LandmarkMap's landmarks, coloured by heatmap channel (matplotlib's tab20 colours in channel order, so a
    landmark's colour says which heatmap detects it). counts: kept (landmarks)."""
    from matplotlib import colormaps

    palette = (np.array(colormaps["tab20"].colors) * 255).round().astype(np.uint8)
    xyz = landmark_map.landmarks.numpy().astype(np.float32)
    return PointCloud(xyz, palette[np.arange(len(xyz)) % len(palette)], {"kept": len(xyz)})


def write_ply(path: str | Path, cloud: PointCloud) -> None:
    """Binary PLY (x, y, z float32; red, green, blue uint8), written atomically. Raises InputError for an empty
    cloud (PLY readers reject it) or when the file cannot be written."""
    path = Path(path)
    if len(cloud.xyz) == 0:
        raise InputError(path, "the point cloud is empty (every point was filtered out?); nothing written")
    pcd = o3d.t.geometry.PointCloud()
    pcd.point.positions = o3d.core.Tensor(np.ascontiguousarray(cloud.xyz, dtype=np.float32))
    pcd.point.colors = o3d.core.Tensor(np.ascontiguousarray(cloud.rgb, dtype=np.uint8))
    with atomic_output(path) as tmp, o3d.utility.VerbosityContextManager(o3d.utility.VerbosityLevel.Error):
        # The temporary name ends in the target's suffix, which is how Open3D picks the format.
        if not o3d.t.io.write_point_cloud(str(tmp), pcd, write_ascii=False, compressed=False):
            raise InputError(path, "Open3D could not write the point cloud here")


def ply_bytes(cloud: PointCloud) -> bytes:
    """The cloud as the bytes of the binary PLY write_ply writes (x, y, z float32; red, green, blue uint8), empty
    clouds included: what the service sends the viewer. By hand because Open3D writes files only."""
    rows = np.empty(len(cloud.xyz), dtype=[("xyz", "<f4", 3), ("rgb", "u1", 3)])
    rows["xyz"], rows["rgb"] = cloud.xyz, cloud.rgb
    header = (f"ply\nformat binary_little_endian 1.0\nelement vertex {len(rows)}\nproperty float x\n"
              "property float y\nproperty float z\nproperty uchar red\nproperty uchar green\n"
              "property uchar blue\nend_header\n")
    return header.encode("ascii") + rows.tobytes()


_PLY_TYPE_BYTES = {"char": 1, "uchar": 1, "int8": 1, "uint8": 1, "short": 2, "ushort": 2, "int16": 2, "uint16": 2,
                   "int": 4, "uint": 4, "int32": 4, "uint32": 4, "float": 4, "float32": 4, "double": 8, "float64": 8}
"""Bytes of each PLY scalar type (the PLY header's type names)."""


def check_ply_length(path: Path) -> None:
    """InputError when the PLY file holds less data than its header declares. Open3D reads a truncated file
    without raising (its parser's complaint goes to the terminal) and returns the declared number of points, the
    missing ones as zeros, which would be scored as real points. Binary files are measured against the header's
    element counts and property sizes up to the first element with a list property (a mesh's faces, whose size the
    header does not give); ASCII files by their lines."""
    with path.open("rb") as f:
        head = f.read(65536)
    end = head.find(b"end_header")
    if end < 0:
        raise InputError(path, "PLY file has no readable points (its header has no end_header line: truncated or "
                               "damaged)")
    data_start = head.index(b"\n", end) + 1 if b"\n" in head[end:] else len(head)
    lines = [line.split() for line in head[:end].decode("ascii", "replace").splitlines()]
    fmt = next((line[1] for line in lines if line[:1] == ["format"] and len(line) > 1), "")
    elements: list[list] = []  # [count, bytes per element or None when it has a list property]
    for line in lines:
        if line[:1] == ["element"] and len(line) == 3 and line[2].isdigit():
            elements.append([int(line[2]), 0])
        elif line[:1] == ["property"] and elements and elements[-1][1] is not None:
            kind = line[1] if len(line) > 2 else "list"  # "list" (or an unknown type): no fixed size
            elements[-1][1] = elements[-1][1] + _PLY_TYPE_BYTES[kind] if kind in _PLY_TYPE_BYTES else None
    declared = sum(count for count, _ in elements)
    if fmt == "ascii":
        with path.open("rb") as f:
            f.seek(data_start)
            rows = sum(1 for line in f if line.strip())
        if rows < declared:
            raise InputError(path, f"truncated: its header declares {declared:,} rows of data, the file holds {rows:,}")
    elif fmt.startswith("binary"):
        fixed = list(itertools.takewhile(lambda element: element[1] is not None, elements))
        expected = sum(count * size for count, size in fixed)
        available = path.stat().st_size - data_start
        if available < expected:
            raise InputError(path, f"truncated: its header declares {fixed[0][0]:,} points or vertices and "
                                   f"{expected:,} bytes of data before any list, the file holds {available:,} bytes")


def read_ply(path: str | Path) -> PointCloud:
    """A PLY point cloud -> PointCloud. Colours: uint8 as stored, float ones (0..1) scaled to 0..255, none: grey.
    Raises InputError for a missing, unreadable, non-PLY or point-less file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "point cloud file not found")
    try:
        with path.open("rb") as f:
            magic = f.read(3)
    except OSError as e:
        raise InputError(path, f"cannot read point cloud ({e.strerror})") from None
    # Open3D only warns on a foreign file (and its PLY parser prints to stderr): check the magic first.
    if magic != b"ply":
        raise InputError(path, "not a PLY file")
    check_ply_length(path)
    with o3d.utility.VerbosityContextManager(o3d.utility.VerbosityLevel.Error):
        pcd = o3d.t.io.read_point_cloud(str(path))
    if "positions" not in pcd.point or len(pcd.point.positions) == 0:
        raise InputError(path, "PLY file has no readable points (truncated or not a point cloud?)")
    xyz = pcd.point.positions.numpy().astype(np.float32)
    if "colors" not in pcd.point:
        rgb = np.full((len(xyz), 3), 128, np.uint8)
    else:
        colours = pcd.point.colors.numpy()
        rgb = colours.astype(np.uint8) if colours.dtype == np.uint8 else \
            np.clip(np.round(colours * 255.0), 0, 255).astype(np.uint8)
    return PointCloud(xyz, rgb)
