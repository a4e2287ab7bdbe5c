"""Triangle-mesh PLY files that carry a semantic label per vertex (ScanNet's convention: a uchar vertex property
"label"), besides positions, normals and colours. Open3D reads and writes every other mesh file of the package but
neither writes nor reads extra vertex properties, so these go through trimesh's PLY writer and reader; Open3D still
reads the files (it skips the property it does not know)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import open3d as o3d

from sceneloc.runtime.atomic import atomic_output
from sceneloc.runtime.errors import InputError

LABEL_PROPERTY = "label"


def mesh_ply_bytes(mesh: o3d.t.geometry.TriangleMesh, labels: np.ndarray | None = None) -> bytes:
    """`mesh` (vertex positions, and normals and colours (float 0..1) where it has them) as binary PLY; labels:
    (V,) uint8 per vertex, the "label" property."""
    import trimesh

    positions = mesh.vertex.positions.numpy()
    extra = {}
    if "normals" in mesh.vertex:
        extra["vertex_normals"] = mesh.vertex.normals.numpy()
    if "colors" in mesh.vertex:
        extra["vertex_colors"] = np.clip(mesh.vertex.colors.numpy() * 255 + 0.5, 0, 255).astype(np.uint8)
    out = trimesh.Trimesh(vertices=positions, faces=mesh.triangle.indices.numpy(), process=False, **extra)
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape != (len(positions),):
            raise ValueError(f"labels must be one per vertex: {labels.shape} for {len(positions)} vertices")
        out.vertex_attributes[LABEL_PROPERTY] = labels.astype(np.uint8)
    return trimesh.exchange.ply.export_ply(out, encoding="binary", vertex_normal="normals" in mesh.vertex,
                                           include_attributes=labels is not None)


def write_mesh(path: str | Path, mesh: o3d.t.geometry.TriangleMesh, labels: np.ndarray | None = None) -> None:
    """mesh_ply_bytes written to `path` atomically. InputError if it cannot be written."""
    data = mesh_ply_bytes(mesh, labels)
    with atomic_output(Path(path)) as tmp:
        try:
            Path(tmp).write_bytes(data)
        except OSError as e:
            raise InputError(path, f"cannot write the mesh ({e.strerror})") from None


def read_vertex_labels(path: str | Path) -> np.ndarray | None:
    """(V,) uint8 labels of a PLY mesh's vertices, in Open3D's vertex order; None when it has none (or is no
    PLY)."""
    if Path(path).suffix.lower() != ".ply":
        return None
    import trimesh

    try:
        raw = trimesh.load(str(path), process=False).metadata.get("_ply_raw", {})
    except Exception as e:  # noqa: BLE001 - trimesh raises many kinds on a damaged file
        raise InputError(path, f"not a readable PLY mesh ({e})") from None
    vertex = raw.get("vertex", {}).get("data")
    if vertex is None or vertex.dtype.names is None or LABEL_PROPERTY not in vertex.dtype.names:
        return None
    return np.asarray(vertex[LABEL_PROPERTY]).astype(np.uint8).reshape(-1)
