"""The zero level set of a signed-distance model as a triangle mesh (`sceneloc sdf mesh`): the field sampled on a
regular grid over the template's box and scikit-image's marching cubes.

The field is evaluated densely only where the surface can be: a grid `COARSE` times coarser is evaluated first, and
a fine cell is evaluated only where the coarse value is within a few coarse cells of zero (a signed distance
changes by at most the distance travelled); elsewhere the coarse value stands in, which keeps its sign."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import open3d as o3d
from skimage.measure import marching_cubes

from sceneloc.evaluate.cloud import legacy_mesh
from sceneloc.runtime.atomic import atomic_output
from sceneloc.runtime.progress import make_progress
from sceneloc.sdf.model import SdfModel

COARSE = 4
"""The coarse grid's spacing in fine cells."""
BAND = 2.0
"""Fine cells are evaluated where |coarse SDF| < BAND coarse cell diagonals."""
FAR_EDGES = 1.5
"""Pieces of the extracted mesh with no vertex within this many template edge lengths of a key point are dropped:
every point of the true surface is within about one edge length of a key point (the key points are its
decimated vertices), so such a piece is not the surface. On the benchmark's armadillo (39 mm edges) the surface
came within 1.3 edge lengths and the four far sheets no closer than 1.7."""
MARGIN = 0.05
"""Box margin around the template's key points, as a share of the normalised unit radius."""


def sdf_grid(model: SdfModel, resolution: int, progress: bool = True) -> tuple[np.ndarray, np.ndarray, float]:
    """The (X, Y, Z) float32 normalised SDF grid with `resolution` cells along the box's longest side, its (3,)
    origin and its spacing (normalised units)."""
    low = model.graph.vertices.min(0) - MARGIN
    high = model.graph.vertices.max(0) + MARGIN
    spacing = float((high - low).max()) / resolution
    shape = np.ceil((high - low) / spacing).astype(int) + 1
    axes = [low[a] + spacing * np.arange(shape[a]) for a in range(3)]
    coarse_axes = [ax[::COARSE] for ax in axes]
    coarse = _evaluate(model, coarse_axes)
    up = coarse.repeat(COARSE, 0).repeat(COARSE, 1).repeat(COARSE, 2)
    # Each fine cell reads the coarse corner below it, less than one coarse diagonal away.
    near = np.abs(up[:shape[0], :shape[1], :shape[2]]) < BAND * COARSE * spacing * np.sqrt(3)
    grid = up[:shape[0], :shape[1], :shape[2]].copy()
    idx = np.argwhere(near)
    with make_progress(progress) as bar:
        task = bar.add_task("sdf grid", total=len(idx), info=f"{len(idx):,} of {grid.size:,} cells near zero")
        chunk = 1 << 18
        for start in range(0, len(idx), chunk):
            sel = idx[start:start + chunk]
            points = np.stack([axes[a][sel[:, a]] for a in range(3)], 1)
            grid[sel[:, 0], sel[:, 1], sel[:, 2]] = model.sdf_normalised(points)
            bar.update(task, advance=len(sel))
    return grid, low, spacing


def _evaluate(model: SdfModel, axes: list[np.ndarray]) -> np.ndarray:
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
    return model.sdf_normalised(grid).reshape(*(len(a) for a in axes))


def extract_mesh(model: SdfModel, resolution: int = 256, progress: bool = True,
                 keep_far: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(N, 3) float64 vertices (the mesh's units) and (F, 3) int32 triangles of the model's zero level set,
    outward-facing. Unless keep_far, connected pieces that come nowhere near the shape are dropped
    (drop_far_pieces). ValueError when the field has no zero crossing in the box."""
    grid, origin, spacing = sdf_grid(model, resolution, progress)
    if not (grid.min() < 0 < grid.max()):
        raise ValueError("the SDF has no zero level set in the shape's box")
    vertices, faces, _, _ = marching_cubes(grid, level=0.0, spacing=(spacing,) * 3)
    vertices, faces = vertices + origin, faces.astype(np.int32)
    if not keep_far:
        vertices, faces = drop_far_pieces(vertices, faces, model)
        if len(faces) == 0:
            raise ValueError("every piece of the zero level set is far from the shape (--keep-far keeps them)")
    return model.normalisation.to_world(vertices), faces


def drop_far_pieces(vertices: np.ndarray, faces: np.ndarray, model: SdfModel) -> tuple[np.ndarray, np.ndarray]:
    """The mesh (normalised (N, 3) vertices, (F, 3) faces) without its connected pieces whose every vertex is more
    than FAR_EDGES template edge lengths from every key point. A zero set out there is the field's extrapolation
    (the samples lie near the surface), and far from the surface LGCL's field is the tangent plane of a key point
    that may face away from the point: the armadillo of `sdf bench` grew sheets up to 470 mm out."""
    mesh = legacy_mesh(vertices, faces)
    with o3d.utility.VerbosityContextManager(o3d.utility.VerbosityLevel.Error):
        piece, _, _ = mesh.cluster_connected_triangles()
    piece = np.asarray(piece)
    near = model.key_point_distance(vertices) <= FAR_EDGES * model.graph.mean_edge_length()
    keep_piece = np.zeros(piece.max() + 1 if len(piece) else 0, dtype=bool)
    keep_piece[piece[near[faces].any(1)]] = True
    mesh.remove_triangles_by_mask(~keep_piece[piece])
    mesh.remove_unreferenced_vertices()  # keeps the order of the vertices left
    return np.asarray(mesh.vertices), np.asarray(mesh.triangles, dtype=np.int32)


def write_mesh(path: str | Path, vertices: np.ndarray, triangles: np.ndarray) -> None:
    """Writes a triangle mesh atomically, in the format of the file's extension (Open3D: .ply, .obj, .off, ...)."""
    mesh = legacy_mesh(vertices, triangles)
    mesh.compute_triangle_normals()  # STL stores them (Open3D refuses to write one without)
    with atomic_output(path) as tmp:
        if not o3d.io.write_triangle_mesh(str(tmp), mesh):
            raise OSError(f"{path}: Open3D could not write this mesh format")
