"""StructureMap ("sceneloc-structure-map"): a compressed structure-based map (SceneSqueezer). The selected 3D points
(float32 xyz), their descriptors as 8-bit codes with the small codec that decodes them, the co-visible frame
clusters each point belongs to, and a retrieval descriptor per cluster. One safetensors file, no pickle."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

from sceneloc.mapping.structure.quantise import codec_from_tensors
from sceneloc.maps.files import load_map_file, metadata_field, save_map_file
from sceneloc.runtime.errors import InputError

FORMAT = "sceneloc-structure-map"
FORMAT_VERSION = 1
CODEC_PREFIX = "codec."
"""Tensor-name prefix of the codec's parameters."""


@dataclass
class StructureMap:
    """metadata: format, format_version, sceneloc_version, config (StructureMapConfig), scene {name, n_frames},
    codec {kind}, build statistics (points triangulated and kept, clusters, timings)."""

    points: np.ndarray
    """(P, 3) float32 world coordinates, metres."""
    codes: np.ndarray
    """(P, B) uint8 quantised descriptors."""
    codec: object
    """The quantise.py codec that decodes `codes` and projects query descriptors into the same space."""
    membership_point: np.ndarray
    """(M,) int32: point of each (point, cluster) membership; a point belongs to every cluster whose frames see it."""
    membership_cluster: np.ndarray
    """(M,) int32: cluster of each membership, 0..C-1."""
    cluster_words: np.ndarray
    """(C, W) uint8 retrieval descriptor of each cluster (histogram of visual words over its points, scaled so that
    its largest entry is 255)."""
    vocabulary_points: np.ndarray
    """(W,) int32: the map points whose decoded descriptors are the visual words (no separate vocabulary stored)."""
    metadata: dict = field(default_factory=dict)

    @property
    def n_clusters(self) -> int:
        return len(self.cluster_words)

    @cached_property
    def descriptors(self) -> np.ndarray:
        """(P, D') float32 unit decoded descriptors, for matching."""
        return self.codec.decode(self.codes)

    @cached_property
    def cluster_points(self) -> list[np.ndarray]:
        """Point indices of every cluster."""
        order = np.argsort(self.membership_cluster, kind="stable")
        bounds = np.searchsorted(self.membership_cluster[order], np.arange(self.n_clusters + 1))
        return [self.membership_point[order[a:b]] for a, b in zip(bounds[:-1], bounds[1:])]

    def save(self, path: str | Path) -> None:
        """One safetensors file, written atomically."""
        tensors = {"points": np.ascontiguousarray(self.points, np.float32),
                   "codes": np.ascontiguousarray(self.codes, np.uint8),
                   "membership_point": np.ascontiguousarray(self.membership_point, np.int32),
                   "membership_cluster": np.ascontiguousarray(self.membership_cluster, np.int32),
                   "cluster_words": np.ascontiguousarray(self.cluster_words, np.uint8),
                   "vocabulary_points": np.ascontiguousarray(self.vocabulary_points, np.int32)}
        tensors.update({CODEC_PREFIX + k: np.ascontiguousarray(v) for k, v in self.codec.tensors().items()})
        save_map_file(path, tensors, self.metadata, save_file)

    @staticmethod
    def load(path: str | Path) -> "StructureMap":
        """Raises InputError for a missing, truncated or foreign file, an unknown format version, or tensors of
        inconsistent shapes."""
        tensors, meta = load_map_file(path, "sceneloc", FORMAT, FORMAT_VERSION, load_file)
        kind = metadata_field(path, meta, "codec.kind", str)
        names = ("points", "codes", "membership_point", "membership_cluster", "cluster_words", "vocabulary_points")
        missing = [n for n in names if n not in tensors]
        if missing:
            raise InputError(path, f"structure map lacks tensors {', '.join(missing)}")
        points, codes = tensors["points"], tensors["codes"]
        member_p, member_c = tensors["membership_point"], tensors["membership_cluster"]
        words, vocabulary = tensors["cluster_words"], tensors["vocabulary_points"]
        n = len(points)
        if (points.ndim != 2 or points.shape[1] != 3 or codes.ndim != 2 or len(codes) != n
                or codes.dtype != np.uint8 or member_p.shape != member_c.shape or words.ndim != 2
                or (len(member_p) and (member_p.min() < 0 or member_p.max() >= n or member_c.min() < 0
                                       or member_c.max() >= len(words)))
                or vocabulary.ndim != 1 or len(vocabulary) != words.shape[1]
                or (len(vocabulary) and (vocabulary.min() < 0 or vocabulary.max() >= n))):
            raise InputError(path, "structure map tensors have inconsistent shapes or indices")
        codec_tensors = {k[len(CODEC_PREFIX):]: v for k, v in tensors.items() if k.startswith(CODEC_PREFIX)}
        try:
            codec = codec_from_tensors(kind, codec_tensors)
        except (KeyError, ValueError) as e:
            raise InputError(path, f"structure map codec {kind!r} cannot be read ({e})") from None
        return StructureMap(points, codes, codec, member_p, member_c, words, vocabulary, meta)
