"""Building a StructureMap (SceneSqueezer, supplementary sections A-C) from a posed scene:

    mapping frames ──triangulate──▶ points with tracks ──co-visibility──▶ frame clusters (average linkage)
      ──per cluster: scores d, proximity kernel K, QP by SMO──▶ selected points ──codec fit──▶ 8-bit codes
      ──visual words over the decoded descriptors──▶ a retrieval descriptor per cluster ──▶ StructureMap

The map budget (StructureMapConfig.budget_mb, or budget_fraction of the uncompressed map) sets how many points
are kept; each cluster gets its share in proportion to the points it sees. The scores are one of scores.py's kinds
(hand-made, or a small learned scorer), the kernel select.py's Gaussian of the 3D distance (the paper learns both
with a point transformer)."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy.cluster.vq import kmeans2
from scipy.sparse import csr_matrix

from sceneloc import __version__
from sceneloc.data import Scene
from sceneloc.mapping.structure.clustering import cluster_frames, covisibility_distance
from sceneloc.mapping.structure.features import nearest_words
from sceneloc.mapping.structure.quantise import CODEC_KINDS, fit_codec, unit_rows
from sceneloc.mapping.structure.scorer import load_scorer
from sceneloc.mapping.structure.scores import SCORE_KINDS, distinctiveness
from sceneloc.mapping.structure.select import proximity_kernel, select_points
from sceneloc.mapping.structure.triangulate import Triangulation, TriangulationConfig, triangulate_scene
from sceneloc.maps.structure_map import FORMAT, FORMAT_VERSION, StructureMap, grid_points
from sceneloc.runtime.errors import InputError
from sceneloc.runtime.progress import make_progress

POINT_BYTES = 6
"""16-bit grid xyz per point (maps.structure_map.grid_points)."""
HEADER_BYTES = 8192
"""Allowance for the safetensors header and the JSON metadata of a structure map file."""
MAX_QP_POINTS = 4000
"""Largest QP per cluster: its dense kernel takes 8 x MAX_QP_POINTS^2 bytes (128 MB)."""
UNCOMPRESSED_POINT_BYTES = 140
"""What an uncompressed structure-based map stores per point, as the colmap-sift peer does: float32 xyz and a
128-byte SIFT descriptor."""


@dataclass
class StructureMapConfig:
    """How a structure map is built (`sceneloc map --type structure`)."""

    triangulation: TriangulationConfig = field(default_factory=TriangulationConfig)
    """SIFT, pairs from poses, matching and triangulation."""
    budget_mb: float | None = None
    """Largest map file, megabytes (1e6 bytes); None: budget_fraction of the uncompressed map."""
    budget_fraction: float = 0.1
    """Map bytes when budget_mb is None, as a fraction of the uncompressed map of every triangulated point (float32
    xyz + 128-byte SIFT descriptor each, what colmap-sift stores): 0.1 compresses ten times. Where the map's fixed
    part (codec, cluster descriptors, header: 20-70 KB) would take more than half of that (scenes of a few thousand
    points), the budget is the fixed part plus half the fraction instead, so small scenes still get a map."""
    codec: str = "uint8"
    """Descriptor quantisation: "uint8" (PCA + per-dimension 8-bit), "pq" (product quantisation) or "dsq" (the
    paper's auto-encoder with differentiable soft quantisation)."""
    descriptor_bytes: int = 64
    """Bytes of each point's descriptor code."""
    cluster_distance: float = 0.8
    """Co-visibility distance (1 - shared points / the smaller frame's points) at which the frame dendrogram is cut
    into clusters."""
    scores: str = "auto"
    """Distinctiveness scores d the QP keeps points for (mapping/structure/scores.py): "track" (track length),
    "simple" (track length and reprojection error), "distinct" (track length and how unlike its nearest other
    descriptor a point's is), "learned" (a scorer trained on generated scenes: `sceneloc train-scores`), or "auto":
    "learned" when the budget keeps fewer than learned_below_share of the triangulated points, else "simple"
    (docs/BENCHMARKS.md section 17: the learned points still localize where few can be kept; with more, the
    simple ones are the more precise)."""
    learned_below_share: float = 0.1
    """scores="auto" uses the learned scores when the point budget is below this share of the triangulated
    points (quick-room: 17 % at the default budget_fraction, 5 % at 0.03)."""
    scorer: str = ""
    """The learned scorer's file when scores is "learned"; "" for the one shipped with the package."""
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
    query_upsample_below_px: int = 200
    """Query images less high than this are upsampled once for SIFT (first octave -1, as the mapping images are);
    higher ones are not (first octave 0): about 3x faster with a third of the matches, on the quick suite (240 px)
    0.27 cm instead of 0.13 cm median error at the same recall (docs/BENCHMARKS.md); on 120-px images too few
    features are left. 100000 for the most accurate poses at any size."""
    vocabulary_words: int = 256
    """Visual words of the cluster retrieval descriptors."""
    seed: int = 0
    """Seed of SMO's pair choice, the codec fit and the vocabulary."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """InputError (no file: the problem is a setting) for a setting out of its range."""
        checks = [(self.vocabulary_words >= 1, "vocabulary_words must be >= 1"),
                  (self.candidates_per_slot >= 1, "candidates_per_slot must be >= 1"),
                  (self.kernel_sigma_m > 0, "kernel_sigma_m must be > 0"), (self.tau >= 0, "tau must be >= 0"),
                  (0 < self.cluster_distance <= 1, "cluster_distance must be in (0, 1]"),
                  (self.smo_iterations >= 1, "smo_iterations must be >= 1"),
                  (self.triangulation.num_neighbors >= 1, "triangulation.num_neighbors must be >= 1"),
                  (self.triangulation.max_num_features >= 1, "triangulation.max_num_features must be >= 1")]
        for ok, message in checks:
            if not ok:
                raise InputError(None, message)
        if self.budget_mb is not None and not self.budget_mb > 0:
            raise InputError(None, f"budget_mb must be > 0, got {self.budget_mb}")
        if not 0 < self.budget_fraction <= 1:
            raise InputError(None, f"budget_fraction must be in (0, 1], got {self.budget_fraction}")
        if not 1 <= self.descriptor_bytes <= 128:
            raise InputError(None, f"descriptor_bytes must be in 1..128, got {self.descriptor_bytes}")
        if self.scores not in (*SCORE_KINDS, "auto"):
            raise InputError(None, f"unknown scores {self.scores!r} ({', '.join(SCORE_KINDS)} or auto)")
        if not 0 <= self.learned_below_share <= 1:
            raise InputError(None, f"learned_below_share must be in [0, 1], got {self.learned_below_share}")
        if self.codec not in CODEC_KINDS:
            raise InputError(None, f"unknown codec {self.codec!r} ({', '.join(CODEC_KINDS)})")


def budget_bytes(config: StructureMapConfig, n_triangulated: int) -> float:
    """The map's byte budget: budget_mb, or budget_fraction of the uncompressed map of every triangulated point."""
    return (config.budget_mb * 1e6 if config.budget_mb is not None
            else config.budget_fraction * UNCOMPRESSED_POINT_BYTES * n_triangulated)


def map_bytes(n_points: int, n_memberships: int, descriptor_bytes: int, codec_bytes: int, n_clusters: int,
              n_words: int) -> int:
    """Bytes of a saved StructureMap with these counts (maps.structure_map's tensors plus HEADER_BYTES for the
    safetensors header and the JSON metadata)."""
    index_bytes = 2 if n_points <= 65536 else 4
    return (n_points * (POINT_BYTES + descriptor_bytes) + (n_memberships + n_words) * index_bytes + codec_bytes
            + n_clusters * n_words + 8 * (n_clusters + 1) + 48 + HEADER_BYTES)


def visibility(model: Triangulation) -> csr_matrix:
    """(n_frames, P) sparse bool: frame f sees point p."""
    ones = np.ones(len(model.observation_point), bool)
    matrix = csr_matrix((ones, (model.observation_frame, model.observation_point)),
                        shape=(model.n_frames, len(model.points)))
    matrix.sum_duplicates()
    return matrix.astype(bool)


def select_in_clusters(model: Triangulation, seen: csr_matrix, clusters: np.ndarray, scores: np.ndarray,
                       budget: int, config: StructureMapConfig, progress=None) -> np.ndarray:
    """Indices (ascending) of the points kept: per cluster, SMO over its best-scored candidate points (at most
    MAX_QP_POINTS) with a share of `budget` proportional to the points it sees; the union over clusters, topped up
    with the best-scored points left when the clusters' choices overlap."""
    members = [np.flatnonzero(np.asarray(seen[clusters == c].sum(0)).ravel() > 0) for c in range(clusters.max() + 1)]
    total = sum(len(m) for m in members)
    task = None if progress is None else progress.add_task("selecting points (SMO)", total=len(members), info="")
    kept = []
    for c, points in enumerate(members):
        share = max(1, int(round(budget * len(points) / total)))
        order = points[np.argsort(-scores[points], kind="stable")][:min(share * config.candidates_per_slot,
                                                                        MAX_QP_POINTS)]
        share = min(share, len(order))
        if task is not None:
            progress.update(task, advance=1, info=f"{share} of {len(points)}")
        if share == 0:  # a cluster of frames without triangulated points (weak texture)
            continue
        kernel = proximity_kernel(model.points[order].astype(np.float64), config.kernel_sigma_m)
        # α sums to 1 over about `share` points, so the quadratic term is O(1 / share^2) per pair of neighbours and
        # the linear one O(tau / share): tau / share puts a score difference of 1 on a par with one neighbour.
        chosen = select_points(scores[order], kernel, share, config.tau / share, config.smo_iterations,
                               config.seed + c)
        kept.append(order[chosen])
    kept = np.unique(np.concatenate(kept)) if kept else np.zeros(0, np.int64)
    if len(kept) < budget:
        rest = np.setdiff1d(np.arange(len(scores)), kept)
        kept = np.union1d(kept, rest[np.argsort(-scores[rest], kind="stable")][:budget - len(kept)])
    return kept


def memberships(seen: csr_matrix, clusters: np.ndarray, points: np.ndarray) -> np.ndarray:
    """(M, 2) int64 rows (index into `points`, cluster), sorted by cluster then point: a point belongs to every
    cluster one of whose frames sees it. seen: (n_frames, P) visibility; clusters: (n_frames,) cluster ids."""
    sub = seen[:, points].tocoo()
    pairs = np.unique(np.stack([clusters[sub.row], sub.col], 1), axis=0)  # sorted by cluster, then point
    return pairs[:, ::-1].copy()


def _quick_fit(kind: str) -> dict:
    """Fit options that give a codec of the right size fast (its parameters are discarded)."""
    return {"pq": {"iterations": 1}, "dsq": {"steps": 1}}.get(kind, {})


def word_histograms(words: np.ndarray, groups: list[np.ndarray], n_words: int) -> np.ndarray:
    """(len(groups), n_words) float32 counts of `words` (P,) over each group of point indices."""
    out = np.zeros((len(groups), n_words), np.float32)
    for g, points in enumerate(groups):
        out[g] = np.bincount(words[points], minlength=n_words)
    return out


def build_structure_map(scene: Scene, config: StructureMapConfig, show_progress: bool = True) -> StructureMap:
    """Map a posed scene (module docstring). Raises InputError for a scene without frames or poses, or without
    triangulated points."""
    t0 = time.perf_counter()
    model = triangulate_scene(scene, config.triangulation, show_progress)
    t1 = time.perf_counter()
    seen = visibility(model)
    clusters = cluster_frames(covisibility_distance(seen), config.cluster_distance)
    n_clusters = int(clusters.max() + 1)
    # The codec's size does not depend on which points it is fit on (at most: PQ's codebook shrinks below 256
    # points): a quick fit on a sample gives it for the budget.
    sample = unit_rows(model.descriptors[:min(len(model.points), 1024)])
    codec_bytes = sum(v.nbytes for v in fit_codec(config.codec, sample, config.descriptor_bytes, config.seed,
                                                  **_quick_fit(config.codec)).tensors().values())
    limit = budget_bytes(config, len(model.points))
    n_words = config.vocabulary_words
    fixed = map_bytes(0, 0, config.descriptor_bytes, codec_bytes, n_clusters, n_words)
    if config.budget_mb is None and fixed > 0.5 * limit:
        # A small scene (a few thousand points, e.g. weak texture): the codec and cluster descriptors would take
        # most of a tenth of it. The relative default then lets the map be the fixed part plus half the fraction
        # (build.budget_bytes records it); an absolute --budget-mb stays a hard limit.
        limit = fixed + 0.5 * limit
    if fixed >= limit:
        raise InputError(scene.root, f"a structure map budget of {limit / 1e6:.3f} MB is below the map's fixed "
                                     f"{fixed / 1e6:.3f} MB (codec, cluster descriptors): raise --budget-mb or "
                                     f"budget_fraction, or use fewer descriptor_bytes")
    # Bytes per kept point: its grid xyz, its code and a 2-byte index per cluster membership (the triangulation's
    # mean; the trim below corrects for the kept points' longer tracks).
    memberships_per_point = len(memberships(seen, clusters, np.arange(len(model.points)))) / len(model.points)
    per_point = POINT_BYTES + config.descriptor_bytes + 2 * memberships_per_point
    budget = int(np.clip((limit - fixed) // per_point, 4, len(model.points)))
    kind = config.scores if config.scores != "auto" else (
        "learned" if budget < config.learned_below_share * len(model.points) else "simple")
    scorer = load_scorer(config.scorer) if kind == "learned" and config.scorer else None
    scores = distinctiveness(kind, model, scene, scorer=scorer)
    with make_progress(show_progress) as progress:
        kept = select_in_clusters(model, seen, clusters, scores, budget, config, progress)
    # The kept points' memberships are only known now (they see more clusters than the average point): drop the
    # lowest-scored points until the map fits its budget.
    while len(kept) > 4:
        size = map_bytes(len(kept), len(memberships(seen, clusters, kept)), config.descriptor_bytes, codec_bytes,
                         n_clusters, min(n_words, len(kept)))
        if size <= limit:
            break
        excess = int(np.ceil((size - limit) / (POINT_BYTES + config.descriptor_bytes)))
        kept = np.sort(kept[np.argsort(-scores[kept], kind="stable")][:max(4, len(kept) - excess)])
    t2 = time.perf_counter()
    codec = fit_codec(config.codec, unit_rows(model.descriptors[kept]), config.descriptor_bytes, config.seed)
    codes = codec.encode(unit_rows(model.descriptors[kept]))
    decoded = codec.decode(codes)
    t3 = time.perf_counter()

    pairs = memberships(seen, clusters, kept)
    offsets = np.searchsorted(pairs[:, 1], np.arange(n_clusters + 1))
    n_words = min(config.vocabulary_words, len(kept))
    centres, _ = kmeans2(decoded.astype(np.float64), n_words, seed=config.seed, minit="++")
    vocabulary_points = np.unique(nearest_words(unit_rows(centres), decoded))
    groups = [pairs[offsets[c]:offsets[c + 1], 0] for c in range(n_clusters)]
    histograms = word_histograms(nearest_words(decoded, decoded[vocabulary_points]), groups, len(vocabulary_points))
    cluster_words = np.round(255 * histograms / np.maximum(histograms.max(1, keepdims=True), 1)).astype(np.uint8)
    grid, origin, step = grid_points(model.points[kept])
    t4 = time.perf_counter()
    metadata = {"format": FORMAT, "format_version": FORMAT_VERSION, "sceneloc_version": __version__,
                "config": asdict(config), "scene": {"name": scene.name, "n_frames": len(scene.frames)},
                "codec": {"kind": config.codec, "bytes_per_point": int(codes.shape[1])},
                "build": {"n_triangulated": len(model.points), "n_points": int(len(kept)), "budget_points": budget,
                          "budget_bytes": int(limit), "fixed_bytes": int(fixed), "scores": kind,
                          "uncompressed_bytes": UNCOMPRESSED_POINT_BYTES * len(model.points),
                          "n_clusters": n_clusters, "n_memberships": int(len(pairs)),
                          "triangulation": model.stats,
                          "timings": {"triangulate_s": t1 - t0, "select_s": t2 - t1, "codec_s": t3 - t2,
                                      "retrieval_s": t4 - t3, "total_s": t4 - t0}}}
    return StructureMap(grid, origin, step, codes, codec, offsets.astype(np.int64), pairs[:, 0].astype(np.int64),
                        cluster_words, vocabulary_points.astype(np.int64), metadata, config.triangulation,
                        config.query_upsample_below_px)
