"""The point selection QP of structure-based maps: SMO against a generic solver, feasibility, the initialisation,
spreading of the selected points in space, the limit of large τ, and the kernel and scores fed to it."""

import math

import numpy as np
import pytest
from scipy.optimize import minimize

from sceneloc.mapping.structure.scores import simple_scores
from sceneloc.mapping.structure.select import proximity_kernel, select_points, smo_select


def objective(alpha, K, d, tau):
    return 0.5 * alpha @ K @ alpha - tau * d @ alpha


def random_problem(m: int, seed: int):
    """Scores in [0, 1] and an RBF kernel of points in a unit cube; three points duplicated, so that K is singular
    and some pairs have zero curvature (the solver's linear case)."""
    rng = np.random.default_rng(seed)
    xyz = rng.uniform(0.0, 1.0, (m, 3))
    xyz[-3:] = xyz[:3]
    return rng.uniform(0.0, 1.0, m), proximity_kernel(xyz, 0.4)


def generic_qp(d, K, tau, v):
    """The same QP by SLSQP: bounds 0 <= α <= 1/(v m), Σα = 1, from the uniform start."""
    m = d.size
    result = minimize(lambda x: objective(x, K, d, tau), np.full(m, 1.0 / m), jac=lambda x: K @ x - tau * d,
                      method="SLSQP", bounds=[(0.0, 1.0 / (v * m))] * m,
                      constraints=[{"type": "eq", "fun": lambda x: x.sum() - 1.0, "jac": lambda x: np.ones_like(x)}],
                      options={"ftol": 1e-12, "maxiter": 2000})
    assert result.success, result.message
    return result.x


@pytest.mark.parametrize("m", [10, 23, 40])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_smo_reaches_the_generic_solvers_optimum(m, seed):
    d, K = random_problem(m, seed)
    for v in (0.1, 0.35, 0.6, 1.0):
        for tau in (0.3, 3.0):
            alpha = smo_select(d, K, tau, v, seed=seed)
            C = 1.0 / (v * m)
            assert alpha.shape == (m,) and alpha.dtype == np.float64
            assert alpha.min() >= 0.0 and alpha.max() <= C * (1 + 1e-12)
            assert abs(alpha.sum() - 1.0) <= 1e-9
            assert (alpha > 0).sum() >= math.ceil(round(v * m, 9))
            reference = objective(generic_qp(d, K, tau, v), K, d, tau)
            assert objective(alpha, K, d, tau) <= reference + 1e-6 * max(1.0, abs(reference)), (v, tau)


def test_smo_improves_on_its_initialisation_and_is_seeded():
    d, K = random_problem(40, 7)
    start = smo_select(d, K, 1.0, 0.25, max_iter=0)
    solved = smo_select(d, K, 1.0, 0.25, seed=3)
    assert objective(solved, K, d, 1.0) < objective(start, K, d, 1.0) - 1e-3
    np.testing.assert_array_equal(solved, smo_select(d, K, 1.0, 0.25, seed=3))


def test_initialisation_puts_the_remainder_on_the_last_top_score():
    # v m = 7.5: the 8 best scores, 7 of them at C = 1/7.5 and the 8th at 1 - 7 C = 0.0666..., so that Σα = 1.
    m, v = 25, 0.3
    d = np.random.default_rng(0).permutation(m).astype(float)
    alpha = smo_select(d, np.eye(m), 1.0, v, max_iter=0)
    order = np.argsort(-d)
    C = 1.0 / 7.5
    np.testing.assert_allclose(alpha[order[:7]], C, rtol=0, atol=1e-15)
    assert alpha[order[7]] == pytest.approx(1.0 - 7 * C, abs=1e-15)
    assert np.all(alpha[order[8:]] == 0.0)
    assert abs(alpha.sum() - 1.0) <= 1e-15


def triangle(circumradius: float) -> np.ndarray:
    """An acute scalene triangle (angles 50, 60, 70 degrees) in the z = 0 plane, (3, 3) metres."""
    a, b, c = np.radians([50.0, 60.0, 70.0])
    phase = np.array([0.0, 2 * c, 2 * c + 2 * a])  # central angles 2c, 2a, 2b between consecutive vertices
    return np.stack([circumradius * np.cos(phase), circumradius * np.sin(phase), np.zeros(3)], axis=1)


