"""StructureMap ("sceneloc-structure-map"): a compressed structure-based map (SceneSqueezer). The selected 3D points
on a 16-bit grid over the scene's bounding box, their descriptors as 8-bit codes with the small codec that decodes
them, the co-visible frame clusters each point belongs to, and a retrieval descriptor per cluster. One safetensors
file, no pickle.

Bytes per point: 6 (xyz) + the code (descriptor_bytes) + 2 or 4 per cluster membership (uint16 point indices for
maps of up to 65,536 points); fixed: the codec, the cluster descriptors and the vocabulary."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

from sceneloc.mapping.structure.quantise import from_tensors as codec_from_tensors
from sceneloc.mapping.structure.triangulate import TriangulationConfig
from sceneloc.maps.files import config_from_metadata, load_map_file, metadata_field, save_map_file
from sceneloc.runtime.errors import InputError

FORMAT = "sceneloc-structure-map"
FORMAT_VERSION = 1
CODEC_PREFIX = "codec."
"""Tensor-name prefix of the codec's parameters."""
GRID_LEVELS = 65535
"""Steps of the 16-bit point grid per axis: 0.15 mm over a 10 m scene."""
TENSORS = ("points_grid", "points_origin", "points_step", "codes", "cluster_offsets", "cluster_members",
           "cluster_words", "vocabulary_points")


