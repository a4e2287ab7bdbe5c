"""Point selection of a structure-based map: the quadratic program of SceneSqueezer / QP+R.Sift (Mera-Trujillo et
al.), solved by Sequential Minimal Optimization (SceneSqueezer supplementary, Algorithm 1), and the proximity kernel
this package feeds it in place of the paper's learned one (the scores d: scores.py).

The QP over m points, for one co-visible cluster (clustering.py):

    minimise   f(α) = ½ αᵀKα − τ dᵀα
    subject to 0 ≤ α_i ≤ C = 1/(v m),   Σ_i α_i = 1

d (m,): distinctiveness scores (higher: more worth keeping); K (m, m): symmetric PSD proximity kernel, K_ii = 1
(large for points close together, so the quadratic term penalises keeping neighbours together); τ ≥ 0 weighs the
two; v in (0, 1]: the fraction of points kept. Since each α_i ≤ 1/(v m) and they sum to 1, at least ⌈v m⌉ points
have α_i > 0: those are the selected points."""

from __future__ import annotations

import math

import numpy as np
from scipy.spatial.distance import cdist

_CURVATURE_EPS = 1e-15
"""Below this pair curvature η = K_ii + K_jj − 2 K_ij (two coincident points) f is linear along the pair."""


def _check_problem(d: np.ndarray, K: np.ndarray, v: float) -> tuple[np.ndarray, np.ndarray]:
    d = np.ascontiguousarray(d, dtype=np.float64)
    K = np.ascontiguousarray(K, dtype=np.float64)
    if d.ndim != 1 or d.size == 0:
        raise ValueError(f"d must be a non-empty 1-D array of scores, got shape {d.shape}")
    if K.shape != (d.size, d.size):
        raise ValueError(f"K must be ({d.size}, {d.size}) for {d.size} scores, got shape {K.shape}")
    if not 0.0 < v <= 1.0:
        raise ValueError(f"v must be in (0, 1], got {v}")
    if not (np.isfinite(d).all() and np.isfinite(K).all()):
        raise ValueError("d and K must be finite")
    return d, K


def _initial_alpha(d: np.ndarray, C: float) -> np.ndarray:
    """Algorithm 1's initialise(d, v): C = 1/(v m) on the ⌈v m⌉ highest scores, 0 elsewhere. With v m not an
    integer, ⌈v m⌉ entries of C sum to more than 1, so the last of them (the lowest score of the ⌈v m⌉) gets the
    remainder 1 − (⌈v m⌉ − 1) C instead, which lies in (0, C]: α starts feasible, Σα = 1."""
    m = d.size
    # round(): v = budget / m gives v m = budget up to one ulp, which must not ceil to budget + 1.
    count = min(m, math.ceil(round(1.0 / C, 9)))
    top = np.argsort(-d, kind="stable")[:count]  # ties: the lower index first
    alpha = np.zeros(m)
    alpha[top[:-1]] = C
    alpha[top[-1]] = min(C, 1.0 - (count - 1) * C)
    return alpha


def _pair_step(alpha: np.ndarray, g: np.ndarray, K: np.ndarray, diag: np.ndarray, C: float,
               i: int, j: int) -> float:
    """Exact minimisation of f over the pair (i, j) with Δ = α_i + α_j fixed; updates alpha and g in place and
    returns the change of f (≤ 0).

    Moving t from j to i (α_i += t, α_j −= t) changes f by  t (g_i − g_j) + ½ t² η,  η = K_ii + K_jj − 2 K_ij ≥ 0,
    with g = Kα − τd the gradient. The feasible α_i' = α_i + t is [L, H] = [max(0, Δ − C), min(C, Δ)], so

        α_i' = clip(α_i − (g_i − g_j) / η, L, H),   α_j' = Δ − α_i'

    and, for η ≈ 0 (f linear along the pair), α_i' = H when g_i < g_j, L when g_i > g_j. The gradient follows in
    O(m): g += t (K[i] − K[j]) (K symmetric, so rows stand for columns)."""
    ai, aj = float(alpha[i]), float(alpha[j])
    delta = ai + aj
    low, high = max(0.0, delta - C), min(C, delta)
    slope = float(g[i] - g[j])
    eta = float(diag[i] + diag[j] - 2.0 * K[i, j])
    if eta > _CURVATURE_EPS:
        new_i = min(high, max(low, ai - slope / eta))
    elif slope < 0.0:
        new_i = high
    elif slope > 0.0:
        new_i = low
    else:
        return 0.0
    t = new_i - ai
    if t == 0.0:
        return 0.0
    alpha[i] = new_i
    alpha[j] = delta - new_i
    g += t * (K[i] - K[j])
    return t * slope + 0.5 * t * t * max(eta, 0.0)


