"""Building a StructureMap (SceneSqueezer, supplementary sections A-C) from a posed scene:

    mapping frames ──triangulate──▶ points with tracks ──co-visibility──▶ frame clusters (average linkage)
      ──per cluster: scores d, proximity kernel K, QP by SMO──▶ selected points ──codec fit──▶ 8-bit codes
      ──visual words over the decoded descriptors──▶ a retrieval descriptor per cluster ──▶ StructureMap

The map budget (StructureMapConfig.budget_mb, or keep_fraction of the triangulated points) sets how many points
are kept; each cluster gets its share in proportion to the points it sees. The scores and kernel are the simple,
hand-made ones of select.py (the paper learns both with a point transformer)."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy.cluster.vq import kmeans2
from scipy.sparse import csr_matrix

from sceneloc import __version__
from sceneloc.data import Scene
from sceneloc.mapping.structure.clustering import cluster_frames, covisibility_distance
from sceneloc.mapping.structure.features import unit_rows
from sceneloc.mapping.structure.quantise import fit_codec
from sceneloc.mapping.structure.select import proximity_kernel, select_points, simple_scores
from sceneloc.mapping.structure.triangulate import Triangulation, TriangulationConfig, triangulate_scene
from sceneloc.maps.structure_map import FORMAT, FORMAT_VERSION, StructureMap
from sceneloc.runtime.errors import InputError
from sceneloc.runtime.progress import make_progress

POINT_BYTES = 12
"""float32 xyz per point."""
MEMBERSHIP_BYTES = 8
"""Two int32 per (point, cluster) membership."""


@dataclass
class StructureMapConfig:
    """How a structure map is built (`sceneloc map --type structure`)."""

    triangulation: TriangulationConfig = field(default_factory=TriangulationConfig)
    """SIFT, pairs from poses, matching and triangulation."""
    budget_mb: float | None = None
    """Largest map file, megabytes (1e6 bytes); None: keep keep_fraction of the triangulated points."""
    keep_fraction: float = 0.15
    """Points kept when budget_mb is None, as a fraction of those triangulated."""
    codec: str = "uint8"
    """Descriptor quantisation: "uint8" (PCA + per-dimension 8-bit), "pq" (product quantisation) or "dsq" (the
    paper's auto-encoder with differentiable soft quantisation)."""
    descriptor_bytes: int = 64
    """Bytes of each point's descriptor code."""
    cluster_distance: float = 0.8
    """Co-visibility distance (1 - shared points / the smaller frame's points) at which the frame dendrogram is cut
    into clusters."""
    candidates_per_slot: int = 4
    """Per cluster, the QP chooses among this many times its budget of best-scored points (bounds the dense kernel
    to (4 budget)^2 entries)."""
    kernel_sigma_m: float = 0.1
    """Width of the proximity kernel between points, metres: selected points closer than this repel."""
    tau: float = 1.0
    """Weight of the distinctiveness scores against the proximity term in the QP, per kept point (the QP's τ is
    tau / the cluster's budget): 1 weighs a score difference of 1 like one neighbour closer than kernel_sigma_m."""
    smo_iterations: int = 20000
    """SMO iterations per cluster (the paper's max_iter)."""
    vocabulary_words: int = 256
    """Visual words of the cluster retrieval descriptors."""
    seed: int = 0
    """Seed of SMO's pair choice, the codec fit and the vocabulary."""

    def __post_init__(self) -> None:
        if self.budget_mb is not None and not self.budget_mb > 0:
            raise InputError(None, f"budget_mb must be > 0, got {self.budget_mb}")
        if not 0 < self.keep_fraction <= 1:
            raise InputError(None, f"keep_fraction must be in (0, 1], got {self.keep_fraction}")
        if not 1 <= self.descriptor_bytes <= 128:
            raise InputError(None, f"descriptor_bytes must be in 1..128, got {self.descriptor_bytes}")
        if self.codec not in ("uint8", "pq", "dsq"):
            raise InputError(None, f"unknown codec {self.codec!r} (uint8, pq or dsq)")


def point_budget(config: StructureMapConfig, model: Triangulation) -> int:
    """Points the map may keep: from budget_mb (minus the codec, vocabulary and per-point memberships, estimated
    from the triangulation's mean number of clusters per point, taken as 2) or keep_fraction."""
    n = len(model.points)
    if config.budget_mb is None:
        return max(4, int(round(config.keep_fraction * n)))
    fixed = 64 * 1024 + config.vocabulary_words * 4
    per_point = POINT_BYTES + config.descriptor_bytes + 2 * MEMBERSHIP_BYTES
    return int(np.clip((config.budget_mb * 1e6 - fixed) // per_point, 4, n))


def visibility(model: Triangulation) -> csr_matrix:
    """(n_frames, P) sparse bool: frame f sees point p."""
    ones = np.ones(len(model.observation_point), bool)
    matrix = csr_matrix((ones, (model.observation_frame, model.observation_point)),
                        shape=(model.n_frames, len(model.points)))
    matrix.sum_duplicates()
    return matrix.astype(bool)


def select_in_clusters(model: Triangulation, clusters: np.ndarray, budget: int, config: StructureMapConfig,
                       progress=None) -> np.ndarray:
    """Indices (ascending) of the points kept: per cluster, SMO over its candidate points with a share of `budget`
    proportional to the points it sees; the union over clusters."""
    seen = visibility(model)
    scores = simple_scores(model.track_lengths, model.errors_px)
    members = [np.flatnonzero(np.asarray(seen[clusters == c].sum(0)).ravel() > 0) for c in range(clusters.max() + 1)]
    total = sum(len(m) for m in members)
    task = None if progress is None else progress.add_task("selecting points (SMO)", total=len(members), info="")
    kept = []
    for c, points in enumerate(members):
        share = max(1, int(round(budget * len(points) / total)))
        order = points[np.argsort(-scores[points], kind="stable")][:share * config.candidates_per_slot]
        kernel = proximity_kernel(model.points[order].astype(np.float64), config.kernel_sigma_m)
        # α sums to 1 over about `share` points, so the quadratic term is O(1 / share^2) per pair of neighbours and
        # the linear one O(tau / share): tau / share puts a score difference of 1 on a par with one neighbour.
        chosen = select_points(scores[order], kernel, share, config.tau / share, config.smo_iterations,
                               config.seed + c)
        kept.append(order[chosen])
        if task is not None:
            progress.update(task, advance=1, info=f"{share} of {len(points)}")
    return np.unique(np.concatenate(kept)) if kept else np.zeros(0, np.int64)


def word_histograms(words: np.ndarray, groups: list[np.ndarray], n_words: int) -> np.ndarray:
    """(len(groups), n_words) float32 counts of `words` (P,) over each group of point indices."""
    out = np.zeros((len(groups), n_words), np.float32)
    for g, points in enumerate(groups):
        out[g] = np.bincount(words[points], minlength=n_words)
    return out


def nearest_words(descriptors: np.ndarray, vocabulary: np.ndarray) -> np.ndarray:
    """(N, D) and (W, D) unit rows -> (N,) index of each descriptor's most similar word."""
    return np.argmax(descriptors @ vocabulary.T, axis=1) if len(descriptors) else np.zeros(0, np.int64)


def build_structure_map(scene: Scene, config: StructureMapConfig, show_progress: bool = True) -> StructureMap:
    """Map a posed scene (module docstring). Raises InputError for a scene without frames or poses, or without
    triangulated points."""
    t0 = time.perf_counter()
    model = triangulate_scene(scene, config.triangulation, show_progress)
    t1 = time.perf_counter()
    seen = visibility(model)
    clusters = cluster_frames(covisibility_distance(seen), config.cluster_distance)
    budget = point_budget(config, model)
    with make_progress(show_progress) as progress:
        kept = select_in_clusters(model, clusters, budget, config, progress)
    t2 = time.perf_counter()
    codec = fit_codec(config.codec, unit_rows(model.descriptors[kept]), config.descriptor_bytes, config.seed)
    codes = codec.encode(unit_rows(model.descriptors[kept]))
    decoded = codec.decode(codes)
    t3 = time.perf_counter()

    # Memberships: a kept point belongs to every cluster one of whose frames sees it.
    seen_kept = seen[:, kept].tocoo()
    pairs = np.unique(np.stack([seen_kept.col, clusters[seen_kept.row]], 1), axis=0)
    n_words = min(config.vocabulary_words, len(kept))
    centres, _ = kmeans2(decoded.astype(np.float64), n_words, seed=config.seed, minit="++")
    vocabulary_points = np.unique(nearest_words(unit_rows(centres), decoded))
    groups = [pairs[pairs[:, 1] == c, 0] for c in range(clusters.max() + 1)]
    histograms = word_histograms(nearest_words(decoded, decoded[vocabulary_points]), groups, len(vocabulary_points))
    cluster_words = np.round(255 * histograms / np.maximum(histograms.max(1, keepdims=True), 1)).astype(np.uint8)
    t4 = time.perf_counter()
    metadata = {"format": FORMAT, "format_version": FORMAT_VERSION, "sceneloc_version": __version__,
                "config": asdict(config), "scene": {"name": scene.name, "n_frames": len(scene.frames)},
                "codec": {"kind": config.codec, "bytes_per_point": int(codes.shape[1])},
                "build": {"n_triangulated": len(model.points), "n_points": int(len(kept)), "budget_points": budget,
                          "n_clusters": int(clusters.max() + 1), "n_memberships": int(len(pairs)),
                          "triangulation": model.stats,
                          "timings": {"triangulate_s": t1 - t0, "select_s": t2 - t1, "codec_s": t3 - t2,
                                      "retrieval_s": t4 - t3, "total_s": t4 - t0}}}
    return StructureMap(model.points[kept], codes, codec, pairs[:, 0].astype(np.int32), pairs[:, 1].astype(np.int32),
                        cluster_words, vocabulary_points.astype(np.int32), metadata)
