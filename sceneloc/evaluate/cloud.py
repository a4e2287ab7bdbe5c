"""Quality of a point cloud against a ground-truth mesh: accuracy (cloud -> mesh distances), completeness (mesh ->
cloud distances), precision / recall / F-score at a distance threshold; its JSON + markdown report, and a PNG
rendering of the coloured cloud (matplotlib, off-screen)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import open3d as o3d
from matplotlib.figure import Figure
from rich.table import Table
from scipy.spatial import cKDTree

from sceneloc.runtime.atomic import write_text_atomic
from sceneloc.runtime.errors import InputError
from sceneloc.evaluate.plots import save_figure
from sceneloc.evaluate.report import metric_table, with_suffix, write_json
from sceneloc.export.points import PointCloud, check_ply_length
from sceneloc.geometry import Rigid3


@dataclass
class CloudEvalConfig:
    """How a cloud is compared with a mesh."""

    tau: float = 0.05
    """Distance threshold (metres) of precision and recall: a point counts when it is strictly closer."""
    n_mesh_samples: int = 200_000
    """Points sampled uniformly (by area) on the mesh for completeness and recall."""
    seed: int = 0
    """Seed of the mesh sampling (Open3D's global generator is seeded with it)."""

    def validate(self) -> None:
        """Raise ValueError naming the first field that cannot work."""
        if not self.tau > 0:
            raise ValueError(f"tau must be positive, got {self.tau}")
        if self.n_mesh_samples < 1:
            raise ValueError(f"n_mesh_samples must be at least 1, got {self.n_mesh_samples}")


def read_mesh(path: str | Path) -> o3d.t.geometry.TriangleMesh:
    """A triangle mesh file (PLY, OBJ, ... as Open3D reads them) -> its geometry only (float32 vertex positions,
    int32 triangles). Raises InputError for a missing, unreadable or triangle-less file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "mesh file not found")
    if path.suffix.lower() == ".ply":
        check_ply_length(path)
    try:
        with o3d.utility.VerbosityContextManager(o3d.utility.VerbosityLevel.Error):
            mesh = o3d.t.io.read_triangle_mesh(str(path))
    except Exception as e:  # Open3D's readers raise assorted C++ errors (IndexError, RuntimeError) on bad files
        raise InputError(path, f"cannot read mesh ({type(e).__name__}: {e})") from None
    if "indices" not in mesh.triangle or len(mesh.triangle.indices) == 0:
        raise InputError(path, "no triangles read (not a mesh, unsupported or damaged file)")
    # Open3D reads a triangle's indices as written: out-of-range ones would reach the ray caster's memory.
    indices, positions = mesh.triangle.indices.numpy(), mesh.vertex.positions.numpy()
    if indices.min() < 0 or indices.max() >= len(positions):
        raise InputError(path, f"a triangle refers to vertex {int(indices.max())} of {len(positions)} (damaged file)")
    if not np.isfinite(positions).all():
        raise InputError(path, "a vertex position is not finite (damaged file)")
    geometry = o3d.t.geometry.TriangleMesh()
    geometry.vertex.positions = mesh.vertex.positions.to(o3d.core.float32)
    geometry.triangle.indices = mesh.triangle.indices.to(o3d.core.int32)
    return geometry


def legacy_mesh(vertices: np.ndarray, triangles: np.ndarray) -> o3d.geometry.TriangleMesh:
    """Open3D's legacy mesh of (V, 3) vertices and (F, 3) triangle indices (any numeric dtypes): the form its
    cleaning, decimation, normals, clustering and writers take."""
    return o3d.geometry.TriangleMesh(o3d.utility.Vector3dVector(np.asarray(vertices, dtype=np.float64)),
                                     o3d.utility.Vector3iVector(np.asarray(triangles, dtype=np.int32)))


def sample_mesh(mesh: o3d.t.geometry.TriangleMesh, n: int, seed: int) -> np.ndarray:
    """(n, 3) float32 points uniform by area on `mesh` (geometry only, as read_mesh returns), reproducible for a
    seed."""
    o3d.utility.random.seed(seed)
    return mesh.sample_points_uniformly(n).point.positions.numpy()


def evaluate_cloud(cloud: PointCloud, mesh: o3d.t.geometry.TriangleMesh, config: CloudEvalConfig,
                   mesh_samples: np.ndarray | None = None) -> dict:
    """Compares the cloud with the mesh (geometry only, as read_mesh returns). Distances in metres. mesh_samples:
    (M, 3) points of the mesh to measure completeness and recall on (default: config.n_mesh_samples uniform by
    area; evaluate/mesh.py passes the ones the frames see).

    Returns {"n_points", "n_mesh_samples", "tau_m", "accuracy_mean_m", "accuracy_median_m" (cloud point -> mesh
    surface, exact, Open3D ray-casting scene), "completeness_mean_m", "completeness_median_m" (mesh sample ->
    nearest cloud point, KD-tree), "precision" (share of cloud points closer than tau to the mesh), "recall" (share
    of mesh samples closer than tau to the cloud), "fscore" (their harmonic mean, 0 when both are 0)}.
    Raises InputError for an empty cloud, ValueError for a bad config."""
    config.validate()
    if len(cloud.xyz) == 0:
        raise InputError(None, "the point cloud has no points to evaluate")
    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(mesh)
    accuracy = scene.compute_distance(o3d.core.Tensor(np.ascontiguousarray(cloud.xyz, dtype=np.float32))).numpy()
    samples = sample_mesh(mesh, config.n_mesh_samples, config.seed) if mesh_samples is None else mesh_samples
    completeness = cKDTree(cloud.xyz).query(samples, k=1)[0]
    precision = float(np.mean(accuracy < config.tau))
    recall = float(np.mean(completeness < config.tau))
    fscore = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {"n_points": len(cloud.xyz), "n_mesh_samples": len(samples), "tau_m": config.tau,
            "accuracy_mean_m": float(np.mean(accuracy)), "accuracy_median_m": float(np.median(accuracy)),
            "completeness_mean_m": float(np.mean(completeness)),
            "completeness_median_m": float(np.median(completeness)),
            "precision": precision, "recall": recall, "fscore": fscore}


def cloud_summary_rows(result: dict) -> list[tuple[str, str]]:
    """(metric, formatted value) rows shared by the markdown and terminal tables."""
    tau_cm = result["tau_m"] * 100
    return [("cloud points", f"{result['n_points']:,}"),
            ("mesh samples", f"{result['n_mesh_samples']:,}"),
            ("accuracy, mean / median (cloud -> mesh)",
             f"{result['accuracy_mean_m'] * 100:.2f} / {result['accuracy_median_m'] * 100:.2f} cm"),
            ("completeness, mean / median (mesh -> cloud)",
             f"{result['completeness_mean_m'] * 100:.2f} / {result['completeness_median_m'] * 100:.2f} cm"),
            (f"precision (< {tau_cm:g} cm)", f"{result['precision'] * 100:.1f} %"),
            (f"recall (< {tau_cm:g} cm)", f"{result['recall'] * 100:.1f} %"),
            (f"F-score (< {tau_cm:g} cm)", f"{result['fscore'] * 100:.1f} %")] + _semantic_rows(result)


def _semantic_rows(result: dict) -> list[tuple[str, str]]:
    """A labelled mesh's rows (evaluate/semantic.mesh_semantic_scores), when the result has them."""
    semantic = result.get("semantic")
    if not semantic:
        return []
    rows = [(f"semantic mIoU ({semantic['n_vertices_scored']:,} vertices within {result['tau_m'] * 100:g} cm)",
             f"{semantic['miou'] * 100:.1f} %"), ("vertex label accuracy", f"{semantic['accuracy'] * 100:.1f} %")]
    return rows + [(f"IoU {name}", "-" if iou is None else f"{iou * 100:.1f} %")
                   for name, iou in semantic["iou"].items()]


def format_cloud_table(result: dict) -> Table:
    """A rich table of an evaluate_cloud() result."""
    return metric_table("Point cloud vs mesh", cloud_summary_rows(result))


def cloud_report_paths(out_prefix: str | Path) -> list[Path]:
    """The files write_cloud_report writes for `out_prefix`: <prefix>.json and <prefix>.md."""
    return [with_suffix(Path(out_prefix), ".json"), with_suffix(Path(out_prefix), ".md")]


def write_cloud_report(result: dict, out_prefix: str | Path) -> list[Path]:
    """Writes <prefix>.json (the evaluate_cloud() dict) and <prefix>.md (summary table). Returns both paths."""
    out_prefix = Path(out_prefix)
    json_path, md_path = cloud_report_paths(out_prefix)
    write_json(json_path, result)
    lines = [f"# Point cloud vs mesh: {out_prefix.name}", "", "| metric | value |", "|---|---:|"]
    lines += [f"| {metric} | {value} |" for metric, value in cloud_summary_rows(result)]
    lines += ["", "Accuracy: distance of each cloud point to the mesh surface. Completeness: distance of points "
                  "sampled uniformly on the mesh to the nearest cloud point. F-score: harmonic mean of precision and "
                  "recall.", ""]
    write_text_atomic(md_path, "\n".join(lines))
    return [json_path, md_path]


def _view_basis(xyz: np.ndarray, up: np.ndarray | None) -> np.ndarray:
    """(3, 3) rows: two horizontal axes and `up` (unit). Without `up`, the world axis along which the cloud spreads
    least is taken as up (the height of a room is usually its smallest extent)."""
    if up is None:
        up = np.eye(3)[int(np.argmin(np.ptp(xyz, axis=0)))]
    up = np.asarray(up, np.float64) / np.linalg.norm(up)
    # The world axis least aligned with up, made horizontal, is the first view axis.
    first = np.eye(3)[int(np.argmin(np.abs(up)))]
    first = first - up * (first @ up)
    first /= np.linalg.norm(first)
    return np.stack([first, np.cross(up, first), up])


def render_cloud_png(cloud: PointCloud, path: str | Path, up: np.ndarray | None = None, max_points: int = 200_000,
                     seed: int = 0, title: str | None = None, elevation_deg: float = 35.0,
                     azimuth_deg: float = -60.0) -> None:
    """An oblique 3D view of the coloured cloud (at most max_points, a seeded random subset), equal axes, written
    atomically as a PNG (or the format the suffix names). up: (3,) world up vector, e.g. up_from_cameras(); None:
    the world axis along which the cloud spreads least. Raises InputError for an empty cloud."""
    if len(cloud.xyz) == 0:
        raise InputError(path, "the point cloud has no points to draw")
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(cloud.xyz), max_points, replace=False) if len(cloud.xyz) > max_points else \
        np.arange(len(cloud.xyz))
    xyz = cloud.xyz[pick].astype(np.float64)
    view = (xyz - xyz.mean(0)) @ _view_basis(xyz, up).T
    fig = Figure(figsize=(8, 7), dpi=120, layout="constrained")
    ax = fig.add_subplot(projection="3d")
    # Sparse clouds get bigger dots so that they stay visible.
    size = float(np.clip(3e4 / len(pick), 0.5, 6.0))
    ax.scatter(view[:, 0], view[:, 1], view[:, 2], c=cloud.rgb[pick] / 255.0, s=size, marker="o", linewidths=0,
               depthshade=False)
    ax.set_box_aspect(np.maximum(np.ptp(view, axis=0), 1e-6))
    ax.view_init(elev=elevation_deg, azim=azimuth_deg)
    ax.set_xlabel("m")
    ax.set_ylabel("m")
    ax.set_zlabel("up (m)")
    ax.set_title(title or f"{len(cloud.xyz):,} points" + (f" ({len(pick):,} drawn)" if len(pick) < len(cloud.xyz)
                                                          else ""))
    save_figure(fig, path)


def up_from_cameras(poses: list[Rigid3]) -> np.ndarray | None:
    """(3,) unit world up vector from cam_from_world poses: the mean of the cameras' -y axes, since cameras are held
    roughly upright (OpenCV axes: y points down the image). None when the poses do not agree on one."""
    down = np.mean([pose.rotation[1] for pose in poses], axis=0) if poses else np.zeros(3)
    norm = float(np.linalg.norm(down))
    return -down / norm if norm > 0.1 else None
