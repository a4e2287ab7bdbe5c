"""Dense reconstruction of posed frames into a coloured triangle mesh (the fusion part of CDRNet, issue 17): a depth
per frame from what the user has, TSDF fusion frame by frame in Open3D's voxel block grid, marching cubes.

    frames ──depth source──▶ depth (H, W) metres ──TSDF integration (Open3D VoxelBlockGrid, block by block as
    the frames touch them)──▶ coarse volume ──(fine pass only in the blocks near the coarse surface)──▶ fine volume
    ──marching cubes──▶ mesh with a colour per vertex

Depth sources (ReconstructionConfig.depth):
  "sensor"     the frames' own depth (holes stay holes);
  "multiview"  plane-sweep depth from each frame's posed neighbours (multiview.py): RGB only, no map;
  "map"        the depth a scene-coordinate map implies (export/depth.map_depth): RGB only, from a map;
  "completed"  the sensor depth with its holes filled from the map (export/depth.complete_depth);
  "auto"       "sensor" for frames with depth; for the others "map" when a map is given, else "multiview".

Semantics (a SegmentationModel, semantics.py): on the fine pass each frame's per-pixel class probabilities are added
into a "label" attribute of the same voxel block grid, at the voxels within the truncation distance of the surface
the frame's depth shows (Open3D's integrate fuses only TSDF, weight and colour, so this one is written here, on
its voxel coordinates); a vertex of the mesh takes the class of largest probability summed over its nearest
labelled voxels.

Coarse to fine (as the paper's stages): a first pass fuses every frame at coarse_factor x the voxel size; the
fine pass then allocates only the blocks within a coarse voxel of the coarse surface, so free-space noise of
single frames (a map's wrong cells, a sensor's flying pixels) that the coarse consensus does not keep is never
fused."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import numpy as np
import open3d as o3d
import open3d.core as o3c
import torch

from sceneloc.data import Frame, Scene
from sceneloc.reconstruct.multiview import PlaneSweepConfig, choose_neighbours, plane_sweep_depth
from sceneloc.runtime.errors import InputError
from sceneloc.runtime.progress import make_progress

DEPTH_SOURCES = ("auto", "sensor", "multiview", "map", "completed")
BLOCK_RESOLUTION = 8
"""Voxels per block edge of Open3D's voxel block grid."""


