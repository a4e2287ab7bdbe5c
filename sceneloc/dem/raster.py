"""The DEM type and its files: a grid of elevations in metres with its cell size, read from and written to GeoTIFF
(rasterio), .npz and .npy, with one-line InputErrors for anything that is not a usable elevation grid.

Grid convention (as GeoTIFF's): row 0 is the northern edge, column 0 the western one; cell (i, j) covers
[i, i + 1) x [j, j + 1) in cell units, its value is the elevation at its centre (i + 0.5, j + 0.5)."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from sceneloc.runtime.atomic import atomic_output
from sceneloc.runtime.errors import InputError

SUFFIXES = (".tif", ".tiff", ".npz", ".npy")
"""The file types read_dem and write_dem know."""
MIN_CELLS = 8
"""Smallest side of a DEM worth super-resolving (a 3x3 window is needed for slope, and a few cells of context)."""
METRES_PER_DEGREE = 111_320.0
"""Length of one degree of latitude (and of longitude at the equator) on the WGS84 ellipsoid, rounded; enough for
slopes of grids in geographic coordinates, whose cells are then assumed square in angle."""
NPZ_ELEVATION_KEYS = ("elevation", "dem", "topo", "z", "height")
"""Names an .npz array of elevations goes by (matplotlib's samples use "elevation" and "topo")."""


@dataclass
class Dem:
    """An elevation grid.

    elevation: (H, W) float32 metres, NaN where there is no data.
    cell_size: (dy, dx) metres, the ground size of a cell along rows (south) and columns (east).
    transform: the GeoTIFF affine transform (rasterio's Affine) when the grid came from one, kept for writing back.
    crs: the coordinate reference system as WKT, when known."""

    elevation: np.ndarray
    cell_size: tuple[float, float]
    transform: object | None = None
    crs: str | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return self.elevation.shape

    def resampled(self, elevation: np.ndarray) -> Dem:
        """The same ground area at the resolution of `elevation` (h, w): cell size and transform scaled."""
        h, w = elevation.shape
        sy, sx = self.shape[0] / h, self.shape[1] / w
        transform = None if self.transform is None else self.transform @ type(self.transform).scale(sx, sy)
        return replace(self, elevation=elevation.astype(np.float32),
                       cell_size=(self.cell_size[0] * sy, self.cell_size[1] * sx), transform=transform)


def _checked(path: Path, elevation: np.ndarray, cell_size: tuple[float, float]) -> np.ndarray:
    if elevation.ndim != 2:
        raise InputError(path, f"elevation array has shape {elevation.shape}, not (rows, columns)")
    if min(elevation.shape) < MIN_CELLS:
        raise InputError(path, f"DEM of {elevation.shape[0]}x{elevation.shape[1]} cells is smaller than "
                               f"{MIN_CELLS}x{MIN_CELLS}")
    if not np.issubdtype(elevation.dtype, np.number) or np.issubdtype(elevation.dtype, np.complexfloating):
        raise InputError(path, f"elevations are of type {elevation.dtype}, not numbers")
    elevation = elevation.astype(np.float32)
    elevation[~np.isfinite(elevation)] = np.nan
    if np.isnan(elevation).all():
        raise InputError(path, "DEM has no valid elevation")
    if not all(math.isfinite(c) and c > 0 for c in cell_size):
        raise InputError(path, f"cell size {cell_size} is not positive")
    return elevation


def _geographic_cell_size(dy_deg: float, dx_deg: float, centre_lat_deg: float) -> tuple[float, float]:
    """(dy, dx) metres of a cell of dy_deg x dx_deg degrees at latitude centre_lat_deg."""
    return (float(abs(dy_deg) * METRES_PER_DEGREE),
            float(abs(dx_deg) * METRES_PER_DEGREE * math.cos(math.radians(centre_lat_deg))))


def _read_tif(path: Path) -> Dem:
    import rasterio
    from rasterio.errors import RasterioError

    try:
        with rasterio.open(path) as src:
            if src.count < 1:
                raise InputError(path, "GeoTIFF has no band")
            band = src.read(1, masked=True)
            transform, crs = src.transform, src.crs
    except RasterioError as e:
        raise InputError(path, f"not a readable GeoTIFF ({str(e).splitlines()[0]})") from None
    elevation = np.ma.filled(band.astype(np.float32), np.nan)
    if not transform.is_rectilinear or transform.is_identity:
        cell = (1.0, 1.0)  # no georeference: cells of one metre, as GDAL assumes for slope
    elif crs is not None and crs.is_geographic:
        centre_lat = (transform * (0, elevation.shape[0] / 2))[1]
        cell = _geographic_cell_size(transform.e, transform.a, centre_lat)
    else:
        unit = crs.linear_units_factor[1] if crs is not None and crs.is_projected else 1.0
        cell = (abs(transform.e) * unit, abs(transform.a) * unit)
    return Dem(_checked(path, elevation, cell), cell, transform, None if crs is None else crs.to_wkt())


def _read_npz(path: Path, cell_size: float | None) -> Dem:
    try:
        data = np.load(path, allow_pickle=False)
        arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError, EOFError) as e:
        raise InputError(path, f"not a readable .npz ({e})") from None
    key = next((k for k in NPZ_ELEVATION_KEYS if k in arrays), None)
    grids = [k for k, a in arrays.items() if a.ndim == 2]
    if key is None and len(grids) == 1:
        key = grids[0]
    if key is None:
        raise InputError(path, f"no elevation array: name it one of {', '.join(NPZ_ELEVATION_KEYS)} (arrays here: "
                               f"{', '.join(arrays) or 'none'})")
    elevation = arrays[key]
    if cell_size is not None:
        cell = (cell_size, cell_size)
    elif "cell_size" in arrays:
        c = np.atleast_1d(arrays["cell_size"]).astype(float)
        cell = (float(c[0]), float(c[-1]))
    elif "dx" in arrays and "dy" in arrays and "ymin" in arrays and "ymax" in arrays:
        # matplotlib's jacksboro_fault_dem.npz: degree spacing and latitude bounds.
        centre_lat = (float(arrays["ymin"]) + float(arrays["ymax"])) / 2
        cell = _geographic_cell_size(float(arrays["dy"]), float(arrays["dx"]), centre_lat)
    elif "latitude" in arrays and "longitude" in arrays and len(arrays["latitude"]) > 1:
        # matplotlib's topobathy.npz: latitude and longitude of every row and column.
        lat, lon = arrays["latitude"].astype(float), arrays["longitude"].astype(float)
        cell = _geographic_cell_size(np.diff(lat).mean(), np.diff(lon).mean(), lat.mean())
        if lat[1] > lat[0] and elevation.ndim == 2:
            elevation = elevation[::-1]  # rows from south to north: make row 0 the northern edge
    else:
        raise InputError(path, "no cell size: store 'cell_size' (metres) in the .npz or pass --cell-size")
    return Dem(_checked(path, elevation, cell), cell)