def _best_anchored_pair(alpha: np.ndarray, g: np.ndarray, K: np.ndarray, diag: np.ndarray,
                        C: float) -> tuple[int, int, float]:
    """The pair with the largest exact decrease of f among the pairs through the maximal violating pair's two ends
    (LIBSVM's first-order working set): the receiver i* = argmin g over α_i < C paired with every donor (α_j > 0),
    and the donor j* = argmax g over α_j > 0 paired with every receiver. Vectorised, O(m). Returns (receiver,
    donor, decrease ≥ 0); decrease 0 when no pair improves (α satisfies the KKT conditions)."""
    m = alpha.size
    can_up = alpha < C
    can_down = alpha > 0.0
    if not can_up.any() or not can_down.any():
        return 0, 0, 0.0
    best = (0, 0, 0.0)
    receiver = int(np.flatnonzero(can_up)[np.argmin(g[can_up])])
    donor = int(np.flatnonzero(can_down)[np.argmax(g[can_down])])
    for anchor, as_receiver in ((receiver, True), (donor, False)):
        others = np.arange(m)
        gap = (g - g[anchor]) if as_receiver else (g[anchor] - g)  # g_donor − g_receiver: > 0 improves
        cap = (np.minimum(C - alpha[anchor], alpha) if as_receiver else np.minimum(C - alpha, alpha[anchor]))
        usable = (can_down if as_receiver else can_up) & (others != anchor) & (gap > 0.0) & (cap > 0.0)
        if not usable.any():
            continue
        eta = diag[anchor] + diag - 2.0 * K[anchor]
        curved = eta > _CURVATURE_EPS  # else f is linear along the pair: move the whole cap
        t = np.where(curved, np.minimum(gap / np.where(curved, eta, 1.0), cap), cap)
        gain = np.where(usable, t * gap - 0.5 * t * t * np.maximum(eta, 0.0), 0.0)
        k = int(np.argmax(gain))
        if gain[k] > best[2]:
            best = (anchor, k, float(gain[k])) if as_receiver else (k, anchor, float(gain[k]))
    return best


