"""Quantised point descriptors of structure-based maps (SceneSqueezer's "Feature Quantization").

This module owns the descriptor codecs: a map stores each 3D point's descriptor as `bytes_per_point` uint8 codes plus
one small codec (a few tensors), and localisation decodes the codes once and matches query descriptors against them
by dot product. Three kinds behind one interface:

- "uint8": optional PCA to `dims` (centred, fit by SVD), then per-dimension affine 8-bit quantisation (min/max of
  each dimension over the fit set, round to nearest).
- "pq": product quantisation; `subspaces` contiguous groups of dimensions, a 256-centre k-means per group, one byte
  per group; decoding concatenates the chosen centres.
- "dsq": the paper's auto-encoder with a Differentiable Soft Quantization bottleneck (Algorithm 2; Gong et al.,
  CVPR 2019): encoder MLP D -> 256 (ReLU) -> dims, sigmoid(Linear) - 0.5 into (-0.5, 0.5), 8-bit soft quantiser
  in training and hard rounding at inference, decoder dims -> 256 (ReLU) -> D reconstructing the descriptor.

Every codec has encode (N, D) float32 -> (N, B) uint8, decode (N, B) uint8 -> (N, D') float32 unit rows,
encode_query (N, D) -> (N, D') unit rows in the space decode returns (D' = D except for PCA, where D' = dims),
bytes_per_point (B), tensors() / from_tensors() (plain numpy arrays for safetensors, no pickle) and a fit function.
fit_codec(kind, x, bytes_per_point) picks each kind's parameters for a byte budget.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

CODEC_KINDS = ("uint8", "pq", "dsq")
"""The codec kinds, as named in map files."""

LEVELS = 255
"""The largest code of one byte; codes are 0..LEVELS."""


def unit_rows(x: np.ndarray) -> np.ndarray:
    """(N, D) -> (N, D) float32 rows of unit length; all-zero rows stay zero (no NaN from a degenerate code)."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, np.float32(1e-12))


