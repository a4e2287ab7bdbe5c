"""Co-visible frame clusters of a structure-based map (SceneSqueezer, supplementary section A): the co-visibility
distance between mapping frames from the 3D points they observe, and average-linkage hierarchical clustering of
the frames cut at a distance threshold (scipy's linkage + fcluster, as the paper). Points are selected per cluster
(select.py), so a cluster is the unit a query is registered against."""

from __future__ import annotations

import numpy as np
from scipy import sparse
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.spatial.distance import squareform


def covisibility_distance(visible) -> np.ndarray:
    """Pairwise co-visibility distance of the frames.

    visible: (n_frames, n_points) scipy.sparse matrix/array or bool ndarray; entry (f, p) non-zero when frame f
    observes point p (values other than zero/non-zero are ignored).
    Returns (n_frames, n_frames) float64 in [0, 1], symmetric:

        D_ij = 1 - |P_i ∩ P_j| / min(|P_i|, |P_j|)        (P_i: the points frame i observes)

    D_ii = 0, and D_ij = 1 for i != j when frame i or j observes nothing.

    The paper leaves the distance open. This is the overlap (Szymkiewicz-Simpson) coefficient: it is 0 when one
    frame's points are a subset of the other's, so a frame that sees part of what a wider frame sees (a close-up,
    a frame at the end of a sequence) clusters with it, where Jaccard (intersection over union) would keep them
    apart by the size difference alone.

    The intersection counts are one sparse product V V^T (V: the binarised visibility, CSR), so the cost follows the
    observations, not n_frames x n_points: 1,000 frames x 100,000 points with 1,000 observations per frame is well
    under a second. The (n_frames, n_frames) result is dense (8 MB for 1,000 frames)."""
    if sparse.issparse(visible):
        v = sparse.csr_matrix(visible)
        v.sum_duplicates()  # a (frame, point) entry stored twice is one observation
        v = (v != 0).astype(np.float64)
    else:
        array = np.asarray(visible)
        if array.ndim != 2:
            raise ValueError(f"visible must be 2-D (n_frames, n_points), got shape {array.shape}")
        v = sparse.csr_matrix(array != 0, dtype=np.float64)
    n = v.shape[0]
    # Counts are integers below 2^53, so the float64 product is exact and exactly symmetric.
    shared = (v @ v.T).toarray()
    counts = np.diag(shared).copy()
    smaller = np.minimum.outer(counts, counts)
    # A frame that observes nothing is at distance 1 from every other (the inner where avoids 0 / 0).
    distance = np.where(smaller > 0, 1.0 - shared / np.where(smaller > 0, smaller, 1.0), 1.0)
    np.clip(distance, 0.0, 1.0, out=distance)
    distance[np.arange(n), np.arange(n)] = 0.0
    return distance


def cluster_frames(distance: np.ndarray, threshold: float) -> np.ndarray:
    """Flat clusters of frames from their pairwise distances.

    distance: (n, n) symmetric, zero diagonal (e.g. covisibility_distance); threshold: the largest average-linkage
    distance at which two groups are still merged (fcluster's criterion="distance": a cluster's merge height is at
    most threshold; with average linkage that is the mean distance between the two groups' frames).
    Returns (n,) int64 cluster ids 0..k-1, numbered in order of each cluster's first frame (so frame 0 is in
    cluster 0 and the ids do not depend on scipy's numbering). n == 1 gives [0], n == 0 an empty array.

    Average linkage, as the paper: less sensitive to a single bridging frame than single linkage, which would chain
    two groups through it."""
    distance = np.asarray(distance, dtype=np.float64)
    if distance.ndim != 2 or distance.shape[0] != distance.shape[1]:
        raise ValueError(f"distance must be square (n, n), got shape {distance.shape}")
    n = distance.shape[0]
    if n <= 1:
        return np.zeros(n, dtype=np.int64)
    # checks=False: the diagonal and symmetry are the caller's; squareform reads the upper triangle.
    tree = linkage(squareform(distance, checks=False), method="average")
    labels = fcluster(tree, t=threshold, criterion="distance")
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    rank = np.empty(len(first), dtype=np.int64)
    rank[np.argsort(first)] = np.arange(len(first))
    return rank[inverse.reshape(-1)]