@dataclass
class ReconstructionConfig:
    """How frames are fused into a mesh (`sceneloc reconstruct`)."""

    depth: str = "auto"
    """Depth source per frame (module docstring): auto | sensor | multiview | map | completed."""
    multiview: PlaneSweepConfig = field(default_factory=PlaneSweepConfig)
    """The plane sweep of the "multiview" source."""
    voxel_m: float = 0.02
    """Voxel size of the fine volume, metres."""
    truncation_voxels: float = 4.0
    """TSDF truncation distance in voxels (Open3D's trunc_voxel_multiplier)."""
    coarse_factor: int = 4
    """Voxel size of the coarse pass as a multiple of voxel_m; 1: one pass, no coarse restriction."""
    max_depth_m: float = 6.0
    """Depth beyond this is not fused (far, noisy pixels)."""
    min_weight: float = 1.0
    """Surface fused from fewer frames than this is not extracted (1: whatever one frame saw)."""
    frame_stride: int = 1
    """Fuse every frame_stride-th frame."""

    def to_dict(self) -> dict:
        return asdict(self)

    def validate(self) -> None:
        """ValueError naming the first setting that cannot work."""
        self.multiview.validate()
        if self.depth not in DEPTH_SOURCES:
            raise ValueError(f"unknown depth source {self.depth!r} (use {', '.join(DEPTH_SOURCES)})")
        for name in ("voxel_m", "truncation_voxels", "max_depth_m"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.coarse_factor < 1 or self.frame_stride < 1:
            raise ValueError("coarse_factor and frame_stride must be >= 1")
        if self.min_weight < 0:
            raise ValueError(f"min_weight must be >= 0, got {self.min_weight}")


def frame_depth(frame: Frame, rgb: np.ndarray, source: str, scene_map, device: torch.device,
                neighbours: list[Frame], config: ReconstructionConfig) -> np.ndarray:
    """(H, W) float32 depth of one frame, metres (0: none), from `source` (not "auto"); neighbours: its posed
    comparison frames for "multiview"."""
    from sceneloc.export.depth import DepthCompletionConfig, complete_depth, map_depth

    if source == "multiview":
        return plane_sweep_depth(frame, neighbours, config.multiview)
    def implied() -> np.ndarray:
        return map_depth(scene_map, rgb, frame.camera, frame.cam_from_world, device)

    if source == "map":
        return implied()
    depth = frame.load_depth()
    if depth is None:
        raise InputError(frame.depth_path or frame.rgb_path, f"frame {frame.name} has no depth for depth={source}")
    if source == "completed":
        return complete_depth(depth, rgb, implied(), DepthCompletionConfig())[0]
    return depth


LABEL_NEIGHBOURS = 8
"""Labelled voxels whose summed probabilities vote for a vertex's class: a marching-cubes vertex lies between the
eight voxels of a cell, as its colour is interpolated from them."""
BLOCK_COUNT = 40000
"""Blocks Open3D's hash map is made for (it grows beyond when it must)."""


class TsdfVolume:
    """One voxel block grid fused frame by frame (integrate), and its mesh (mesh): TSDF, weight and colour, and with
    classes > 0 a "label" attribute of that many summed class probabilities. `allowed`: the only blocks (integer
    block coordinates) frames may touch, e.g. near_blocks of a coarser volume; None: any. The live service fuses
    into one of these as frames arrive; reconstruct() into a coarse one, then a fine one restricted by it."""

    def __init__(self, voxel_m: float, truncation_voxels: float, max_depth_m: float, classes: int = 0,
                 allowed: set | None = None):
        self.voxel_m, self.truncation_voxels, self.max_depth_m = voxel_m, truncation_voxels, max_depth_m
        self.classes, self.allowed, self.frames = classes, allowed, 0
        names, channels = ["tsdf", "weight", "color"], [1, 1, 3]
        if classes:
            names.append("label")
            channels.append(classes)
        self.grid = o3d.t.geometry.VoxelBlockGrid(
            attr_names=tuple(names), attr_dtypes=(o3c.float32,) * len(names), attr_channels=tuple(channels),
            voxel_size=voxel_m, block_resolution=BLOCK_RESOLUTION, block_count=BLOCK_COUNT,
            device=o3c.Device("CPU:0"))

    def integrate(self, depth: np.ndarray, rgb: np.ndarray, camera, cam_from_world,
                  probabilities: np.ndarray | None = None) -> bool:
        """Fuse one frame: depth (H, W) metres (0: none), rgb (H, W, 3) uint8, its Camera and cam_from_world
        Rigid3; probabilities (H, W, K) for a labelled volume. False when nothing of it was fused (no depth within
        max_depth_m, or none in the allowed blocks)."""
        depth = np.where(depth <= self.max_depth_m, depth, 0).astype(np.float32)
        if not (depth > 0).any():
            return False  # Open3D refuses a frame that touches no block
        depth_image = o3d.t.geometry.Image(o3c.Tensor(np.ascontiguousarray(depth)))
        color_image = o3d.t.geometry.Image(o3c.Tensor(np.ascontiguousarray(rgb, np.float32) / 255.0))
        intrinsic = o3c.Tensor(camera.K, o3c.float64)
        extrinsic = o3c.Tensor(cam_from_world.matrix(), o3c.float64)
        blocks = self.grid.compute_unique_block_coordinates(depth_image, intrinsic, extrinsic, 1.0, self.max_depth_m,
                                                            self.truncation_voxels)
        if self.allowed is not None and len(blocks):
            blocks = blocks[o3c.Tensor(np.array([tuple(b) in self.allowed for b in blocks.numpy()]))]
        if not len(blocks):
            return False
        self.grid.integrate(blocks, depth_image, color_image, intrinsic, intrinsic, extrinsic, 1.0, self.max_depth_m,
                            self.truncation_voxels)
        if probabilities is not None:
            self._fuse_labels(blocks, depth, probabilities, camera, cam_from_world)
        self.frames += 1
        return True

    def _fuse_labels(self, blocks: o3c.Tensor, depth: np.ndarray, probabilities: np.ndarray, camera,
                     cam_from_world) -> None:
        """Add a frame's class probabilities (H, W, K) to the "label" attribute of the voxels of `blocks` (the
        blocks it was integrated into) within the truncation distance of the surface its depth (H, W) shows."""
        buffer, _ = self.grid.hashmap().find(blocks)
        coords, flat = self.grid.voxel_coordinates_and_flattened_indices(buffer.to(o3c.int32))
        points = cam_from_world.apply(coords.numpy().astype(np.float64))
        z = points[:, 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            u = np.round(camera.fx * points[:, 0] / z + camera.cx)
            v = np.round(camera.fy * points[:, 1] / z + camera.cy)
        h, w = depth.shape
        seen = (z > 0) & (u >= 0) & (u < w) & (v >= 0) & (v < h)
        ui, vi = u[seen].astype(np.int64), v[seen].astype(np.int64)
        d = depth[vi, ui]
        near = (d > 0) & (np.abs(d - z[seen]) <= self.truncation_voxels * self.voxel_m)
        labels = self.grid.attribute("label").reshape((-1, self.classes)).numpy()  # shares the grid's memory
        labels[flat.numpy()[seen][near]] += probabilities[vi[near], ui[near]]

    def mesh(self, min_weight: float = 1.0) -> o3d.t.geometry.TriangleMesh:
        """Marching cubes of the voxels fused from at least min_weight frames: positions, normals, colours (0..1)
        and, for a labelled volume, "labels" (V,) uint8; a mesh without triangles when nothing was fused."""
        # Open3D keeps voxels of weight strictly above the threshold; a voxel's weight counts its frames.
        try:
            mesh = self.grid.extract_triangle_mesh(weight_threshold=min_weight - 0.5)
        except RuntimeError:  # Open3D refuses to extract from a grid without blocks
            return o3d.t.geometry.TriangleMesh()
        if self.classes and "indices" in mesh.triangle and len(mesh.triangle.indices):
            mesh.vertex["labels"] = o3c.Tensor(self.vertex_labels(mesh.vertex.positions.numpy()))
        return mesh

    def vertex_labels(self, positions: np.ndarray) -> np.ndarray:
        """(V,) uint8 class of each vertex (V, 3): the class of largest probability summed over the
        LABEL_NEIGHBOURS nearest voxels that any frame labelled."""
        from scipy.spatial import cKDTree

        coords, flat = self.grid.voxel_coordinates_and_flattened_indices()
        sums = self.grid.attribute("label").reshape((-1, self.classes)).numpy()[flat.numpy()]
        labelled = sums.sum(1) > 0
        if not labelled.any():
            raise ValueError("no voxel was labelled")
        sums = sums[labelled]
        k = min(LABEL_NEIGHBOURS, len(sums))
        _, nearest = cKDTree(coords.numpy()[labelled]).query(positions, k=k)
        return sums[nearest.reshape(len(positions), k)].sum(1).argmax(1).astype(np.uint8)

    def near_blocks(self, fine_block_m: float, min_weight: float) -> set:
        """The blocks of side fine_block_m (integer block coordinates) within one voxel of this volume's surface:
        a finer volume's `allowed`."""
        try:
            points = self.grid.extract_point_cloud(weight_threshold=min_weight - 0.5).point.positions.numpy()
        except RuntimeError:  # no block at all
            return set()
        if len(points) == 0:
            return set()
        offsets = np.stack(np.meshgrid(*[[-1, 0, 1]] * 3, indexing="ij"), -1).reshape(-1, 3) * self.voxel_m
        near = np.floor((points[:, None, :] + offsets[None]).reshape(-1, 3) / fine_block_m).astype(np.int64)
        return set(map(tuple, np.unique(near, axis=0)))


def reconstruct(scene: Scene, config: ReconstructionConfig, scene_map=None, device: torch.device | None = None,
                show_progress: bool = True, segmentation=None) -> tuple[o3d.t.geometry.TriangleMesh, dict]:
    """Fuse the posed frames of `scene` into a mesh (module docstring). scene_map: a SceneMap for the "map" and
    "completed" sources (with "auto", frames without depth then take the map's instead of the plane sweep's);
    segmentation: a SegmentationModel to label the mesh with.
    Returns (mesh with vertex positions, normals and colours (float 0..1), and with a segmentation "labels" (V,)
    uint8 class indices (semantics.SEMANTIC_CLASSES); stats {frames, depth per source, vertices, triangles,
    timings}). InputError for a scene without posed frames, a depth source the inputs cannot give, or nothing
    fused."""
    config.validate()
    device = device or torch.device("cpu")
    scene.require_poses()
    frames = scene.frames[::config.frame_stride]
    if not frames:
        raise InputError(scene.root, "scene has no frames")
    if config.depth in ("map", "completed") and scene_map is None:
        raise InputError(scene.root, f"depth={config.depth} needs a scene-coordinate map of the scene (--map)")
    without_depth = "map" if scene_map is not None else "multiview"  # what "auto" gives frames without depth
    # Neighbours among all the scene's frames, whatever the stride: the sweep wants the nearest views.
    index = {id(f): i for i, f in enumerate(scene.frames)}
    sweeps = config.depth == "multiview" or (config.depth == "auto" and without_depth == "multiview"
                                             and any(f.depth_path is None for f in frames))
    neighbours = choose_neighbours(scene.frames, config.multiview) if sweeps else None
    t0 = time.perf_counter()
    passes = [config.voxel_m * config.coarse_factor, config.voxel_m] if config.coarse_factor > 1 else [config.voxel_m]
    sources: dict[str, int] = {}
    depths: list[np.ndarray] = []  # computed once (a map's depth costs a network pass), reused by the fine pass
    volume = None
    label_s = 0.0
    with make_progress(show_progress) as progress:
        for level, voxel in enumerate(passes):
            labelled = segmentation is not None and level + 1 == len(passes)
            volume = TsdfVolume(voxel, config.truncation_voxels, config.max_depth_m,
                                len(segmentation.classes) if labelled else 0,
                                None if volume is None else volume.near_blocks(voxel * BLOCK_RESOLUTION,
                                                                               config.min_weight))
            task = progress.add_task(f"fusing at {voxel * 100:g} cm", total=len(frames), info="")
            for i, frame in enumerate(frames):
                rgb = frame.load_rgb()
                if level == 0:
                    source = config.depth if config.depth != "auto" else (
                        "sensor" if frame.depth_path is not None else without_depth)
                    near = [] if neighbours is None else [scene.frames[j] for j in neighbours[index[id(frame)]]]
                    depths.append(frame_depth(frame, rgb, source, scene_map, device, near, config)
                                  .astype(np.float16))
                    sources[source] = sources.get(source, 0) + 1
                depth = depths[i].astype(np.float32)
                probabilities = None
                if labelled:
                    t_label = time.perf_counter()
                    fused = np.where(depth <= config.max_depth_m, depth, 0).astype(np.float32)
                    probabilities = segmentation.probabilities(rgb, fused, frame.camera, device)
                    label_s += time.perf_counter() - t_label
                volume.integrate(depth, rgb, frame.camera, frame.cam_from_world, probabilities)
                progress.advance(task)
    mesh = volume.mesh(config.min_weight)
    if "indices" not in mesh.triangle or len(mesh.triangle.indices) == 0:
        raise InputError(scene.root, "nothing was fused: no frame's depth reached the volume (check the depth "
                                     "source, max_depth_m and the poses)")
    stats = {"frames": len(frames), "depth_sources": sources, "vertices": len(mesh.vertex.positions),
             "triangles": len(mesh.triangle.indices), "passes_m": passes, "total_s": time.perf_counter() - t0}
    if segmentation is not None:
        stats["semantics_s"] = label_s
    return mesh, stats
