"""Scoring super-resolved DEMs: a predicted grid against its truth (`sceneloc dem evaluate`), and a model on the
tiles of a held-out region downsampled by a factor (the thesis's protocol, Tables 3.1-3.4)."""

from __future__ import annotations

import numpy as np

from sceneloc.dem.model import SuperResolver
from sceneloc.dem.raster import Dem
from sceneloc.dem.sampling import downsample_nearest, fine_cells_of_downsampled, tiles
from sceneloc.dem.terrain import dem_errors, summarise
from sceneloc.runtime.errors import InputError

EVAL_TILE = 48
"""Side of the evaluation tiles in fine cells: a multiple of 2, 3, 4, 6 and 8 (the thesis: 64 and 96 on larger
data sets; the held-out part of a 403-column DEM has room for few of those)."""
EVAL_BORDER = 2
"""Fine cells left out of the score at each edge of a tile, as the thesis does (section 3.5.1): the edge cells lie
beyond the coarse samples (up to factor / 2 cells at even factors) and are extrapolated by every method."""


def compare_dems(predicted: Dem, truth: Dem, tile: int | None = EVAL_TILE, names: tuple[str, str] = ("", "")
                 ) -> dict:
    """{"whole": RMSE of elevation, slope, aspect over the whole grids, "tiles": mean and std over the tile x tile
    tiles without missing values (absent when tile is None or none fits), "n_tiles"}. The grids must cover the same
    cells; slope uses the truth's cell size."""
    if predicted.shape != truth.shape:
        raise InputError(names[0] or None, f"has {predicted.shape[0]}x{predicted.shape[1]} cells, its truth "
                                           f"{names[1]} {truth.shape[0]}x{truth.shape[1]}")
    result = {"whole": dem_errors(predicted.elevation, truth.elevation, truth.cell_size), "n_tiles": 0}
    if tile is not None:
        per_tile = [dem_errors(predicted.elevation[s], truth.elevation[s], truth.cell_size)
                    for s in tiles(truth.shape, tile)
                    if np.isfinite(truth.elevation[s]).all() and np.isfinite(predicted.elevation[s]).all()]
        if per_tile:
            result["tiles"], result["n_tiles"] = summarise(per_tile), len(per_tile)
    return result


def tile_errors(resolver: SuperResolver, region: np.ndarray, cell_size: tuple[float, float], factor: int,
                tile: int = EVAL_TILE, border: int = EVAL_BORDER) -> tuple[list[dict], list[np.ndarray]]:
    """Each fully valid tile x tile tile of `region` (H, W) downsampled by `factor` (downsample_nearest) and
    super-resolved back by `resolver`, scored without `border` cells at its edges: (dem_errors per tile, the
    predicted tiles, whole)."""
    coords = fine_cells_of_downsampled(tile, factor)
    inner = slice(border, tile - border)
    errors, predictions = [], []
    for s in tiles(region.shape, tile):
        hr = region[s].astype(np.float64)
        if not np.isfinite(hr).all():
            continue
        predicted = resolver.predict(downsample_nearest(hr, factor), coords, coords, 1.0 / factor)
        errors.append(dem_errors(predicted[inner, inner], hr[inner, inner], cell_size))
        predictions.append(predicted)
    return errors, predictions
