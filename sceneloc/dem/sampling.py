"""Where low-resolution samples and high-resolution queries lie relative to each other, low-resolution DEMs made from
high-resolution ones, and the interpolated base a model corrects.

Positions are "LR index coordinates": low-resolution sample (j, k) is at (j, k); a query at (u, v) lies between
samples floor(u) and floor(u) + 1. For a DEM given by a user, samples are cell centres, so output cell i of an
s-times finer grid is at u = (i + 0.5) / s - 0.5. For a low-resolution DEM made here by the thesis's nearest-neighbour
downsampling by an integer factor f, sample j is high-resolution cell j * f + f // 2, so high-resolution cell i is at
u = (i - f // 2) / f: the base then interpolates between where the samples really are, not where their cells'
centres would be (half a fine cell apart for even f), so it is not charged for a shift that only the learned model
could know about."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

BASES = {"nearest": 0, "bilinear": 1, "bicubic": 3}
"""Interpolations of the known samples, by name, as scipy.ndimage spline orders. "bicubic" is the cubic B-spline
interpolation of scipy.ndimage.map_coordinates: it reproduces polynomials up to degree 3 away from the edges (the
cubic-convolution kernel of image libraries reproduces degree 2 at best)."""


def downsample_nearest(hr: np.ndarray, factor: int) -> np.ndarray:
    """(H // factor, W // factor) low-resolution grid of `hr` (H, W): every factor-th cell, starting at factor // 2
    (the thesis's nearest-neighbour downsampling: the fine cell nearest each coarse cell's centre)."""
    off = factor // 2
    h, w = hr.shape[0] // factor, hr.shape[1] // factor
    return np.ascontiguousarray(hr[off::factor, off::factor][:h, :w])


def fine_cells_of_downsampled(n_fine: int, factor: int) -> np.ndarray:
    """(n_fine,) LR index coordinate of each fine cell along one axis, for a grid from downsample_nearest."""
    return (np.arange(n_fine, dtype=np.float64) - factor // 2) / factor


def fine_cells_of_centres(n_coarse: int, n_fine: int) -> np.ndarray:
    """(n_fine,) LR index coordinate of each cell of an n_fine-cell grid over the same extent as n_coarse cells
    whose samples are at their centres (a user's DEM upsampled by n_fine / n_coarse)."""
    return (np.arange(n_fine, dtype=np.float64) + 0.5) * (n_coarse / n_fine) - 0.5


def filled(lr: np.ndarray) -> np.ndarray:
    """`lr` with every NaN replaced by its nearest valid sample (interpolation needs numbers everywhere)."""
    missing = np.isnan(lr)
    if not missing.any():
        return lr
    idx = ndimage.distance_transform_edt(missing, return_distances=False, return_indices=True)
    return lr[tuple(idx)]


def interpolate_points(lr: np.ndarray, u: np.ndarray, v: np.ndarray, base: str) -> np.ndarray:
    """The `base` interpolation (see BASES) of the low-resolution grid `lr` (h, w) at the points of LR index
    coordinates (u, v) (arrays of one shape, which the result has); beyond the edge samples the grid is extended
    by them, so planes and quadratics are reproduced inside the samples' hull (bicubic: a few samples in from the
    edges, the spline prefilter's reach). NaN where the nearest sample is NaN."""
    # The grid is extended by its edge samples: on the real test tiles that gives the base its lowest error (odd
    # reflection, which continues a plane exactly, was 5-10 % worse at x4 and x8: terrain does not go on as a plane).
    values = ndimage.map_coordinates(filled(lr).astype(np.float64), [u, v], order=BASES[base], mode="nearest")
    if np.isnan(lr).any():
        nearest = ndimage.map_coordinates(np.isnan(lr).astype(np.uint8), [u, v], order=0, mode="nearest")
        values[nearest.astype(bool)] = np.nan
    return values.astype(np.float32)


def interpolate(lr: np.ndarray, u: np.ndarray, v: np.ndarray, base: str) -> np.ndarray:
    """(len(u), len(v)) interpolate_points on the grid of LR index coordinates u (rows) x v (columns)."""
    uu, vv = np.meshgrid(u, v, indexing="ij")
    return interpolate_points(lr, uu, vv, base)


def tiles(shape: tuple[int, int], size: int) -> list[tuple[slice, slice]]:
    """The non-overlapping size x size tiles that fit in a grid of `shape`, row by row."""
    return [(slice(r, r + size), slice(c, c + size)) for r in range(0, shape[0] - size + 1, size)
            for c in range(0, shape[1] - size + 1, size)]
