"""Descriptor codecs of structure-based maps (sceneloc.mapping.structure.quantise): round-trip error bounds,
nearest-neighbour matching through each codec against float32 and random-code baselines, storage round trips,
and the DSQ soft quantiser's limit."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file

from sceneloc.mapping.structure.quantise import (CODEC_KINDS, DSQCodec, PQCodec, UInt8Codec, dsq_hard, dsq_soft,
                                                 fit_codec, fit_dsq, from_tensors, unit_rows)


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread: the DSQ fits are bit-reproducible per thread count, and faster on shared cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def descriptors(n: int, d: int, rng: np.random.Generator, noise: float = 0.9) -> tuple[np.ndarray, np.ndarray]:
    """(map, queries): n unit "descriptors" in d dimensions and one noisy unit copy of each as its query.

    The descriptors are directions of a Gaussian whose standard deviations fall as 1/sqrt(i) along random
    orthonormal axes (variance 1/i: the first half of the axes holds 87% of it at d = 128, like a descriptor's PCA
    spectrum; isotropic vectors would have nothing for any codec to exploit). A query is its descriptor plus a noise
    vector of the same spectrum and norm `noise`, renormalised."""
    axes, _ = np.linalg.qr(rng.normal(size=(d, d)))
    scale = (1.0 + np.arange(d)) ** -0.5
    x = unit_rows((rng.normal(size=(n, d)) * scale) @ axes.T)
    e = (rng.normal(size=(n, d)) * scale) @ axes.T
    return x, unit_rows(x + noise * unit_rows(e))


def nn_accuracy(database: np.ndarray, queries: np.ndarray) -> float:
    """Fraction of queries i whose largest dot product over the database rows is with row i."""
    return float(np.mean(np.argmax(queries @ database.T, axis=1) == np.arange(len(queries))))


def test_uint8_without_pca_is_within_half_a_step_per_dimension():
    rng = np.random.default_rng(0)
    x = unit_rows(rng.normal(size=(500, 128)))
    codec = fit_codec("uint8", x, 128)
    assert codec.basis is None and codec.bytes_per_point == 128
    step = (x.max(axis=0).astype(np.float64) - x.min(axis=0)) / 255
    np.testing.assert_allclose(codec.step, step, rtol=1e-6)
    codes = codec.encode(x)
    assert codes.dtype == np.uint8 and codes.shape == (500, 128)
    error = np.abs(codec.reconstruct(codes).astype(np.float64) - x)
    # The exact bound of round-to-nearest (plus float32 rounding of lo + code * step, ~1e-8 here).
    assert np.all(error <= step / 2 + 1e-6)
    # ... and it is the bound, not a loose one: the worst error of each dimension over 500 points comes close to it,
    # while a codec with half the levels (every other code) would exceed it.
    assert np.median(error.max(axis=0) / step) > 0.45
    coarse = codec.lo + (codes.astype(np.int64) // 2 * 2).astype(np.float32) * codec.step
    assert np.mean(np.abs(coarse - x) > step / 2 + 1e-6) > 0.2
    # The fit set's extremes code to 0 and 255, and values beyond them saturate.
    assert codes.min(axis=0).max() == 0 and codes.max(axis=0).min() == 255
    assert np.all(codec.encode(x * 10 + 1)[x > 0.05] == 255)


def test_pca_uint8_of_data_in_a_subspace_reconstructs_it():
    rng = np.random.default_rng(1)
    basis, _ = np.linalg.qr(rng.normal(size=(128, 64)))
    x = unit_rows(rng.normal(size=(1000, 64)) @ basis.T)  # unit rows in a 64-d linear subspace of R^128
    codec = fit_codec("uint8", x, 64)
    assert codec.basis.shape == (128, 64) and codec.bytes_per_point == 64
    codes = codec.encode(x)
    cos = (unit_rows(codec.reconstruct(codes)) * x).sum(axis=1)
    assert cos.min() > 0.999
    # Matching space: the decoded rows against the same rows as queries (encode_query) agree as well.
    assert (codec.decode(codes) * codec.encode_query(x)).sum(axis=1).min() > 0.999
    # Baseline: 32 dimensions of the same data lose half of it, and the test tells.
    half = fit_codec("uint8", x, 32)
    assert np.median((unit_rows(half.reconstruct(half.encode(x))) * x).sum(axis=1)) < 0.9


def test_matching_through_each_codec_at_64_bytes():
    rng = np.random.default_rng(2)
    x, queries = descriptors(2000, 128, rng)
    exact = nn_accuracy(x, queries)  # float32 descriptors, the reference; chance is 1 / 2000
    assert exact > 0.95
    accuracy, random_codes = {}, {}
    for kind in CODEC_KINDS:
        options = {"steps": 400} if kind == "dsq" else {}
        codec = fit_codec(kind, x, 64, seed=0, **options)
        assert codec.bytes_per_point == 64
        codes = codec.encode(x)
        assert codes.shape == (2000, 64) and codes.dtype == np.uint8
        accuracy[kind] = nn_accuracy(codec.decode(codes), codec.encode_query(queries))
        noise_codes = rng.integers(0, 256, size=codes.shape, dtype=np.uint8)
        random_codes[kind] = nn_accuracy(codec.decode(noise_codes), codec.encode_query(queries))
    print(f"float32 {exact:.4f}, at 64 bytes: {accuracy}, random codes: {random_codes}")
    # Measured: float32 0.998, uint8 + PCA-64 0.969, PQ 0.998, DSQ (400 steps) 0.928; random codes <= 0.001. PCA
    # keeps 87% of the spectrum in its 64 directions, PQ with 2 dimensions per subspace loses almost nothing, and
    # the short DSQ training (400 steps to keep the test quick) is the weakest of the three.
    assert accuracy["uint8"] > exact - 0.08
    assert accuracy["pq"] > exact - 0.05
    assert accuracy["dsq"] > exact - 0.15
    for kind in ("pq", "dsq"):
        assert random_codes[kind] < 0.01 and accuracy[kind] > random_codes[kind] + 0.5


def small_codec(kind: str, x: np.ndarray):
    """A codec of `kind` fit quickly on x (quality does not matter for the storage tests)."""
    return {"uint8": lambda: UInt8Codec.fit(x, dims=12), "pq": lambda: PQCodec.fit(x, subspaces=8, iterations=3),
            "dsq": lambda: fit_dsq(x, dims=8, steps=5, hidden=32)}[kind]()


@pytest.mark.parametrize("kind", [*CODEC_KINDS, "uint8-no-pca"])
def test_tensors_round_trip_decodes_bit_identically(kind, tmp_path):
    rng = np.random.default_rng(3)
    x, queries = descriptors(300, 32, rng)
    codec = UInt8Codec.fit(x) if kind == "uint8-no-pca" else small_codec(kind, x)
    kind = codec.kind
    codes = codec.encode(x)
    path = str(tmp_path / "codec.safetensors")
    save_file(codec.tensors(), path)
    for copy in (from_tensors(kind, codec.tensors()), from_tensors(kind, load_file(path))):
        assert type(copy) is type(codec) and copy.bytes_per_point == codec.bytes_per_point
        for method, data in (("decode", codes), ("encode", x), ("encode_query", queries)):
            before, after = getattr(codec, method)(data), getattr(copy, method)(data)
            assert before.dtype == after.dtype and before.tobytes() == after.tobytes(), method
    # The stored tensors are plain arrays of safetensors' dtypes (no pickle): float16 weights for DSQ.
    stored = load_file(path)
    assert {v.dtype for v in stored.values()} <= {np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.int64)}
    if kind == "dsq":
        assert all(v.dtype == np.float16 for v in stored.values())
    with pytest.raises(ValueError, match="lack"):
        from_tensors(kind, {})


def test_dsq_soft_quantiser_tends_to_hard_rounding():
    delta = 1.0 / 255
    rng = np.random.default_rng(4)
    # Points a quarter to a half interval from an interval's middle (where the soft staircase is steepest), the
    # grid points themselves, and values beyond the range (clipped).
    interval = rng.integers(0, 255, size=2000)
    offset = rng.uniform(0.25, 0.5, size=2000) * rng.choice([-1.0, 1.0], size=2000)
    x = torch.tensor(-0.5 + (interval + 0.5 + offset) * delta, dtype=torch.float64)
    grid = torch.tensor(-0.5 + np.arange(256) * delta, dtype=torch.float64)
    outside = torch.tensor([-3.0, -0.5001, 0.5001, 2.0], dtype=torch.float64)
    hard = dsq_hard(x)
    np.testing.assert_allclose(dsq_hard(x.numpy()), hard.numpy())  # numpy and torch alike
    errors = []
    for gamma in (0.5, 0.2, 0.05, 1e-2, 1e-4, 1e-8):
        errors.append(float((dsq_soft(x, gamma) - hard).abs().max()) / delta)
        # At every grid point soft == hard for any gamma: the soft staircase is continuous at interval edges.
        torch.testing.assert_close(dsq_soft(grid, gamma), grid, rtol=0, atol=1e-12)
        torch.testing.assert_close(dsq_soft(outside, gamma), dsq_hard(outside), rtol=0, atol=1e-12)
    assert errors[0] > 0.2  # gamma = 0.5 is genuinely soft (the baseline the limit is measured from)
    assert all(a > b for a, b in zip(errors, errors[1:]))
    assert errors[-1] < 1e-3  # within a thousandth of an interval of rounding at gamma = 1e-8
    # Its slope is what training uses: positive everywhere, 1 on average over whole intervals (it rises by one
    # interval width per interval), so the gradient is unbiased for the staircase's overall slope.
    u = torch.tensor(rng.uniform(-0.4, 0.4, size=20000), dtype=torch.float64, requires_grad=True)
    dsq_soft(u, 0.2).sum().backward()
    assert float(u.grad.min()) > 0 and abs(float(u.grad.mean()) - 1.0) < 0.05


def test_fit_codec_spends_the_byte_budget():
    rng = np.random.default_rng(5)
    x, _ = descriptors(400, 32, rng)
    assert fit_codec("uint8", x, 16).bytes_per_point == 16
    assert fit_codec("uint8", x, 100).bytes_per_point == 32  # at most D: no PCA
    assert fit_codec("pq", x, 10, iterations=2).bytes_per_point == 10
    dsq = fit_codec("dsq", x, 12, steps=2)
    assert isinstance(dsq, DSQCodec) and dsq.bytes_per_point == 12 and dsq.decode(dsq.encode(x)).shape == (400, 32)
    with pytest.raises(ValueError, match="unknown codec kind"):
        fit_codec("jpeg", x, 8)
    with pytest.raises(ValueError, match="uint8"):
        UInt8Codec.fit(x).decode(np.zeros((3, 5), np.uint8))