def read_dem(path: str | Path, cell_size: float | None = None) -> Dem:
    """The DEM in `path` (.tif/.tiff: band 1, its nodata as NaN; .npz: see NPZ_ELEVATION_KEYS, with 'cell_size' or
    degree spacing; .npy: a 2-D array, which needs `cell_size`). `cell_size` (metres) overrides the file's."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "DEM file does not exist" if not path.exists() else "is a folder, not a DEM file")
    suffix = path.suffix.lower()
    if suffix in (".tif", ".tiff"):
        dem = _read_tif(path)
        if cell_size is not None:
            dem = replace(dem, cell_size=(cell_size, cell_size))
        return dem
    if suffix == ".npz":
        return _read_npz(path, cell_size)
    if suffix == ".npy":
        try:
            elevation = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as e:
            raise InputError(path, f"not a readable .npy ({e})") from None
        if cell_size is None:
            raise InputError(path, "an .npy holds no cell size: pass --cell-size (metres)")
        return Dem(_checked(path, elevation, (cell_size, cell_size)), (cell_size, cell_size))
    raise InputError(path, f"unknown DEM file type {path.suffix!r} (use {', '.join(SUFFIXES)})")


def check_dem_output(path: str | Path) -> None:
    """InputError unless `path` names a DEM file type write_dem writes."""
    if Path(path).suffix.lower() not in SUFFIXES:
        raise InputError(path, f"unknown DEM file type {Path(path).suffix!r} (use {', '.join(SUFFIXES)})")


def write_dem(path: str | Path, dem: Dem) -> None:
    """Write `dem` atomically: GeoTIFF (float32, NaN as nodata, its transform and CRS when known), .npz (elevation
    and cell_size) or .npy (the elevations alone)."""
    path = Path(path)
    check_dem_output(path)
    suffix = path.suffix.lower()
    with atomic_output(path) as tmp:
        if suffix in (".tif", ".tiff"):
            import rasterio
            from affine import Affine

            h, w = dem.shape
            transform = dem.transform if dem.transform is not None else Affine(dem.cell_size[1], 0, 0, 0,
                                                                                -dem.cell_size[0], 0)
            with rasterio.open(tmp, "w", driver="GTiff", height=h, width=w, count=1, dtype="float32",
                               nodata=float("nan"), transform=transform, crs=dem.crs) as dst:
                dst.write(dem.elevation.astype(np.float32), 1)
        elif suffix == ".npz":
            with open(tmp, "wb") as f:
                np.savez(f, elevation=dem.elevation.astype(np.float32),
                         cell_size=np.asarray(dem.cell_size, dtype=np.float64))
        else:
            with open(tmp, "wb") as f:
                np.save(f, dem.elevation.astype(np.float32))
