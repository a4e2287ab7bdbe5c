"""Co-visible frame clusters: the co-visibility distance by hand and against a dense computation, and the
clusters of a hand-built visibility matrix."""

import numpy as np
import pytest
from scipy import sparse

from sceneloc.mapping.structure.clustering import cluster_frames, covisibility_distance


def visibility(point_sets, n_points: int) -> np.ndarray:
    matrix = np.zeros((len(point_sets), n_points), dtype=bool)
    for frame, points in enumerate(point_sets):
        matrix[frame, list(points)] = True
    return matrix


def test_distance_by_hand():
    # Frame 0 sees {0, 1, 2, 3}, frame 1 {2, 3, 4}, frame 2 nothing, frame 3 {0, 1} (a subset of frame 0's).
    seen = visibility([{0, 1, 2, 3}, {2, 3, 4}, set(), {0, 1}], 5)
    expected = np.array([[0.0, 1 - 2 / 3, 1.0, 0.0],
                         [1 - 2 / 3, 0.0, 1.0, 1.0],
                         [1.0, 1.0, 0.0, 1.0],
                         [0.0, 1.0, 1.0, 0.0]])
    distance = covisibility_distance(seen)
    assert distance.dtype == np.float64 and distance.shape == (4, 4)
    np.testing.assert_allclose(distance, expected, rtol=0, atol=1e-15)
    # The same from a sparse matrix holding counts, one (frame, point) entry stored twice and an explicit zero.
    rows, cols = np.nonzero(seen)
    values = np.arange(2.0, 2.0 + rows.size)
    counts = sparse.coo_matrix((np.r_[values, 5.0, 0.0], (np.r_[rows, 0, 1], np.r_[cols, 0, 0])), shape=(4, 5))
    np.testing.assert_allclose(covisibility_distance(counts), expected, rtol=0, atol=1e-15)


def test_distance_matches_a_dense_computation():
    rng = np.random.default_rng(0)
    seen = rng.random((120, 3000)) < 0.02
    seen[5] = False  # one frame that sees nothing
    distance = covisibility_distance(sparse.csr_matrix(seen))
    shared = seen.astype(np.float64) @ seen.T.astype(np.float64)
    counts = seen.sum(axis=1)
    for i, j in [(0, 1), (3, 7), (10, 119), (5, 9), (9, 5), (42, 42), (5, 5)]:
        smaller = min(counts[i], counts[j])
        if i == j:
            expected = 0.0
        elif smaller == 0:
            expected = 1.0
        else:
            expected = 1.0 - shared[i, j] / smaller
        assert distance[i, j] == pytest.approx(expected, abs=1e-12), (i, j)
    np.testing.assert_array_equal(distance, distance.T)
    assert distance.min() >= 0.0 and distance.max() <= 1.0


def test_three_groups_and_a_weak_bridge():
    # Groups A, B, C see disjoint point ranges (A: 0-19, B: 20-39, C: 40-59), each frame a different 15 of its 20,
    # A's frames all with points 0-7 and B's with 20 and 21. Frame "bridge" sees 8 points of A (0-7) and 2 of B (20,
    # 21): distance 1 - 8/10 = 0.2 to A's frames, 1 - 2/10 = 0.8 to B's. It joins A (merges within the groups are
    # at heights <= 0.3), and A ∪ {bridge} stays apart from B (average distance 0.95). Frames are interleaved, so
    # the ids (numbered by first frame) are C -> 0, A -> 1, B -> 2.
    rng = np.random.default_rng(1)

    def frame(start):
        return set((start + rng.permutation(20)[:15]).tolist())

    a_core = set(range(8))
    b_core = {20, 21}
    frames = [frame(40), frame(0) | a_core, frame(20) | b_core, frame(0) | a_core, frame(40), frame(20) | b_core,
              a_core | b_core, frame(0) | a_core, frame(20) | b_core, frame(40)]
    groups = ["C", "A", "B", "A", "C", "B", "A", "A", "B", "C"]
    distance = covisibility_distance(visibility(frames, 60))
    bridge = 6
    assert distance[bridge, 1] == pytest.approx(0.2) and distance[bridge, 2] == pytest.approx(1 - 2 / 10)
    ids = cluster_frames(distance, threshold=0.5)
    expected = {"C": 0, "A": 1, "B": 2}
    np.testing.assert_array_equal(ids, [expected[g] for g in groups])
    assert ids.dtype == np.int64
    # Everything merges at the largest distance; at threshold 0 only identical frames (none here) would.
    assert set(cluster_frames(distance, threshold=1.0).tolist()) == {0}
    np.testing.assert_array_equal(cluster_frames(distance, threshold=0.0), np.arange(10))


def test_cluster_frames_small_inputs():
    np.testing.assert_array_equal(cluster_frames(np.zeros((1, 1)), 0.5), [0])
    assert cluster_frames(np.zeros((0, 0)), 0.5).shape == (0,)
    np.testing.assert_array_equal(cluster_frames(np.array([[0.0, 0.9], [0.9, 0.0]]), 0.5), [0, 1])
    np.testing.assert_array_equal(cluster_frames(np.array([[0.0, 0.3], [0.3, 0.0]]), 0.5), [0, 0])
    with pytest.raises(ValueError):
        cluster_frames(np.zeros((2, 3)), 0.5)