def smo_select(d: np.ndarray, K: np.ndarray, tau: float, v: float, max_iter: int = 20000, seed: int = 0,
               tol: float = 1e-9) -> np.ndarray:
    """Solve the selection QP (module docstring) by SMO, as SceneSqueezer's Algorithm 1.

    d: (m,) scores; K: (m, m) dense, symmetric PSD, K_ii = 1 (the diagonal is used as given); tau: τ ≥ 0; v: the
    fraction of points kept, in (0, 1]; max_iter: pair updates at most; seed: the pair draws; tol: relative
    decrease at which it stops (below). Returns α (m,) float64, feasible: 0 ≤ α ≤ 1/(v m), Σα = 1 up to rounding
    (each update keeps α_i + α_j; about 1e-16 per update).

    Steps:
      - α starts at the ⌈v m⌉ highest scores (_initial_alpha; the paper's initialise, with the remainder on the
        last entry so that Σα = 1 exactly), g = Kα − τd computed once (O(m²)).
      - Each iteration draws a pair as the paper's select_pair: i uniformly among the points with α_i > 0, j
        uniformly among the other m − 1 points (so at least one of the pair is non-zero; pairs with both non-zero
        are drawn twice as often as under a uniform draw over such pairs), and minimises f over the pair exactly
        (_pair_step: the closed form that Algorithm 1's line 10 garbles). O(m), vectorised, per iteration.
      - Stopping rule: every window of W = max(100, m) iterations, if f fell by at most tol · (1 + |f|) over the
        window, the random draws may simply have missed the few pairs left to improve, so one deterministic step
        is tried on the best pair through the maximal violating pair (_best_anchored_pair). If that step too
        decreases f by at most tol · (1 + |f|), it stops; otherwise the step is kept and the iterations go on.
        It always stops after max_iter random pair updates (the paper's limit, 20,000; the verification steps,
        at most one per window, come on top)."""
    d, K = _check_problem(d, K, v)
    m = d.size
    C = 1.0 / (v * m)
    alpha = _initial_alpha(d, C)
    if m == 1:
        return alpha
    diag = np.diagonal(K).copy()
    g = K @ alpha - tau * d
    rng = np.random.default_rng(seed)
    window = max(100, m)

    def objective() -> float:
        # f = ½ αᵀKα − τ dᵀα with Kα = g + τd.
        return float(0.5 * alpha @ g - 0.5 * tau * (d @ alpha))

    f_window = objective()
    done = 0
    while done < max_iter:
        steps = min(window, max_iter - done)
        draws = rng.random((steps, 2))
        for u_i, u_j in draws:
            support = np.flatnonzero(alpha > 0.0)
            i = int(support[min(int(u_i * support.size), support.size - 1)])
            j = min(int(u_j * (m - 1)), m - 2)
            j += j >= i  # uniform over the m − 1 points other than i
            _pair_step(alpha, g, K, diag, C, i, j)
        done += steps
        f_now = objective()
        limit = tol * (1.0 + abs(f_now))
        if f_window - f_now <= limit:
            receiver, donor, gain = _best_anchored_pair(alpha, g, K, diag, C)
            if gain <= limit:
                break
            _pair_step(alpha, g, K, diag, C, receiver, donor)
            f_now = objective()
        f_window = f_now
    return alpha


def select_points(d: np.ndarray, K: np.ndarray, budget: int, tau: float = 1.0, max_iter: int = 20000,
                  seed: int = 0) -> np.ndarray:
    """The `budget` points the QP keeps. d: (m,) scores; K: (m, m) proximity kernel; budget: points to keep.
    v = budget / m, α = smo_select(d, K, tau, v, max_iter, seed); returns the indices (budget,) int64 of the
    `budget` largest α (ties: the larger score, then the lower index), sorted ascending. budget ≥ m returns every
    index. At least `budget` points have α > 0 (α_i ≤ 1/budget, Σα = 1); more can, when the QP spreads the mass
    of a group of near-identical points over them, and then the largest α decide."""
    d = np.asarray(d, dtype=np.float64)
    m = d.size
    if budget < 1:
        raise ValueError(f"budget must be at least 1, got {budget}")
    if budget >= m:
        return np.arange(m, dtype=np.int64)
    alpha = smo_select(d, K, tau, budget / m, max_iter=max_iter, seed=seed)
    order = np.lexsort((np.arange(m), -d, -alpha))  # the last key sorts first
    return np.sort(order[:budget]).astype(np.int64)


def proximity_kernel(xyz: np.ndarray, sigma_m: float) -> np.ndarray:
    """K_ij = exp(−|x_i − x_j|² / (2 σ²)): Gaussian RBF of the 3D distance. xyz: (m, 3) metres; sigma_m: σ, metres.
    Returns (m, m) float64, symmetric PSD, K_ii = 1; dense, so 8 m² bytes (800 MB for 10,000 points).

    A simple stand-in for SceneSqueezer's learned K (a point transformer's features): two points within about σ of
    each other are nearly redundant for the QP, so the selection spreads over the cluster's space instead of
    keeping the best-scored points where they bunch together."""
    xyz = np.asarray(xyz, dtype=np.float64)
    if xyz.ndim != 2 or xyz.shape[1] != 3:
        raise ValueError(f"xyz must be (m, 3), got shape {xyz.shape}")
    if not sigma_m > 0.0:
        raise ValueError(f"sigma_m must be positive, got {sigma_m}")
    kernel = cdist(xyz, xyz, "sqeuclidean")
    kernel *= -0.5 / sigma_m ** 2
    np.exp(kernel, out=kernel)
    return kernel