def _check_descriptors(x, what: str = "descriptors", allow_empty: bool = False) -> np.ndarray:
    """x as a C-contiguous (N, D) float32 array; ValueError for other shapes, no rows (unless allow_empty: a query
    image without keypoints) or non-finite values."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[0] < (0 if allow_empty else 1) or x.shape[1] < 1:
        raise ValueError(f"{what} must be a non-empty (N, D) array, not shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{what} contain NaN or infinite values")
    return x


def _check_codes(codes, width: int) -> np.ndarray:
    """codes as an (N, width) uint8 array; ValueError otherwise."""
    codes = np.asarray(codes)
    if codes.dtype != np.uint8 or codes.ndim != 2 or codes.shape[1] != width:
        raise ValueError(f"codes must be an (N, {width}) uint8 array, not {codes.dtype} of shape {codes.shape}")
    return codes


def _tensor(tensors: dict, name: str, kind: str) -> np.ndarray:
    """tensors[name], or a ValueError naming the codec kind when it is missing."""
    if name not in tensors:
        raise ValueError(f"{kind} codec tensors lack {name!r} (have {sorted(tensors)})")
    return np.asarray(tensors[name])


# ----------------------------------------------------------------------------------------------------- uint8 (+PCA)

@dataclass(frozen=True, eq=False)
class UInt8Codec:
    """Optional PCA, then per-dimension affine 8-bit codes: code = round((y - lo) / step), y = lo + code * step.

    lo, step: (dims,) float32, the minimum of each (projected) dimension over the fit set and (max - min) / 255.
    mean, basis: (D,) and (D, dims) float32, the PCA centre and orthonormal directions; None without PCA (dims = D).
    Values outside the fit set's range saturate at code 0 or 255.
    """

    lo: np.ndarray
    step: np.ndarray
    mean: np.ndarray | None = None
    basis: np.ndarray | None = None
    kind: ClassVar[str] = "uint8"

    @classmethod
    def fit(cls, x: np.ndarray, dims: int | None = None) -> UInt8Codec:
        """Fit on descriptors x (N, D); dims < D projects onto the first `dims` principal directions of the centred
        x (SVD), dims = D or None quantises x itself."""
        x = _check_descriptors(x)
        n, d = x.shape
        dims = d if dims is None else int(dims)
        if not 1 <= dims <= d:
            raise ValueError(f"uint8 dims must be in 1..{d}, not {dims}")
        mean = basis = None
        if dims < d:
            mean64 = x.mean(axis=0, dtype=np.float64)
            # float64 SVD: the directions of small components are ill-conditioned in float32 for large N.
            _, _, vt = np.linalg.svd(x.astype(np.float64) - mean64, full_matrices=False)
            basis = np.zeros((d, dims), dtype=np.float32)
            basis[:, :min(dims, len(vt))] = vt[:dims].T  # N < dims: the missing directions carry nothing (zeros)
            # Stored as float16 (half the bytes); rounded here so that codes made now decode alike after loading.
            basis = basis.astype(np.float16).astype(np.float32)
            mean = mean64.astype(np.float16).astype(np.float32)
        codec = cls(lo=np.zeros(dims, np.float32), step=np.zeros(dims, np.float32), mean=mean, basis=basis)
        y = codec.project(x)
        lo = y.min(axis=0)
        step = ((y.max(axis=0).astype(np.float64) - lo) / LEVELS).astype(np.float32)
        return cls(lo=lo, step=step, mean=mean, basis=basis)

    @property
    def dims(self) -> int:
        return len(self.lo)

    @property
    def bytes_per_point(self) -> int:
        return self.dims

    def project(self, x: np.ndarray) -> np.ndarray:
        """(N, D) -> (N, dims) float32: the centred PCA coordinates, or x itself without PCA."""
        x = _check_descriptors(x)
        if self.basis is None:
            return x
        return (x - self.mean) @ self.basis

    def dequantise(self, codes: np.ndarray) -> np.ndarray:
        """(N, dims) uint8 -> (N, dims) float32 coordinates lo + code * step (not renormalised)."""
        codes = _check_codes(codes, self.dims)
        return self.lo + codes.astype(np.float32) * self.step

    def reconstruct(self, codes: np.ndarray) -> np.ndarray:
        """(N, dims) uint8 -> (N, D) float32 descriptors in the input space (mean + coordinates @ basis^T), not
        renormalised: what the round-trip error is measured on."""
        y = self.dequantise(codes)
        return y if self.basis is None else self.mean + y @ self.basis.T

    def encode(self, x: np.ndarray) -> np.ndarray:
        """(N, D) float32 -> (N, dims) uint8."""
        y = self.project(x).astype(np.float64)
        # A constant dimension (step 0) codes as 0 and decodes to its constant.
        safe_step = np.where(self.step > 0, self.step.astype(np.float64), 1.0)
        return np.clip(np.rint((y - self.lo) / safe_step), 0, LEVELS).astype(np.uint8)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """(N, dims) uint8 -> (N, D) float32 unit rows: the reconstructions in the input space, compared with the
        query's own unit descriptors (encode_query) by dot product. Not the centred PCA coordinates: SIFT shares a
        large common component (|mean|^2 ~ 0.76), so angles between centred coordinates are about twice the raw
        ones and COLMAP's matching thresholds (0.7 rad, ratio 0.8), made for raw angles, would reject true
        matches."""
        return unit_rows(self.reconstruct(codes))

    def encode_query(self, x: np.ndarray) -> np.ndarray:
        """(N, D) -> (N, D) float32 unit rows: the query descriptors as they are (decode reconstructs in their
        space)."""
        return unit_rows(_check_descriptors(x, allow_empty=True))

    def tensors(self) -> dict[str, np.ndarray]:
        out = {"lo": self.lo, "step": self.step}
        if self.basis is not None:
            out.update(mean=self.mean.astype(np.float16), basis=self.basis.astype(np.float16))  # exact: see fit
        return out

    @classmethod
    def from_tensors(cls, tensors: dict) -> UInt8Codec:
        lo = _tensor(tensors, "lo", cls.kind).astype(np.float32)
        step = _tensor(tensors, "step", cls.kind).astype(np.float32)
        if "basis" in tensors:
            mean = _tensor(tensors, "mean", cls.kind).astype(np.float32)
            basis = _tensor(tensors, "basis", cls.kind).astype(np.float32)
            if basis.shape != (len(mean), len(lo)):
                raise ValueError(f"uint8 codec basis has shape {basis.shape}, expected {(len(mean), len(lo))}")
            return cls(lo=lo, step=step, mean=mean, basis=basis)
        return cls(lo=lo, step=step)


# ------------------------------------------------------------------------------------------- product quantisation

def _nearest(x: np.ndarray, centres: np.ndarray, budget: int = 1 << 18) -> np.ndarray:
    """Index of the nearest centre (squared Euclidean) in each of S independent problems: x (S, N, w) float32,
    centres (S, K, w) float32 -> (S, N) int64. Chunked over N so that the (S, chunk, K) distances stay within
    `budget` elements (1 MB): a cache-sized block is several times faster than one large array, and a large map's
    distances never sit in memory at once."""
    s, n, _ = x.shape
    # |x|^2 is the same for every centre of a row, so |c|^2 - 2 x.c has the same argmin as the distance.
    c_sq = (centres ** 2).sum(axis=2)[:, None, :]
    twice_t = np.ascontiguousarray((2 * centres).transpose(0, 2, 1))
    out = np.empty((s, n), dtype=np.int64)
    chunk = max(1, budget // max(s * centres.shape[1], 1))
    for start in range(0, n, chunk):
        dist = np.matmul(x[:, start:start + chunk], twice_t)
        np.subtract(c_sq, dist, out=dist)
        out[:, start:start + chunk] = dist.argmin(axis=2)
    return out


def kmeans(x: np.ndarray, k: int, iterations: int, rng: np.random.Generator) -> np.ndarray:
    """S independent k-means, run side by side: x (S, N, w) float32 -> centres (S, k, w) float32. k-means++ seeding,
    then `iterations` Lloyd steps (distances in float32, sums in float64). A centre left without points moves to
    the point farthest from its centre: a dead centre would waste one of the 256 codes."""
    s, n, w = x.shape
    rows = np.arange(s)
    columns = np.ascontiguousarray(x.transpose(2, 0, 1))  # (w, S, N): a sum over w of contiguous planes is fast

    def squared_distance(point: np.ndarray) -> np.ndarray:  # point (S, w) -> (S, N)
        return sum((columns[c] - point[:, c, None]) ** 2 for c in range(w))

    centres = np.empty((s, k, w), dtype=np.float32)
    centres[:, 0] = x[rows, rng.integers(n, size=s)]
    d2 = squared_distance(centres[:, 0])
    for j in range(1, k):
        cumulative = np.cumsum(d2, axis=1, dtype=np.float64)
        # Every point already on a centre (fewer distinct points than k): r = 0 picks the last point, a duplicate.
        r = rng.random(s) * cumulative[:, -1]
        pick = np.minimum([np.searchsorted(cumulative[i], r[i], side="right") for i in range(s)], n - 1)
        centres[:, j] = x[rows, pick]
        np.minimum(d2, squared_distance(centres[:, j]), out=d2)
    flat = (rows[:, None] * k)  # label offsets: problem i's centres are bins i*k .. i*k + k - 1
    for _ in range(iterations):
        labels = _nearest(x, centres)
        bins = (labels + flat).ravel()
        counts = np.bincount(bins, minlength=s * k).reshape(s, k)
        sums = np.stack([np.bincount(bins, weights=x[:, :, c].ravel(), minlength=s * k) for c in range(w)], axis=1)
        sums = sums.reshape(s, k, w)
        filled = counts > 0
        centres[filled] = (sums[filled] / counts[filled][:, None]).astype(np.float32)
        for i in np.flatnonzero(~filled.all(axis=1)):
            empty = np.flatnonzero(~filled[i])
            far = np.argsort(-((x[i] - centres[i, labels[i]]) ** 2).sum(axis=1))[:len(empty)]
            centres[i, empty] = x[i, far]
    return centres


@dataclass(frozen=True, eq=False)
class PQCodec:
    """Product quantisation: dimensions bounds[j]:bounds[j+1] form subspace j, coded by the index of its nearest
    centre among centres[:, bounds[j]:bounds[j+1]].

    centres: (K, D) float32, K <= 256 centres of every subspace side by side (column block j = subspace j).
    bounds: (subspaces + 1,) int64, increasing from 0 to D (np.array_split's blocks: widths differ by at most 1).
    """

    centres: np.ndarray
    bounds: np.ndarray
    kind: ClassVar[str] = "pq"

    @classmethod
    def fit(cls, x: np.ndarray, subspaces: int, seed: int = 0, iterations: int = 15) -> PQCodec:
        """Fit on descriptors x (N, D): one k-means with min(256, N) centres per subspace, seeded by `seed`."""
        x = _check_descriptors(x)
        n, d = x.shape
        if not 1 <= subspaces <= d:
            raise ValueError(f"pq subspaces must be in 1..{d}, not {subspaces}")
        bounds = np.concatenate([[0], np.cumsum([len(b) for b in np.array_split(np.arange(d), subspaces)])])
        k = min(LEVELS + 1, n)
        blocks = PQCodec._blocks(x, bounds)
        centres_blocks = kmeans(blocks, k, iterations, np.random.default_rng(seed))
        centres = np.concatenate([c[:, :hi - lo] for c, lo, hi in zip(centres_blocks, bounds[:-1], bounds[1:])], axis=1)
        # Stored as float16 (half the bytes of the codebook, which dominates small maps); rounded here so that
        # codes and decoded descriptors are the same before and after saving.
        return cls(centres=centres.astype(np.float16).astype(np.float32), bounds=bounds.astype(np.int64))

    @property
    def subspaces(self) -> int:
        return len(self.bounds) - 1

    @property
    def bytes_per_point(self) -> int:
        return self.subspaces

    def encode(self, x: np.ndarray) -> np.ndarray:
        """(N, D) float32 -> (N, subspaces) uint8."""
        x = _check_descriptors(x)
        return _nearest(self._blocks(x, self.bounds), self._blocks(self.centres, self.bounds)).T.astype(np.uint8)

    @staticmethod
    def _blocks(x: np.ndarray, bounds: np.ndarray) -> np.ndarray:
        """(N, D) -> (subspaces, N, max width) float32: the column blocks, zero-padded to one width (a zero column in
        both points and centres adds nothing to a distance), so that all subspaces are computed together."""
        widths = np.diff(bounds)
        out = np.zeros((len(widths), len(x), int(widths.max())), dtype=np.float32)
        for j, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])):
            out[j, :, :hi - lo] = x[:, lo:hi]
        return out

    def dequantise(self, codes: np.ndarray) -> np.ndarray:
        """(N, subspaces) uint8 -> (N, D) float32: the chosen centres side by side (not renormalised)."""
        codes = _check_codes(codes, self.subspaces)
        if codes.size and int(codes.max()) >= len(self.centres):
            raise ValueError(f"pq code {int(codes.max())} is beyond the codec's {len(self.centres)} centres")
        subspace_of_dim = np.repeat(np.arange(self.subspaces), np.diff(self.bounds))
        return self.centres[codes[:, subspace_of_dim].astype(np.int64), np.arange(self.centres.shape[1])]

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """(N, subspaces) uint8 -> (N, D) float32 unit rows."""
        return unit_rows(self.dequantise(codes))

    def encode_query(self, x: np.ndarray) -> np.ndarray:
        """(N, D) -> (N, D) unit rows: queries are compared unquantised with the decoded centres."""
        return unit_rows(_check_descriptors(x, allow_empty=True))

    def tensors(self) -> dict[str, np.ndarray]:
        return {"centres": self.centres.astype(np.float16), "bounds": self.bounds}  # exact: see fit

    @classmethod
    def from_tensors(cls, tensors: dict) -> PQCodec:
        centres = _tensor(tensors, "centres", cls.kind).astype(np.float32)
        bounds = _tensor(tensors, "bounds", cls.kind).astype(np.int64)
        if bounds.ndim != 1 or bounds[0] != 0 or bounds[-1] != centres.shape[1] or np.any(np.diff(bounds) < 1):
            raise ValueError(f"pq codec bounds {bounds.tolist()} do not split {centres.shape[1]} dimensions")
        return cls(centres=centres, bounds=bounds)


# ------------------------------------------------------------------------------------ DSQ auto-encoder (the paper)

def dsq_soft(x, gamma, lower: float = -0.5, upper: float = 0.5, bits: int = 8):
    """Algorithm 2 (DSQ's soft quantiser) on a torch tensor x, values in value units (not codes): clip to
    [lower, upper], find the interval of width delta = (upper - lower) / (2^bits - 1) holding x, and replace the
    staircase inside it by s * tanh(k (x - m)) around the interval's middle m. gamma in (0, 1) (a float or a tensor)
    sets the softness: as gamma -> 0 the output tends to the nearest grid point lower + j * delta (dsq_hard).

    k = log(2 / gamma - 1) / delta as in DSQ's Eq. 4; the paper's Algorithm 2 prints "log(2 / gamma) - 1", but
    only DSQ's form makes s * tanh(k * delta / 2) = 1 with s = 1 / (1 - gamma), i.e. the soft output meets the grid
    points exactly at the interval edges (a continuous function of x).
    """
    import torch

    levels = 2 ** bits - 1
    delta = (upper - lower) / levels
    x = x + torch.relu(lower - x)
    x = x - torch.relu(x - upper)
    # floor == trunc for x >= lower; x == upper belongs to the last interval, not to one past the end.
    i = torch.clamp(torch.floor((x - lower) / delta), 0, levels - 1).detach()
    m = lower + (i + 0.5) * delta
    gamma = torch.as_tensor(gamma, dtype=x.dtype)
    s = 1.0 / (1.0 - gamma)
    k = torch.log(2.0 / gamma - 1.0) / delta
    phi = s * torch.tanh(k * (x - m))
    return lower + delta * (i + 0.5 * (phi + 1.0))


def dsq_hard(x, lower: float = -0.5, upper: float = 0.5, bits: int = 8):
    """The inference quantiser (gamma -> 0 of dsq_soft): x clipped to [lower, upper], rounded to the nearest of the
    2^bits grid points lower + j * delta. Works on numpy arrays and torch tensors alike; value units."""
    delta = (upper - lower) / (2 ** bits - 1)
    clipped = x.clip(lower, upper)
    return lower + delta * ((clipped - lower) / delta).round()


_DSQ_LAYERS = ("encoder.0", "encoder.1", "bottleneck", "decoder.0", "decoder.1")
"""The five linear layers, in order: encoder D -> hidden (ReLU) -> dims, the DSQ layer's dims -> dims before its
sigmoid, decoder dims -> hidden (ReLU) -> D."""


@dataclass(frozen=True, eq=False)
class DSQCodec:
    """The auto-encoder with DSQ bottleneck, inference in numpy (no torch at localisation):
    code = round(255 * sigmoid(bottleneck(encoder(x)))), decode = decoder(code / 255 - 0.5) renormalised, in the
    descriptors' own space (D' = D).

    weights: "<layer>.weight" (out, in) and "<layer>.bias" (out,) float16 for each of _DSQ_LAYERS; float16 is what
    is stored and also what computes here (cast to float32), so a loaded codec decodes bit-identically to the fitted
    one.
    """

    weights: dict[str, np.ndarray]
    kind: ClassVar[str] = "dsq"

    def _linear(self, name: str, x: np.ndarray) -> np.ndarray:
        return x @ self.weights[f"{name}.weight"].astype(np.float32).T + self.weights[f"{name}.bias"].astype(np.float32)

    @property
    def input_dims(self) -> int:
        return self.weights["encoder.0.weight"].shape[1]

    @property
    def dims(self) -> int:
        return self.weights["bottleneck.weight"].shape[0]

    @property
    def bytes_per_point(self) -> int:
        return self.dims

    def bottleneck(self, x: np.ndarray) -> np.ndarray:
        """(N, D) -> (N, dims) float32 in (-0.5, 0.5): sigmoid(Linear(encoder(x))) - 0.5, before quantisation."""
        x = _check_descriptors(x)
        h = self._linear("encoder.1", np.maximum(self._linear("encoder.0", x), 0))
        return (1.0 / (1.0 + np.exp(-self._linear("bottleneck", h))) - 0.5).astype(np.float32)

    def encode(self, x: np.ndarray) -> np.ndarray:
        """(N, D) float32 -> (N, dims) uint8: the bottleneck rounded to 8 bits (dsq_hard, as codes)."""
        return np.clip(np.rint((self.bottleneck(x).astype(np.float64) + 0.5) * LEVELS), 0, LEVELS).astype(np.uint8)

    def dequantise(self, codes: np.ndarray) -> np.ndarray:
        """(N, dims) uint8 -> (N, D) float32: the decoder's output (not renormalised)."""
        codes = _check_codes(codes, self.dims)
        h = np.maximum(self._linear("decoder.0", codes.astype(np.float32) / LEVELS - 0.5), 0)
        return self._linear("decoder.1", h)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """(N, dims) uint8 -> (N, D) float32 unit rows."""
        return unit_rows(self.dequantise(codes))

    def encode_query(self, x: np.ndarray) -> np.ndarray:
        """(N, D) -> (N, D) unit rows: the decoder reconstructs descriptors, so queries are compared as they are
        (asymmetric matching; passing them through the auto-encoder as well lost 6 to 8 points of 64-byte
        matching accuracy on the tests' synthetic descriptors)."""
        return unit_rows(_check_descriptors(x, allow_empty=True))

    def tensors(self) -> dict[str, np.ndarray]:
        return dict(self.weights)

    @classmethod
    def from_tensors(cls, tensors: dict) -> DSQCodec:
        weights = {}
        for layer in _DSQ_LAYERS:
            for part in ("weight", "bias"):
                weights[f"{layer}.{part}"] = _tensor(tensors, f"{layer}.{part}", cls.kind).astype(np.float16)
        shapes = [weights[f"{layer}.weight"].shape for layer in _DSQ_LAYERS]
        if any(a[0] != b[1] for a, b in zip(shapes[:-1], shapes[1:])) or shapes[-1][0] != shapes[0][1]:
            raise ValueError(f"dsq codec layer shapes do not chain: {shapes}")
        return cls(weights=weights)


def fit_dsq(x: np.ndarray, dims: int = 128, steps: int = 2000, seed: int = 0, hidden: int = 256,
            batch_size: int = 512, lr: float = 3e-3, gamma_start: float = 0.5, gamma_end: float = 0.01) -> DSQCodec:
    """Train the DSQ auto-encoder on descriptors x (N, D) (normally the map's own descriptors) with Adam on
    minibatches of `batch_size` rows (epochs of fresh permutations), lr decaying by a cosine to lr / 20.

    Loss: mean(1 - cos(decoded_i, x_i)), the cosine reconstruction of each descriptor, nothing else. A second term
    keeping each decoded row's dot products with the batch's other descriptors (what matching ranks by) did not help
    64-byte matching on the tests' synthetic descriptors (-0.6 and -1.1 points after 500 and 1500 steps) and costs
    1.5 times the time.
    Quantiser: dsq_soft with a fixed schedule, gamma decaying geometrically from gamma_start to gamma_end over the
    steps, not a learnable gamma: a learnt gamma drifts softer under a reconstruction loss (0.2 -> 0.21 in 500
    steps there), away from the hard rounding used at inference. At 8 bits the choice hardly matters: schedule,
    learnt gamma and no quantiser at all in training were within 2 points of each other.
    Architecture: the five layers of _DSQ_LAYERS with a ReLU after the two hidden layers only; one on the encoder's
    dims output as well (before the DSQ layer's Linear) cost 2 to 4 points there.
    Inputs are scaled by sqrt(D) in training (unit descriptors' coordinates then have unit variance, which the
    default initialisation assumes; it took about a third of the steps for the same accuracy), and the scale is
    folded into encoder.0's weights of the result.
    The codec fits the descriptors it is given, not their distribution: on 2,000 synthetic descriptors, 2000
    steps instead of 400 raised matching accuracy on them (0.93 -> 0.99 at 64 bytes) but lowered it for a codec fit
    on other points of the same distribution at 32 bytes (0.57 -> 0.47); fit it on the map's own descriptors.
    Initial weights come from numpy's generator seeded by `seed` (torch's global generator is untouched); float32
    training, float16 result; the thread count is the caller's (bit-identical weights for the same seed and thread
    count).
    """
    import torch

    x = _check_descriptors(x)
    n, d = x.shape
    if dims < 1 or steps < 1:
        raise ValueError(f"dsq dims and steps must be >= 1, not {dims} and {steps}")
    rng = np.random.default_rng(seed)
    sizes = [(hidden, d), (dims, hidden), (dims, dims), (hidden, dims), (d, hidden)]
    names = [f"{layer}.{part}" for layer in _DSQ_LAYERS for part in ("weight", "bias")]
    params = []
    for out_dims, in_dims in sizes:
        # torch.nn.Linear's default initialisation, U(-1/sqrt(fan_in), 1/sqrt(fan_in)), from our own generator.
        bound = 1.0 / math.sqrt(in_dims)
        params.append(torch.tensor(rng.uniform(-bound, bound, (out_dims, in_dims)), dtype=torch.float32))
        params.append(torch.tensor(rng.uniform(-bound, bound, out_dims), dtype=torch.float32))
    for p in params:
        p.requires_grad_(True)
    w = dict(zip(names, params))

    def linear(name, h):
        return torch.nn.functional.linear(h, w[f"{name}.weight"], w[f"{name}.bias"])

    in_scale = math.sqrt(d)
    data = torch.from_numpy(unit_rows(x))
    optimiser = torch.optim.Adam(params, lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=steps, eta_min=lr / 20)
    batch = min(batch_size, n)
    order, cursor = rng.permutation(n), 0
    for step in range(steps):
        gamma = gamma_start * (gamma_end / gamma_start) ** (step / max(steps - 1, 1))
        if cursor + batch > n:
            order, cursor = rng.permutation(n), 0
        rows = data[torch.from_numpy(order[cursor:cursor + batch])]
        cursor += batch
        h = linear("encoder.1", torch.relu(linear("encoder.0", rows * in_scale)))
        z = dsq_soft(torch.sigmoid(linear("bottleneck", h)) - 0.5, gamma)
        y = linear("decoder.1", torch.relu(linear("decoder.0", z)))
        loss = (1.0 - torch.nn.functional.cosine_similarity(y, rows, dim=1)).mean()
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
    weights = {name: p.detach().numpy().copy() for name, p in w.items()}
    weights["encoder.0.weight"] *= in_scale
    return DSQCodec(weights={name: v.astype(np.float16) for name, v in weights.items()})


# --------------------------------------------------------------------------------------------------- one interface

Codec = UInt8Codec | PQCodec | DSQCodec
_CLASSES = {"uint8": UInt8Codec, "pq": PQCodec, "dsq": DSQCodec}


def fit_codec(kind: str, x: np.ndarray, bytes_per_point: int, seed: int = 0, **options) -> Codec:
    """A codec of `kind` fit on descriptors x (N, D) for a budget of bytes_per_point bytes: uint8 -> PCA to
    dims = bytes (no PCA when bytes >= D), pq -> subspaces = min(bytes, D), dsq -> dims = bytes. `options` go to
    the kind's fit (e.g. steps= for dsq, iterations= for pq). The codec's bytes_per_point is at most the budget."""
    if kind not in _CLASSES:
        raise ValueError(f"unknown codec kind {kind!r}; known: {', '.join(CODEC_KINDS)}")
    if bytes_per_point < 1:
        raise ValueError(f"bytes_per_point must be >= 1, not {bytes_per_point}")
    x = _check_descriptors(x)
    d = x.shape[1]
    if kind == "uint8":
        return UInt8Codec.fit(x, dims=min(bytes_per_point, d), **options)
    if kind == "pq":
        return PQCodec.fit(x, subspaces=min(bytes_per_point, d), seed=seed, **options)
    return fit_dsq(x, dims=bytes_per_point, seed=seed, **options)


def from_tensors(kind: str, tensors: dict) -> Codec:
    """The codec of `kind` ("uint8", "pq", "dsq") from its tensors() (e.g. read back from a safetensors file)."""
    if kind not in _CLASSES:
        raise ValueError(f"unknown codec kind {kind!r}; known: {', '.join(CODEC_KINDS)}")
    return _CLASSES[kind].from_tensors(tensors)

