"""The super-resolution models of `sceneloc dem` and their files.

- CdemNet, EBCF-CDEM (thesis chapter 3, Figure 3.3): an EDSR-baseline encoder turns the low-resolution DEM into a
  grid of latent codes; at a continuous query position the codes of the four surrounding samples are blended with
  bilinear weights (Eq. 3.2) and, with a positional encoding (Eq. 3.4) of where the query lies and the query's cell
  size, go through an MLP decoder that predicts the elevation bias from a base interpolation of the known samples
  (Eq. 3.3; the thesis's base is the nearest sample) or, for the ablation, the elevation itself. One model serves
  every scale.
- FixedScaleCnn, the fixed-scale baseline: a residual CNN on the bicubic upsampling, trained for one factor (the role
  TfaSR plays in the thesis's tables).
- Interpolation: bicubic, bilinear or nearest alone.

All three predict through `SuperResolver.predict(lr, u, v)`: the (len(u), len(v)) elevations at the LR index
coordinates u x v (sceneloc.dem.sampling). Elevations are normalised per input (subtract the mean, divide by the
standard deviation, at least MIN_SCALE_M) so that one model serves terrains of any height and relief; large inputs
are processed in tiles of the training tiles' ground size (tile_core) with HALO samples of context, each normalised
by its own samples, so that a model trained on tiles sees tiles."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from sceneloc import __version__
from sceneloc.dem.sampling import BASES, interpolate
from sceneloc.maps.files import config_from_metadata, load_map_file, metadata_field, save_map_file

MIN_SCALE_M = 1.0
"""Smallest normalising standard deviation, metres: a flat tile is not blown up into noise."""
TRAIN_TILE = 48
"""Fine cells a side of the training tiles (DemTrainConfig.tile's default): a tile of a large input covers as much
ground, so the model sees what it was trained on: 48 / scale coarse samples (24 at x2, 6 at x8)."""
HALO = 6
"""Samples of context around each tile of a large input."""


def tile_core(cell: float) -> int:
    """Coarse samples a side of the tiles of a large input upsampled by 1 / cell."""
    return int(np.clip(round(TRAIN_TILE * cell), 4, TRAIN_TILE // 2))
QUERY_CHUNK = 65536
"""Queries decoded at a time (bounds memory on large outputs)."""
CDEM_FORMAT, CNN_FORMAT, FORMAT_VERSION = "sceneloc-cdem", "sceneloc-dem-cnn", 1


@dataclass
class CdemConfig:
    """Shape of an EBCF-CDEM model."""

    channels: int = 32
    """Feature channels of the encoder (EDSR-baseline: 64; 32 trains 4x faster on a CPU)."""
    blocks: int = 8
    """Residual blocks of the encoder (EDSR-baseline: 16; the coarse tiles here are at most 24 samples wide)."""
    decoder_width: int = 256
    """Hidden width of the decoder MLP (thesis: 256)."""
    decoder_layers: int = 5
    """Layers of the decoder MLP, the last one giving the output (thesis: 5)."""
    positional_encoding: bool = True
    """Encode the query's offset from its nearest sample with sines and cosines (Eq. 3.4); off: the raw offset."""
    frequencies: int = 6
    """L of Eq. 3.4: frequencies 2^0 .. 2^(L-1) (times pi) of the offset in [-1, 1] (one coarse cell). The thesis
    encodes the position in its tile with L = 16; the offset from the nearest sample needs periods from two cells
    down to a fine cell at x8 only, and does not tie the model to a tile size."""
    target: str = "bias"
    """"bias": predict the elevation minus the base interpolation (Eq. 3.3); "elevation": the elevation itself."""
    base: str = "bicubic"
    """The base the bias is measured from: bicubic, bilinear or nearest (the thesis's choice: the nearest known
    sample; measured worse here, docs/BENCHMARKS.md)."""

    def validate(self) -> None:
        for name in ("channels", "blocks", "decoder_width", "frequencies"):
            if not getattr(self, name) >= 1:
                raise ValueError(f"{name} must be at least 1, not {getattr(self, name)}")
        if not self.decoder_layers >= 2:
            raise ValueError(f"decoder_layers must be at least 2, not {self.decoder_layers}")
        if self.target not in ("bias", "elevation"):
            raise ValueError(f"target must be bias or elevation, not {self.target!r}")
        if self.base not in BASES:
            raise ValueError(f"base must be one of {', '.join(BASES)}, not {self.base!r}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class CnnConfig:
    """Shape of the fixed-scale CNN baseline."""

    factor: int = 4
    """The one upsampling factor it is trained for."""
    channels: int = 32
    """Feature channels."""
    blocks: int = 4
    """Residual blocks."""

    def validate(self) -> None:
        for name in ("factor", "channels", "blocks"):
            if not getattr(self, name) >= 1:
                raise ValueError(f"{name} must be at least 1, not {getattr(self, name)}")

    def to_dict(self) -> dict:
        return asdict(self)


class ResidualBlock(nn.Module):
    """conv3x3 - ReLU - conv3x3 plus the input (EDSR's block, without batch norm)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(x)))


class ResidualCnn(nn.Module):
    """(B, 1, h, w) -> (B, channels, h, w): a head conv, `blocks` residual blocks, a body conv and a long skip
    (EDSR-baseline without its upsampler). Replicate padding: a DEM's edge continues its slope better than zeros."""

    def __init__(self, channels: int, blocks: int):
        super().__init__()
        self.head = nn.Conv2d(1, channels, 3, padding=1)
        self.body = nn.Sequential(*[ResidualBlock(channels) for _ in range(blocks)],
                                  nn.Conv2d(channels, channels, 3, padding=1))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                m.padding_mode = "replicate"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(x)
        return x + self.body(x)


def positional_encoding(offset: torch.Tensor, frequencies: int) -> torch.Tensor:
    """(..., 2) offsets in [-1, 1] -> (..., 4 * frequencies): sin and cos of 2^k pi offset, k < frequencies (Eq. 3.4,
    applied to each coordinate)."""
    scales = math.pi * 2.0 ** torch.arange(frequencies, dtype=offset.dtype, device=offset.device)
    angles = (offset[..., None] * scales).flatten(-2)
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)


class CdemNet(nn.Module):
    """EBCF-CDEM. forward(lr, query, cell, base) -> (B, Q) predicted normalised elevations.

    lr: (B, 1, h, w) normalised low-resolution grids; query: (B, Q, 2) LR index coordinates (u, v); cell: (B,) the
    query grid's cell size in coarse cells (1 / scale); base: (B, Q) the normalised base interpolation at the queries
    (used when config.target is "bias")."""

    def __init__(self, config: CdemConfig):
        super().__init__()
        config.validate()
        self.config = config
        self.encoder = ResidualCnn(config.channels, config.blocks)
        position = 4 * config.frequencies if config.positional_encoding else 2
        layers, width = [], config.channels + position + 1
        for _ in range(config.decoder_layers - 1):
            layers += [nn.Linear(width, config.decoder_width), nn.ReLU()]
            width = config.decoder_width
        self.decoder = nn.Sequential(*layers, nn.Linear(width, 1))
        # The last layer starts at zero: an untrained bias model is its base interpolation.
        nn.init.zeros_(self.decoder[-1].weight)
        nn.init.zeros_(self.decoder[-1].bias)

    def forward(self, lr: torch.Tensor, query: torch.Tensor, cell: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
        codes = self.encoder(lr)
        h, w = lr.shape[-2:]
        # grid_sample's (x, y) in [-1, 1] with align_corners=True put -1 and 1 on the first and last sample; its
        # bilinear blend of the four neighbouring codes is Eq. 3.2's weighted sum.
        grid = torch.stack([2 * query[..., 1] / max(w - 1, 1) - 1, 2 * query[..., 0] / max(h - 1, 1) - 1], dim=-1)
        z = F.grid_sample(codes, grid[:, None], mode="bilinear", padding_mode="border", align_corners=True)
        z = z[:, :, 0].transpose(1, 2)  # (B, Q, C)
        offset = 2 * (query - torch.floor(query + 0.5))  # from the nearest sample, in [-1, 1); ties go up
        position = positional_encoding(offset, self.config.frequencies) if self.config.positional_encoding \
            else offset
        cell = cell[:, None, None].expand(-1, query.shape[1], 1)
        out = self.decoder(torch.cat([z, position, cell], dim=-1))[..., 0]
        return base + out if self.config.target == "bias" else out


class FixedScaleCnn(nn.Module):
    """forward(upsampled) -> upsampled + correction, (B, 1, H, W) normalised: the bicubic upsampling refined."""

    def __init__(self, config: CnnConfig):
        super().__init__()
        config.validate()
        self.config = config
        self.features = ResidualCnn(config.channels, config.blocks)
        self.out = nn.Conv2d(config.channels, 1, 3, padding=1, padding_mode="replicate")
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, upsampled: torch.Tensor) -> torch.Tensor:
        return upsampled + self.out(self.features(upsampled))


def normalisation(lr: np.ndarray) -> tuple[float, float]:
    """(mean, scale) metres of a low-resolution grid's valid samples: scale is their standard deviation, at least
    MIN_SCALE_M."""
    values = lr[np.isfinite(lr)]
    if not values.size:
        return 0.0, 1.0  # a tile without data (sea, a hole): its output is NaN anyway
    return float(values.mean()), max(float(values.std()), MIN_SCALE_M)


class SuperResolver(ABC):
    """Elevations at continuous positions from a low-resolution grid. Subclasses give predict_tile."""

    name: str

    @abstractmethod
    def predict_tile(self, lr: np.ndarray, u: np.ndarray, v: np.ndarray, cell: float) -> np.ndarray:
        """(len(u), len(v)) metres from a grid `lr` (h, w) small enough to be one tile."""

    def predict(self, lr: np.ndarray, u: np.ndarray, v: np.ndarray, cell: float) -> np.ndarray:
        """(len(u), len(v)) elevations, metres, at LR index coordinates u (rows) x v (columns) of `lr` (h, w)
        metres; `cell` is the query grid's cell size in coarse cells (1 / scale). Large inputs go tile by tile."""
        core = tile_core(cell)
        if max(lr.shape) <= core + 2 * HALO:
            return self.predict_tile(lr, u, v, cell)
        out = np.empty((len(u), len(v)), dtype=np.float32)
        for rows, r0, r1 in _bands(u, lr.shape[0], core):
            for cols, c0, c1 in _bands(v, lr.shape[1], core):
                out[np.ix_(rows, cols)] = self.predict_tile(lr[r0:r1, c0:c1], u[rows] - r0, v[cols] - c0, cell)
        return out


def _bands(coords: np.ndarray, n: int, core: int) -> list[tuple[np.ndarray, int, int]]:
    """Split query coordinates along one axis into tiles of `core` samples: (query indices, first sample, end
    sample) with HALO samples of context on each side (fewer at the grid's edges)."""
    bands = []
    for start in range(0, n, core):
        # Queries belong to the tile whose samples they are nearest; those beyond the grid to the edge tiles.
        lo = -np.inf if start == 0 else start - 0.5
        hi = np.inf if start + core >= n else start + core - 0.5
        rows = np.nonzero((coords >= lo) & (coords < hi))[0]
        if rows.size:
            bands.append((rows, max(0, start - HALO), min(n, start + core + HALO)))
    return bands


class Interpolation(SuperResolver):
    """The base interpolation alone."""

    def __init__(self, base: str):
        self.name = base
        self.base = base

    def predict_tile(self, lr, u, v, cell):
        return interpolate(lr, u, v, self.base)


class TrainedModel(SuperResolver):
    """A trained network (`net`, whose `config` it has) and the record of its training; saved as `format_name`."""

    format_name: str

    def __init__(self, net: CdemNet | FixedScaleCnn, training: dict | None = None):
        self.net, self.training = net.eval(), training or {}

    @property
    def config(self) -> CdemConfig | CnnConfig:
        return self.net.config

    def save(self, path: str | Path) -> None:
        save_model(path, self.net, self.format_name, self.training)


class CdemModel(TrainedModel):
    """A trained CdemNet with what it needs to predict."""

    name, format_name = "EBCF-CDEM", CDEM_FORMAT

    @torch.no_grad()
    def predict_tile(self, lr, u, v, cell):
        mean, scale = normalisation(lr)
        base = interpolate(lr, u, v, self.config.base)
        uu, vv = np.meshgrid(u, v, indexing="ij")
        query = torch.from_numpy(np.stack([uu, vv], -1).reshape(1, -1, 2).astype(np.float32))
        base_n = torch.from_numpy(((base - mean) / scale).reshape(1, -1).astype(np.float32))
        lr_n = torch.from_numpy(((np.nan_to_num(lr, nan=mean) - mean) / scale).astype(np.float32))[None, None]
        cells = torch.tensor([cell], dtype=torch.float32)
        pred = torch.cat([self.net(lr_n, query[:, i:i + QUERY_CHUNK], cells, base_n[:, i:i + QUERY_CHUNK])
                          for i in range(0, query.shape[1], QUERY_CHUNK)], dim=1)
        out = pred.numpy().reshape(len(u), len(v)) * scale + mean
        return np.where(np.isnan(base), np.nan, out).astype(np.float32)


class CnnModel(TrainedModel):
    """A trained FixedScaleCnn: refines the bicubic interpolation on the query grid. It convolves the fine grid, so
    it runs on the whole input at once (tiles of the fine grid would leave seams) and is meant for its own factor."""

    name, format_name = "CNN", CNN_FORMAT

    def predict(self, lr, u, v, cell):
        return self.predict_tile(lr, u, v, cell)

    @torch.no_grad()
    def predict_tile(self, lr, u, v, cell):
        mean, scale = normalisation(lr)
        up = interpolate(lr, u, v, "bicubic")
        x = torch.from_numpy(((np.nan_to_num(up, nan=mean) - mean) / scale).astype(np.float32))[None, None]
        out = self.net(x)[0, 0].numpy() * scale + mean
        return np.where(np.isnan(up), np.nan, out).astype(np.float32)


def save_model(path: str | Path, net: CdemNet | FixedScaleCnn, format_name: str, training: dict) -> None:
    """Model file: fp32 safetensors weights plus JSON metadata (format, config, how it was trained)."""
    from safetensors.torch import save_file

    metadata = {"format": format_name, "format_version": FORMAT_VERSION, "sceneloc_version": __version__,
                "config": net.config.to_dict(), "training": training}
    save_map_file(path, {k: v.detach().contiguous() for k, v in net.state_dict().items()}, metadata, save_file)


def load_model(path: str | Path) -> CdemModel | CnnModel:
    """The model in `path` (from `sceneloc dem train`); InputError for anything else."""
    from safetensors.torch import load_file

    from sceneloc.maps.files import read_map_metadata
    from sceneloc.runtime.errors import InputError

    kind = read_map_metadata(path, "DEM model").get("format")
    format_name = CNN_FORMAT if kind == CNN_FORMAT else CDEM_FORMAT
    tensors, meta = load_map_file(path, "DEM model", format_name, FORMAT_VERSION, load_file)
    config_cls, net_cls, model_cls = ((CnnConfig, FixedScaleCnn, CnnModel) if format_name == CNN_FORMAT
                                      else (CdemConfig, CdemNet, CdemModel))
    config = config_from_metadata(path, config_cls, metadata_field(path, meta, "config", dict), "config")
    try:
        config.validate()
        net = net_cls(config)
        net.load_state_dict(tensors)
    except (ValueError, RuntimeError) as e:
        raise InputError(path, f"DEM model does not match its config ({str(e).splitlines()[0]})") from None
    return model_cls(net, meta.get("training") if isinstance(meta.get("training"), dict) else {})
