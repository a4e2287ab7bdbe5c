"""The DEM type and its files: a grid of elevations in metres with its cell size, read from and written to GeoTIFF
(rasterio), .npz and .npy, with one-line InputErrors for anything that is not a usable elevation grid.

Grid convention (as GeoTIFF's): row 0 is the northern edge, column 0 the western one; cell (i, j) covers
[i, i + 1) x [j, j + 1) in cell units, its value is the elevation at its centre (i + 0.5, j + 0.5)."""

from __future__ import annotations

import math
import warnings
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
    from rasterio.errors import CRSError, NotGeoreferencedWarning, RasterioError

    try:
        with warnings.catch_warnings():
            # A grid without georeference is still a DEM (cells of one metre, below); not a warning on every read.
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as src:
                if src.count != 1:
                    raise InputError(path, f"GeoTIFF has {src.count} bands; a DEM has one (elevation)")
                band = src.read(1, masked=True)
                transform, crs = src.transform, src.crs
    except RasterioError as e:
        raise InputError(path, f"not a readable GeoTIFF ({str(e).splitlines()[0]})") from None
    elevation = np.ma.filled(band.astype(np.float32), np.nan)
    # Ground size of a cell along rows and columns, rotated or sheared grids included.
    dy, dx = math.hypot(transform.b, transform.e), math.hypot(transform.a, transform.d)
    if transform.is_identity:
        cell = (1.0, 1.0)  # no georeference: cells of one metre, as GDAL assumes for slope
    elif crs is not None and crs.is_geographic:
        centre_lat = (transform * (elevation.shape[1] / 2, elevation.shape[0] / 2))[1]
        cell = _geographic_cell_size(dy, dx, centre_lat)
    else:
        try:
            unit = crs.linear_units_factor[1] if crs is not None else 1.0
        except CRSError:
            unit = 1.0  # a CRS without linear units: take its numbers as metres
        cell = (dy * unit, dx * unit)
    return Dem(_checked(path, elevation, cell), cell, transform, None if crs is None else crs.to_wkt())


def _scalars(path: Path, arrays: dict, key: str, count: int = 1) -> list[float]:
    """The `count` finite real numbers stored as arrays[key] (a scalar or a short vector); InputError otherwise."""
    value = arrays[key]
    if not (np.issubdtype(value.dtype, np.number) and not np.issubdtype(value.dtype, np.complexfloating)) \
            or value.size not in (1, count) or value.ndim > 1 or not np.isfinite(value).all():
        raise InputError(path, f"'{key}' is not {'a number' if count == 1 else f'1 or {count} numbers'}")
    flat = value.astype(np.float64).ravel()
    return [float(flat[0])] * count if flat.size == 1 else [float(x) for x in flat]


def _read_npz(path: Path, cell_size: float | None) -> Dem:
    try:
        data = np.load(path, allow_pickle=False)
        if not isinstance(data, np.lib.npyio.NpzFile):
            raise InputError(path, "is an .npy array, not an .npz archive (rename it to .npy)")
        with data:
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
        cell = tuple(_scalars(path, arrays, "cell_size", 2))
    elif all(k in arrays for k in ("dx", "dy", "ymin", "ymax")):
        # matplotlib's jacksboro_fault_dem.npz: degree spacing and latitude bounds.
        (dx,), (dy,), (y0,), (y1,) = (_scalars(path, arrays, k) for k in ("dx", "dy", "ymin", "ymax"))
        if not (abs(y0) <= 90 and abs(y1) <= 90 and 0 < abs(dx) < 1 and 0 < abs(dy) < 1):
            raise InputError(path, "dx, dy, ymin, ymax do not look like degrees: store 'cell_size' (metres) or "
                                   "pass --cell-size")
        cell = _geographic_cell_size(dy, dx, (y0 + y1) / 2)
    elif "latitude" in arrays and "longitude" in arrays:
        # matplotlib's topobathy.npz: latitude and longitude of every row and column.
        lat, lon = arrays["latitude"].astype(np.float64), arrays["longitude"].astype(np.float64)
        if elevation.ndim != 2 or lat.shape != (elevation.shape[0],) or lon.shape != (elevation.shape[1],) \
                or min(lat.size, lon.size) < 2 or np.abs(lat).max() > 90:
            raise InputError(path, "'latitude' and 'longitude' must give one value in degrees per row and column")
        cell = _geographic_cell_size(np.diff(lat).mean(), np.diff(lon).mean(), lat.mean())
        if lat[1] > lat[0]:
            elevation = elevation[::-1]  # rows from south to north: make row 0 the northern edge
        if lon[1] < lon[0]:
            elevation = elevation[:, ::-1]  # columns from east to west: make column 0 the western edge
    else:
        raise InputError(path, "no cell size: store 'cell_size' (metres) in the .npz or pass --cell-size")
    return Dem(_checked(path, elevation, cell), cell)


def read_dem(path: str | Path, cell_size: float | None = None) -> Dem:
    """The DEM in `path` (.tif/.tiff: band 1, its nodata as NaN; .npz: see NPZ_ELEVATION_KEYS, with 'cell_size' or
    degree spacing; .npy: a 2-D array, which needs `cell_size`). `cell_size` (metres) overrides the file's."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "DEM file does not exist" if not path.exists() else "is a folder, not a DEM file")
    if cell_size is not None and not (math.isfinite(cell_size) and cell_size > 0):
        raise InputError(path, f"--cell-size {cell_size} is not a positive number of metres")
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
        if not isinstance(elevation, np.ndarray):
            elevation.close()
            raise InputError(path, "is an .npz archive, not an .npy array (rename it to .npz)")
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