def test_equal_scores_pick_one_point_per_blob():
    # Two tight blobs (10 cm across, sigma 1 m, 20 m apart) of three points each, every score equal: top-d alone
    # cannot tell the points apart (a stable sort takes indices 0 and 1, both from blob A). The QP keeps half the
    # mass in each blob. Within a blob it spreads the mass as the barycentric weights of the circumcentre (the
    # minimum of ½ αᵀKα for K ≈ 1 − |x_i − x_j|² / 2σ²), all distinct for a scalene triangle, so the two largest α
    # are the same vertex of each blob. Blob B lists its vertices in another order, so index symmetry cannot pass.
    tri = triangle(0.1)
    xyz = np.vstack([tri, tri[[2, 0, 1]] + [20.0, 0.0, 0.0]])
    K = proximity_kernel(xyz, 1.0)
    d = np.ones(6)
    for seed in range(3):
        alpha = smo_select(d, K, 1.0, 2 / 6, seed=seed)
        assert alpha[:3].sum() == pytest.approx(0.5, abs=1e-6)
        chosen = select_points(d, K, budget=2, seed=seed)
        np.testing.assert_array_equal(chosen, [0, 4])  # vertex 0 of A; B's index 4 is the same vertex
    assert list(np.argsort(-d, kind="stable")[:2]) == [0, 1]


def test_selection_spreads_where_top_scores_bunch_and_large_tau_is_top_d():
    # Blob A holds the three best scores, blob B the next three: top-d takes two points of A. With τ = 1 the
    # kernel term wins (two points of one blob cost ½ · 1 more than one per blob; the score gain is 0.1 · ½):
    # the best point of each blob. With τ = 1e4 the scores win and the selection is top-d.
    tri = triangle(0.05)
    xyz = np.vstack([tri, tri + [20.0, 0.0, 0.0]])
    K = proximity_kernel(xyz, 1.0)
    d = np.array([1.0, 0.99, 0.98, 0.9, 0.89, 0.88])
    top_d = np.sort(np.argsort(-d)[:2])
    np.testing.assert_array_equal(top_d, [0, 1])
    np.testing.assert_array_equal(select_points(d, K, budget=2, tau=1.0), [0, 3])
    np.testing.assert_array_equal(select_points(d, K, budget=2, tau=1e4), top_d)


@pytest.mark.parametrize("budget", [1, 5, 12])
def test_large_tau_equals_top_d_on_a_random_cloud(budget):
    rng = np.random.default_rng(budget)
    m = 30
    K = proximity_kernel(rng.uniform(0.0, 2.0, (m, 3)), 0.5)
    d = rng.permutation(np.linspace(0.0, 1.0, m))  # score gaps of 1/29: τ · gap >> the kernel term's |Kα| <= 1
    expected = np.sort(np.argsort(-d)[:budget])
    np.testing.assert_array_equal(select_points(d, K, budget, tau=1e4), expected)
    chosen = select_points(d, K, budget, tau=1.0)
    assert chosen.shape == (budget,) and np.all(np.diff(chosen) > 0)


def test_budget_at_least_m_keeps_everything_and_bad_input_is_refused():
    d, K = random_problem(10, 0)
    np.testing.assert_array_equal(select_points(d, K, 10), np.arange(10))
    np.testing.assert_array_equal(select_points(d, K, 25), np.arange(10))
    with pytest.raises(ValueError):
        select_points(d, K, 0)
    with pytest.raises(ValueError):
        smo_select(d, K[:5, :5], 1.0, 0.5)
    with pytest.raises(ValueError):
        smo_select(d, K, 1.0, 1.5)


def test_proximity_kernel_values():
    xyz = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [3.0, 4.0, 0.0]])
    K = proximity_kernel(xyz, sigma_m=2.0)
    assert K[0, 1] == pytest.approx(math.exp(-1.0 / 8.0))
    assert K[0, 2] == pytest.approx(math.exp(-4.0 / 8.0))
    assert K[0, 3] == pytest.approx(math.exp(-25.0 / 8.0))
    assert K[1, 2] == pytest.approx(math.exp(-5.0 / 8.0))
    np.testing.assert_array_equal(np.diag(K), 1.0)
    np.testing.assert_array_equal(K, K.T)
    assert np.linalg.eigvalsh(proximity_kernel(np.random.default_rng(0).normal(size=(50, 3)), 0.7)).min() > -1e-9


def test_simple_scores_values():
    scores = simple_scores(np.array([2, 4, 8, 1]), np.array([0.0, 0.0, 2.0, 0.0]))
    np.testing.assert_allclose(scores, [1 / 3, 2 / 3, math.exp(-1.0), 0.0], rtol=1e-12)
    assert simple_scores(np.array([1, 1]), np.array([0.0, 5.0])).tolist() == [0.0, 0.0]
    with pytest.raises(ValueError):
        simple_scores(np.array([2, 0]), np.array([0.0, 0.0]))
