"""Terrain attributes of a DEM and the thesis's error measures: slope and aspect by Horn's method (as gdaldem and
ArcGIS compute them), and the RMSE of elevation, slope and aspect between a DEM and its truth (Eq. 3.5), per tile
and as mean +- std over tiles (Tables 3.1-3.5).

Horn's 3x3 differences are written here with numpy slices: GDAL's gdaldem computes the same but only file to file,
and no well-kept Python library exposes it on an array."""

from __future__ import annotations

import numpy as np

FLAT_SLOPE_DEG = 1e-6
"""Below this slope a cell has no aspect (it faces no direction); such cells are left out of the aspect error."""


def horn_gradient(elevation: np.ndarray, cell_size: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """(dz/d_east, dz/d_north), each (H - 2, W - 2), of the interior cells of `elevation` (H, W) metres with cells of
    cell_size = (dy, dx) metres: Horn's weighted 3x3 differences. Row 0 is the north edge (GeoTIFF order)."""
    z = np.asarray(elevation, dtype=np.float64)
    dy, dx = cell_size
    a, b, c = z[:-2, :-2], z[:-2, 1:-1], z[:-2, 2:]
    d, f = z[1:-1, :-2], z[1:-1, 2:]
    g, h, i = z[2:, :-2], z[2:, 1:-1], z[2:, 2:]
    dz_east = ((c + 2 * f + i) - (a + 2 * d + g)) / (8 * dx)
    dz_north = ((a + 2 * b + c) - (g + 2 * h + i)) / (8 * dy)
    return dz_east, dz_north


def slope_deg(elevation: np.ndarray, cell_size: tuple[float, float]) -> np.ndarray:
    """(H - 2, W - 2) slope of the interior cells, degrees from horizontal."""
    gx, gy = horn_gradient(elevation, cell_size)
    return np.degrees(np.arctan(np.hypot(gx, gy)))


def aspect_deg(elevation: np.ndarray, cell_size: tuple[float, float]) -> np.ndarray:
    """(H - 2, W - 2) aspect of the interior cells: the compass direction the slope faces (downhill), degrees
    clockwise from north in [0, 360); NaN on flat cells (slope below FLAT_SLOPE_DEG)."""
    gx, gy = horn_gradient(elevation, cell_size)
    aspect = np.degrees(np.arctan2(-gx, -gy)) % 360.0
    flat = np.degrees(np.arctan(np.hypot(gx, gy))) < FLAT_SLOPE_DEG
    return np.where(flat, np.nan, aspect)


def angle_difference_deg(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Smallest absolute difference of two compass directions, degrees in [0, 180]."""
    d = np.abs(a - b) % 360.0
    return np.minimum(d, 360.0 - d)


def _rmse(errors: np.ndarray) -> float:
    errors = errors[np.isfinite(errors)]
    return float(np.sqrt(np.mean(errors ** 2))) if errors.size else float("nan")


def dem_errors(predicted: np.ndarray, truth: np.ndarray, cell_size: tuple[float, float]) -> dict[str, float]:
    """RMSE of elevation (m, every cell both have), of slope and of aspect (degrees, interior cells; aspect on cells
    that are not flat in either) between two (H, W) grids of the same cells."""
    if predicted.shape != truth.shape:
        raise ValueError(f"grids of {predicted.shape} and {truth.shape} cells do not match")
    aspect_error = angle_difference_deg(aspect_deg(predicted, cell_size), aspect_deg(truth, cell_size))
    return {"elevation": _rmse(predicted.astype(np.float64) - truth),
            "slope": _rmse(slope_deg(predicted, cell_size) - slope_deg(truth, cell_size)),
            "aspect": _rmse(aspect_error)}


ERROR_KEYS = ("elevation", "slope", "aspect")
"""The keys of dem_errors, in the order of the thesis's tables."""


def summarise(per_tile: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """{key: {"mean", "std"}} over tiles of dem_errors results (tiles where a key is NaN left out of it)."""
    out = {}
    for key in ERROR_KEYS:
        values = np.array([t[key] for t in per_tile], dtype=np.float64)
        values = values[np.isfinite(values)]
        out[key] = {"mean": float(values.mean()) if values.size else float("nan"),
                    "std": float(values.std()) if values.size else float("nan")}
    return out