def grid_points(points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(P, 3) metres -> (grid (P, 3) uint16, origin (3,) float64, step (3,) float64): the nearest point of a grid of
    65,535 steps per axis over the points' bounding box (error at most step / 2 per axis)."""
    points = np.asarray(points, np.float64)
    origin = points.min(0)
    step = np.maximum(points.max(0) - origin, 1e-9) / GRID_LEVELS
    grid = np.clip(np.round((points - origin) / step), 0, GRID_LEVELS).astype(np.uint16)
    return grid, origin, step


def points_from_grid(grid: np.ndarray, origin: np.ndarray, step: np.ndarray) -> np.ndarray:
    """(P, 3) uint16 grid -> (P, 3) float32 metres (the points the map localizes with)."""
    return (origin + grid.astype(np.float64) * step).astype(np.float32)


@dataclass
class StructureMap:
    """metadata: format, format_version, sceneloc_version, config (StructureMapConfig), scene {name, n_frames},
    codec {kind, bytes_per_point}, build statistics (points triangulated and kept, clusters, timings)."""

    points_grid: np.ndarray
    """(P, 3) uint16 grid coordinates of the points (grid_points)."""
    points_origin: np.ndarray
    """(3,) float64 world coordinates of grid point (0, 0, 0), metres."""
    points_step: np.ndarray
    """(3,) float64 grid step per axis, metres."""
    codes: np.ndarray
    """(P, B) uint8 quantised descriptors."""
    codec: object
    """The quantise.py codec that decodes `codes` and projects query descriptors into the same space."""
    cluster_offsets: np.ndarray
    """(C + 1,) int64: cluster c's points are cluster_members[cluster_offsets[c]:cluster_offsets[c + 1]]."""
    cluster_members: np.ndarray
    """(M,) int64 point indices, cluster by cluster; a point belongs to every cluster whose frames see it."""
    cluster_words: np.ndarray
    """(C, W) uint8 retrieval descriptor of each cluster (histogram of visual words over its points, scaled so that
    its largest entry is 255)."""
    vocabulary_points: np.ndarray
    """(W,) int64: the map points whose decoded descriptors are the visual words (no separate vocabulary stored)."""
    metadata: dict = field(default_factory=dict)
    triangulation: TriangulationConfig = field(default_factory=TriangulationConfig)
    """The SIFT and matching settings the map was made with (metadata config.triangulation), which queries use."""
    query_upsample_below_px: int = 200
    """Query images less high than this get SIFT with first octave -1, others 0 (metadata
    config.query_upsample_below_px)."""

    @property
    def n_clusters(self) -> int:
        return len(self.cluster_words)

    @cached_property
    def points(self) -> np.ndarray:
        """(P, 3) float32 world coordinates, metres."""
        return points_from_grid(self.points_grid, self.points_origin, self.points_step)

    @cached_property
    def descriptors(self) -> np.ndarray:
        """(P, D') float32 unit decoded descriptors, for matching."""
        return self.codec.decode(self.codes)

    def cluster_points(self, cluster: int) -> np.ndarray:
        """Point indices of one cluster."""
        return self.cluster_members[self.cluster_offsets[cluster]:self.cluster_offsets[cluster + 1]]

    def file_contents(self) -> tuple[dict[str, np.ndarray], dict]:
        """(tensors, metadata) as the map file holds them (the codec's parameters under CODEC_PREFIX)."""
        member_type = np.uint16 if len(self.codes) <= np.iinfo(np.uint16).max + 1 else np.int32
        tensors = {"points_grid": np.ascontiguousarray(self.points_grid, np.uint16),
                   "points_origin": np.asarray(self.points_origin, np.float64),
                   "points_step": np.asarray(self.points_step, np.float64),
                   "codes": np.ascontiguousarray(self.codes, np.uint8),
                   "cluster_offsets": np.asarray(self.cluster_offsets, np.int64),
                   "cluster_members": np.ascontiguousarray(self.cluster_members, member_type),
                   "cluster_words": np.ascontiguousarray(self.cluster_words, np.uint8),
                   "vocabulary_points": np.ascontiguousarray(self.vocabulary_points, member_type)}
        tensors.update({CODEC_PREFIX + k: np.ascontiguousarray(v) for k, v in self.codec.tensors().items()})
        return tensors, self.metadata

    def save(self, path: str | Path) -> None:
        """One safetensors file, written atomically."""
        save_map_file(path, *self.file_contents(), save_file)

    @staticmethod
    def load(path: str | Path) -> "StructureMap":
        """Raises InputError for a missing, truncated or foreign file, an unknown format version, or tensors of
        inconsistent shapes."""
        tensors, meta = load_map_file(path, "sceneloc", FORMAT, FORMAT_VERSION, load_file)
        return StructureMap.from_contents(path, tensors, meta)

    @staticmethod
    def from_contents(path: str | Path, tensors: dict[str, np.ndarray], meta: dict) -> "StructureMap":
        """The map of file_contents read from the file at `path` (named in InputErrors)."""
        kind = metadata_field(path, meta, "codec.kind", str)
        triangulation = config_from_metadata(path, TriangulationConfig,
                                             metadata_field(path, meta, "config.triangulation", dict),
                                             "config.triangulation")
        missing = [n for n in TENSORS if n not in tensors]
        if missing:
            raise InputError(path, f"structure map lacks tensors {', '.join(missing)}")
        integer = ("cluster_offsets", "cluster_members", "vocabulary_points")
        if any(tensors[n].ndim != 1 or tensors[n].dtype.kind not in "iu" for n in integer):
            raise InputError(path, f"structure map tensors {', '.join(integer)} must be 1-D integer arrays")
        grid, origin, step = tensors["points_grid"], tensors["points_origin"], tensors["points_step"]
        codes, offsets, words = tensors["codes"], tensors["cluster_offsets"], tensors["cluster_words"]
        members = tensors["cluster_members"].astype(np.int64)
        vocabulary = tensors["vocabulary_points"].astype(np.int64)
        n = len(grid)
        if (grid.ndim != 2 or grid.shape[1] != 3 or grid.dtype != np.uint16 or origin.shape != (3,)
                or step.shape != (3,) or not np.isfinite(origin).all() or not (step > 0).all()
                or not np.isfinite(step).all() or codes.ndim != 2 or len(codes) != n or codes.dtype != np.uint8
                or words.ndim != 2 or offsets.shape != (len(words) + 1,) or offsets[0] != 0
                or offsets[-1] != len(members) or np.any(np.diff(offsets) < 0)
                or (len(members) and (members.min() < 0 or members.max() >= n))
                or len(vocabulary) != words.shape[1] or (len(words) and not len(vocabulary))
                or (len(vocabulary) and (vocabulary.min() < 0 or vocabulary.max() >= n))):
            raise InputError(path, "structure map tensors have inconsistent shapes or indices")
        codec_tensors = {k[len(CODEC_PREFIX):]: v for k, v in tensors.items() if k.startswith(CODEC_PREFIX)}
        try:
            codec = codec_from_tensors(kind, codec_tensors)
            if codec.bytes_per_point != codes.shape[1]:
                raise ValueError(f"codes of {codes.shape[1]} bytes for a {codec.bytes_per_point}-byte codec")
            codec.decode(codes[:1])  # PQ codes beyond the codebook, a decoder of another width
        except (KeyError, ValueError, IndexError) as e:
            raise InputError(path, f"structure map codec {kind!r} cannot be read ({e})") from None
        return StructureMap(grid, origin, step, codes, codec, offsets.astype(np.int64), members, words, vocabulary,
                            meta, triangulation, metadata_field(path, meta, "config.query_upsample_below_px", int))
