"""Training of the DEM super-resolution models (thesis section 3.4): tiles cut at random from the training part of
high-resolution DEMs, turned by a random rotation or mirror, downsampled by a random integer factor (the thesis's
nearest-neighbour downsampling), and a loss on the elevations at random fine cells (EBCF-CDEM) or on every fine
cell (the fixed-scale CNN): squared error by default, the thesis's L1 as an option. The AdamW one-cycle loop is the
one every sceneloc head trains with (sceneloc.mapping.optimise.train_one_cycle)."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from sceneloc.dem.model import (CdemConfig, CdemModel, CdemNet, CnnConfig, CnnModel, FixedScaleCnn,
                                normalisation)
from sceneloc.dem.raster import Dem
from sceneloc.dem.sampling import (downsample_nearest, fine_cells_of_downsampled, interpolate,
                                   interpolate_points)
from sceneloc.mapping.optimise import train_one_cycle
from sceneloc.runtime.progress import make_progress

METHODS = ("cdem", "cnn")
LOSSES = ("l2", "l1")


@dataclass
class DemTrainConfig:
    """How a DEM super-resolution model is trained."""

    method: str = "cdem"
    """cdem (EBCF-CDEM, every scale in one model) or cnn (the fixed-scale baseline, one factor)."""
    scales: list[int] = field(default_factory=lambda: [2, 3, 4, 5, 6, 7, 8])
    """Integer downsampling factors drawn from, one per batch (the thesis draws x1-x8); cnn takes exactly one."""
    model: CdemConfig = field(default_factory=CdemConfig)
    """EBCF-CDEM's shape (method cdem)."""
    cnn: CnnConfig = field(default_factory=CnnConfig)
    """The CNN's shape (method cnn; its factor is scales[0])."""
    tile: int = 48
    """Side of a training tile in fine cells (cut down to a multiple of the factor)."""
    batch_tiles: int = 16
    """Tiles per step (thesis: 16)."""
    queries: int = 512
    """Fine cells per tile the EBCF-CDEM loss is taken at."""
    steps: int = 2000
    """Optimiser steps."""
    loss: str = "l2"
    """"l2": mean squared error, the square of the RMSE the benchmark reports; "l1": mean absolute error (the
    thesis's). With L1, the zero-initialised bias output sits at the median of a near-symmetric residual, where the
    gradient is a sign that averages to nothing: 1,000 steps left it at the bicubic base (docs/BENCHMARKS.md 15)."""
    lr_start: float = 1e-4
    """Learning rate at the first step."""
    lr_max: float = 2e-3
    """Peak learning rate of the one-cycle schedule (the thesis: Adam at 1e-4 for 300 epochs of a large set; this
    is for a few thousand steps)."""
    lr_end: float = 1e-6
    """Learning rate at the last step."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    hold_out: float = 0.0
    """Fraction of each DEM's columns, its eastern part, left out of training (for evaluation on unseen ground)."""
    seed: int = 0
    """Seed of the tile draws and the initial weights."""

    def validate(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}, not {self.method!r}")
        if not self.scales or any(not (isinstance(s, int) and 1 <= s <= self.tile // 2) for s in self.scales):
            raise ValueError(f"scales must be integers from 1 to tile / 2 = {self.tile // 2}, not {self.scales}")
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {', '.join(LOSSES)}, not {self.loss!r}")
        if self.method == "cnn" and len(self.scales) != 1:
            raise ValueError(f"the cnn baseline is trained for one scale, not {self.scales}")
        for name in ("tile", "batch_tiles", "queries", "steps"):
            if not getattr(self, name) >= 1:
                raise ValueError(f"{name} must be at least 1, not {getattr(self, name)}")
        if not self.tile >= 8:
            raise ValueError(f"tile must be at least 8 cells, not {self.tile}")
        if not (0 < self.lr_start and 0 < self.lr_max and 0 < self.lr_end and self.weight_decay >= 0):
            raise ValueError("learning rates must be positive and weight_decay not negative")
        if not 0 <= self.hold_out < 1:
            raise ValueError(f"hold_out must be in [0, 1), not {self.hold_out}")
        self.model.validate()
        self.cnn.validate()

    def to_dict(self) -> dict:
        return asdict(self)


def training_part(dem: Dem, hold_out: float) -> np.ndarray:
    """The (H, W') western columns of a DEM that training may use (all when hold_out is 0)."""
    keep = dem.shape[1] - int(round(dem.shape[1] * hold_out))
    return dem.elevation[:, :keep]


def held_out_part(dem: Dem, hold_out: float) -> np.ndarray:
    """The (H, W - W') eastern columns training left out."""
    return dem.elevation[:, dem.shape[1] - int(round(dem.shape[1] * hold_out)):]


class TileSampler:
    """Random fully valid tiles of the training grids, under a random rotation by a multiple of 90 degrees and an
    optional mirror (terrain has no preferred orientation; the cells are taken as square, as the thesis does)."""

    def __init__(self, grids: list[np.ndarray], rng: np.random.Generator, max_tries: int = 100):
        self.grids, self.rng, self.max_tries = grids, rng, max_tries
        self.weights = np.array([g.size for g in grids], dtype=np.float64)
        self.weights /= self.weights.sum()

    def tile(self, size: int) -> np.ndarray:
        """(size, size) float64 elevations."""
        for _ in range(self.max_tries):
            grid = self.grids[self.rng.choice(len(self.grids), p=self.weights)]
            r = self.rng.integers(0, grid.shape[0] - size + 1)
            c = self.rng.integers(0, grid.shape[1] - size + 1)
            tile = grid[r:r + size, c:c + size]
            if np.isfinite(tile).all():
                tile = np.rot90(tile, self.rng.integers(4))
                return np.ascontiguousarray(tile[:, ::-1] if self.rng.integers(2) else tile, dtype=np.float64)
        raise ValueError(f"no {size}x{size} tile without missing values found in {self.max_tries} tries")


def _cdem_batch(sampler: TileSampler, config: DemTrainConfig, rng: np.random.Generator):
    """One EBCF-CDEM batch as tensors: (lr (B,1,h,w), query (B,Q,2), cell (B,), base (B,Q), target (B,Q))."""
    factor = int(rng.choice(config.scales))
    size = factor * (config.tile // factor)
    coords = fine_cells_of_downsampled(size, factor)
    lrs, queries, bases, targets = [], [], [], []
    for _ in range(config.batch_tiles):
        hr = sampler.tile(size)
        lr = downsample_nearest(hr, factor)
        mean, scale = normalisation(lr)
        cells = rng.integers(0, size, size=(config.queries, 2))
        u, v = coords[cells[:, 0]], coords[cells[:, 1]]
        lrs.append((lr - mean) / scale)
        queries.append(np.stack([u, v], -1))
        bases.append((interpolate_points(lr, u, v, config.model.base) - mean) / scale)
        targets.append((hr[cells[:, 0], cells[:, 1]] - mean) / scale)
    as_tensor = lambda a: torch.from_numpy(np.asarray(a, dtype=np.float32))  # noqa: E731
    return (as_tensor(lrs)[:, None], as_tensor(queries), torch.full((config.batch_tiles,), 1.0 / factor),
            as_tensor(bases), as_tensor(targets))


def _cnn_batch(sampler: TileSampler, config: DemTrainConfig):
    """One CNN batch: (bicubic upsampling (B,1,S,S), target (B,1,S,S)), normalised per tile."""
    factor = config.scales[0]
    size = factor * (config.tile // factor)
    coords = fine_cells_of_downsampled(size, factor)
    ups, targets = [], []
    for _ in range(config.batch_tiles):
        hr = sampler.tile(size)
        lr = downsample_nearest(hr, factor)
        mean, scale = normalisation(lr)
        ups.append((interpolate(lr, coords, coords, "bicubic") - mean) / scale)
        targets.append((hr - mean) / scale)
    return (torch.from_numpy(np.asarray(ups, dtype=np.float32))[:, None],
            torch.from_numpy(np.asarray(targets, dtype=np.float32))[:, None])


def train_dem_model(dems: list[Dem], config: DemTrainConfig, names: list[str] | None = None,
                    show_progress: bool = True) -> CdemModel | CnnModel:
    """Train the model `config.method` names on the training part of `dems`. Deterministic for a given seed and
    torch thread count."""
    config.validate()
    grids = [training_part(d, config.hold_out) for d in dems]
    size = max(f * (config.tile // f) for f in config.scales)  # the largest tile any factor cuts
    if not any(min(g.shape) >= size for g in grids):
        raise ValueError(f"no training DEM has {size}x{size} cells to cut tiles from")
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    sampler = TileSampler([g for g in grids if min(g.shape) >= size], rng)
    error = (lambda d: d.square().mean()) if config.loss == "l2" else (lambda d: d.abs().mean())
    if config.method == "cdem":
        net = CdemNet(config.model)

        def batch_loss(_threshold):
            lr, query, cell, base, target = _cdem_batch(sampler, config, rng)
            return error(net(lr, query, cell, base) - target), {}
    else:
        net = FixedScaleCnn(CnnConfig(**{**config.cnn.to_dict(), "factor": config.scales[0]}))

        def batch_loss(_threshold):
            up, target = _cnn_batch(sampler, config)
            return error(net(up) - target), {}

    t0 = time.perf_counter()
    net.train()
    with make_progress(show_progress) as progress:
        loss, _, history = train_one_cycle(
            [{"params": list(net.parameters())}], config.weight_decay, config.steps,
            (config.lr_start, config.lr_max, config.lr_end), batch_loss, lambda t: 0.0, progress,
            f"training {config.method}", info=lambda loss, stats, thr: f"{config.loss.upper()} {loss:.4f}")
    training = {"config": config.to_dict(), "dems": names or [], "final_loss": loss,
                "train_s": time.perf_counter() - t0, "threads": torch.get_num_threads(), "history": history}
    return CdemModel(net, training) if config.method == "cdem" else CnnModel(net, training)
