"""How close a reconstructed mesh is to the true one (`sceneloc sdf evaluate`), with the thesis's metrics (section
2.4.2, Tables 2.2 and 2.3): the Chamfer distance (Eq. 2.11, the sum of the mean nearest-point distances each way)
and the Hausdorff distance (Eq. 2.9) between 30,000 points sampled on each surface, and the Euclidean distance (ED) from
every vertex of the true mesh to the reconstructed surface (mean, std, median, 90th percentile, and the shares over
5, 10 and 20 mm). Distances are in millimetres for meshes in metres (the file's units times 1000). Also the
per-vertex error render of Figure 2.3 (matplotlib, off-screen)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import open3d as o3d
from matplotlib import cm, colors
from matplotlib.figure import Figure
from mpl_toolkits.mplot3d.art3d import Poly3DCollection
from scipy.spatial import cKDTree

from sceneloc.evaluate.cloud import sample_mesh
from sceneloc.evaluate.plots import save_figure

N_SAMPLES = 30_000
"""Points sampled on each surface for CD and HD (the thesis: 30,000)."""
ED_THRESHOLDS_MM = (5.0, 10.0, 20.0)
"""Table 2.3's error levels."""
MM = 1000.0
"""Millimetres per unit of the mesh file (metres)."""


def vertex_errors(recon: o3d.t.geometry.TriangleMesh, truth: o3d.t.geometry.TriangleMesh) -> np.ndarray:
    """(V,) float32 distances (the mesh's units) from each vertex of `truth` to the surface of `recon`."""
    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(recon)
    return scene.compute_distance(truth.vertex.positions.to(o3d.core.float32)).numpy()


def compare_meshes(recon: o3d.t.geometry.TriangleMesh, truth: o3d.t.geometry.TriangleMesh,
                   n_samples: int = N_SAMPLES, with_vertex_errors: bool = False):
    """Table 2.2/2.3 metrics of `recon` against `truth` (meshes as sceneloc.evaluate.cloud.read_mesh returns them),
    in mm: {"cd_mm", "hd_mm", "ed_mm": {"mean", "std", "median", "p90", "over_5", "over_10", "over_20" (per cent
    of the true vertices)}, "n_samples", "truth_vertices"}; with_vertex_errors, also the (V,) per-vertex ED (mm)
    as a second value."""
    a, b = sample_mesh(truth, n_samples, 0), sample_mesh(recon, n_samples, 1)
    a_to_b, b_to_a = cKDTree(b).query(a, k=1, workers=-1)[0], cKDTree(a).query(b, k=1, workers=-1)[0]
    ed = vertex_errors(recon, truth) * MM
    result = {"cd_mm": float((a_to_b.mean() + b_to_a.mean()) * MM),
              "hd_mm": float(max(a_to_b.max(), b_to_a.max()) * MM),
              "ed_mm": {"mean": float(ed.mean()), "std": float(ed.std()), "median": float(np.median(ed)),
                        "p90": float(np.percentile(ed, 90)),
                        **{f"over_{t:g}": float(np.mean(ed > t) * 100) for t in ED_THRESHOLDS_MM}},
              "n_samples": n_samples, "truth_vertices": int(len(ed))}
    return (result, ed) if with_vertex_errors else result


def render_vertex_errors(path: str | Path, truth: o3d.t.geometry.TriangleMesh, errors: dict[str, np.ndarray],
                         title: str, max_faces: int = 100_000, up: int = 1) -> None:
    """A Figure 2.3-style PNG: the true mesh once per method, each face coloured by the mean error (mm) of its
    vertices under that method, on one colour scale (up to the largest 95th percentile), seen from the
    front with axis `up` (0, 1, 2 = x, y, z; the Stanford and CGAL meshes stand along y) vertical. Meshes with more
    than max_faces faces are drawn with an even subset of them (matplotlib draws polygons one by one)."""
    horizontal = [a for a in range(3) if a != up]
    vertices = truth.vertex.positions.numpy()[:, [horizontal[0], horizontal[1], up]]  # matplotlib's z is up
    faces = truth.triangle.indices.numpy()
    keep = np.linspace(0, len(faces) - 1, min(len(faces), max_faces)).astype(int)
    faces = faces[keep]
    vmax = max(float(np.percentile(e, 95)) for e in errors.values())
    norm = colors.Normalize(0.0, vmax)
    figure = Figure(figsize=(4.0 * len(errors) + 1.0, 4.6))
    centre = (vertices.min(0) + vertices.max(0)) / 2
    radius = float((vertices.max(0) - vertices.min(0)).max()) / 2
    for k, (name, err) in enumerate(errors.items()):
        ax = figure.add_subplot(1, len(errors), k + 1, projection="3d")
        face_err = err[faces].mean(1)
        poly = Poly3DCollection(vertices[faces], facecolors=cm.viridis(norm(face_err)), edgecolor="none")
        ax.add_collection3d(poly)
        for axis, c in zip("xyz", centre):
            getattr(ax, f"set_{axis}lim")(c - radius, c + radius)
        ax.set_box_aspect((1, 1, 1), zoom=1.35)
        ax.view_init(elev=10, azim=80)  # from the mesh's +z, a little to the side
        ax.set_axis_off()
        ax.set_title(f"{name}\nED {err.mean():.2f} mm", fontsize=10)
    figure.subplots_adjust(left=0.0, right=0.9, bottom=0.0, top=0.85, wspace=0.0)
    figure.colorbar(cm.ScalarMappable(norm=norm, cmap="viridis"), ax=figure.axes, shrink=0.7,
                    label="error per vertex (mm)")
    figure.suptitle(title, fontsize=11)
    save_figure(figure, path)
