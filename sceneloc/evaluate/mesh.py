"""A reconstructed mesh against the ground-truth mesh (CDRNet's 3D metrics: accuracy, completeness, precision,
recall, F-score at 5 cm), through the point-cloud evaluation (evaluate/cloud.py) on points sampled uniformly on the
reconstruction; optionally with the ground truth cut to what the posed frames see (`visible_samples`), as a
reconstruction can only complete what was filmed (the ScanNet-style protocol CDRNet reports)."""

from __future__ import annotations

import numpy as np
import open3d as o3d
from matplotlib.figure import Figure

from sceneloc.data import Frame
from sceneloc.data.raycast import cast_pixel_rays
from sceneloc.evaluate.cloud import CloudEvalConfig, _view_basis, evaluate_cloud, sample_mesh
from sceneloc.evaluate.plots import save_figure
from sceneloc.export.points import PointCloud
from sceneloc.runtime.errors import InputError
from sceneloc.runtime.progress import make_progress

VISIBILITY_SCALE = 0.25
"""The frames' images are ray cast at this fraction of their size to tell which truth samples they see."""


def visible_samples(truth: o3d.t.geometry.TriangleMesh, samples: np.ndarray, frames: list[Frame],
                    tolerance_m: float = 0.02, show_progress: bool = False) -> np.ndarray:
    """(M,) bool: the truth samples (M, 3) that some frame sees, in front of its camera, inside its image and not
    hidden (within tolerance_m of the truth's own depth there, ray cast at VISIBILITY_SCALE)."""
    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(truth)
    seen = np.zeros(len(samples), bool)
    with make_progress(show_progress) as progress:
        task = progress.add_task("visible truth", total=len(frames), info="")
        for frame in frames:
            camera = frame.camera.scaled(max(1, round(frame.camera.width * VISIBILITY_SCALE)),
                                         max(1, round(frame.camera.height * VISIBILITY_SCALE)))
            _, hits = cast_pixel_rays(scene, camera, frame.cam_from_world)
            cam = frame.cam_from_world.apply(samples)
            z = cam[:, 2]
            front = z > 1e-6
            uv = cam[front, :2] / z[front, None] @ camera.K[:2, :2].T + camera.K[:2, 2]
            cols, rows = np.round(uv[:, 0]).astype(int), np.round(uv[:, 1]).astype(int)
            inside = (cols >= 0) & (cols < camera.width) & (rows >= 0) & (rows < camera.height)
            index = np.flatnonzero(front)[inside]
            surface = hits["t_hit"][rows[inside], cols[inside]]  # z-depth of the truth's nearest surface there
            seen[index] |= np.abs(surface - z[index]) < tolerance_m + 0.01 * z[index]
            progress.advance(task)
    return seen


def evaluate_mesh(mesh: o3d.t.geometry.TriangleMesh, truth: o3d.t.geometry.TriangleMesh, config: CloudEvalConfig,
                  frames: list[Frame] | None = None, n_samples: int = 200_000) -> dict:
    """evaluate_cloud's dict for n_samples points uniform by area on `mesh` against `truth`; with `frames`, the
    truth's samples are only those the frames see (visible_samples), and "truth_visible_share" says what share of
    them that was. Raises InputError for a mesh without triangles."""
    if "indices" not in mesh.triangle or len(mesh.triangle.indices) == 0:
        raise InputError(None, "the reconstructed mesh has no triangles")
    points = sample_mesh(mesh, n_samples, config.seed)
    cloud = PointCloud(points, np.zeros_like(points, np.uint8))
    truth_samples = sample_mesh(truth, config.n_mesh_samples, config.seed)
    share = 1.0
    if frames:
        seen = visible_samples(truth, truth_samples, frames)
        if not seen.any():
            raise InputError(None, "none of the ground-truth mesh is visible from the frames (another world frame?)")
        share, truth_samples = float(seen.mean()), truth_samples[seen]
    return {**evaluate_cloud(cloud, truth, config, truth_samples), "truth_visible_share": share,
            "n_mesh_vertices": len(mesh.vertex.positions), "n_mesh_triangles": len(mesh.triangle.indices)}


def _sampled(legacy: o3d.geometry.TriangleMesh, n_points: int, seed: int,
             vertex_colours: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """(points (n, 3), colours (n, 3) in 0..1) sampled uniformly by area on a legacy mesh, coloured by
    vertex_colours (V, 3) in 0..1 when given, else by its own colours, else grey."""
    if vertex_colours is not None:
        legacy.vertex_colors = o3d.utility.Vector3dVector(np.asarray(vertex_colours, np.float64))
    o3d.utility.random.seed(seed)
    sampled = legacy.sample_points_uniformly(n_points)
    points = np.asarray(sampled.points)
    colours = np.clip(np.asarray(sampled.colors), 0, 1) if sampled.has_colors() else np.full((len(points), 3), 0.4)
    return points, colours


CLASS_COLOUR_NAMES = ("blue", "orange", "green", "red", "purple")
"""The names of tab10's first colours, class_colours' for classes 0-4 (for figure titles)."""


def class_colours(labels: np.ndarray) -> np.ndarray:
    """(V,) class indices -> (V, 3) colours in 0..1 (matplotlib's tab10, one per class; unlabelled: black)."""
    from matplotlib import colormaps

    table = np.array(colormaps["tab10"].colors)
    return np.where((labels < len(table))[:, None], table[np.minimum(labels, len(table) - 1)], 0.0)


def render_mesh_pair_png(mesh_path: str, truth: o3d.t.geometry.TriangleMesh, path, up: np.ndarray | None = None,
                         title: str = "reconstruction", n_points: int = 120_000, seed: int = 0,
                         labels: tuple[np.ndarray, np.ndarray] | None = None) -> None:
    """The reconstructed mesh (its file, read with its vertex colours) beside the truth (grey), as points sampled
    uniformly on each, seen from the same oblique view (matplotlib, off-screen), written atomically. up: (3,)
    world up, e.g. up_from_cameras() (None: the axis the truth spreads least along). labels: (the mesh's, the
    truth's) class per vertex: both drawn in class colours (class_colours) instead."""
    with o3d.utility.VerbosityContextManager(o3d.utility.VerbosityLevel.Error):
        legacy = o3d.io.read_triangle_mesh(str(mesh_path))
    ours, colours = _sampled(legacy, n_points, seed, None if labels is None else class_colours(labels[0]))
    if labels is None:
        reference = sample_mesh(truth, n_points, seed)
        truth_colours = np.full((len(reference), 3), 0.55)
    else:
        reference, truth_colours = _sampled(truth.to_legacy(), n_points, seed, class_colours(labels[1]))
    basis, centre = _view_basis(reference, up), reference.mean(0)
    # Both panels in the truth's box (10 % margin): stray fragments far outside would shrink the room to a dot.
    truth_view = (reference - centre) @ basis.T
    margin = 0.1 * np.ptp(truth_view, axis=0)
    low, high = truth_view.min(0) - margin, truth_view.max(0) + margin
    fig = Figure(figsize=(14, 6.5), dpi=110, layout="constrained")
    for i, (points, rgb, name) in enumerate([(ours, colours, title), (reference, truth_colours, "ground truth")]):
        ax = fig.add_subplot(1, 2, i + 1, projection="3d")
        view = (points - centre) @ basis.T
        keep = np.all((view >= low) & (view <= high), axis=1)
        ax.scatter(view[keep, 0], view[keep, 1], view[keep, 2], c=rgb[keep], s=0.3, linewidths=0,
                   depthshade=False)
        ax.set_xlim(low[0], high[0])
        ax.set_ylim(low[1], high[1])
        ax.set_zlim(low[2], high[2])
        ax.set_box_aspect(high - low)
        ax.view_init(elev=35, azim=-60)
        ax.set_title(name)
    save_figure(fig, path)
