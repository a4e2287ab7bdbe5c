"""What `sceneloc sdf fit` learns from: a triangle mesh in the model's normalised frame, its training samples (the
thesis's IGR/SAL preparation, section 2.4.1: points on the surface with their normals, and points around it with
their distance to the surface) and the template whose vertices are LGCL's key points.

The distances are exact point-to-triangle distances (Open3D's RaycastingScene), signed by ray parity when the mesh
is watertight; otherwise unsigned (sign-agnostic learning, Eq. 2.5) and the normals give the sign. Meshes are
cleaned (duplicate and unreferenced vertices, degenerate triangles) and a closed mesh wound inwards is turned
outwards, so that normals and tangent planes face out."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import open3d as o3d

from sceneloc.evaluate.cloud import legacy_mesh
from sceneloc.sdf.graph import TemplateGraph
from sceneloc.sdf.model import Normalisation


@dataclass
class SampleConfig:
    """How the training samples are drawn (normalised units: the shape fits in the unit sphere)."""

    surface: int = 200_000
    """Points on the surface, uniform by area, with their triangle's normal (the thesis: 300,000)."""
    near: int = 200_000
    """Points around the surface: a surface point moved by a Gaussian of sigma_near or sigma_far, half each (the
    thesis: 300,000 from two Gaussians)."""
    uniform: int = 20_000
    """Points uniform in the box [-1.1, 1.1]^3, for the far field."""
    sigma_near: float = 0.005
    """Standard deviation of the close Gaussian."""
    sigma_far: float = 0.05
    """Standard deviation of the wide Gaussian."""
    signed: str = "auto"
    """Distance targets: unsigned (the thesis's sign-agnostic loss, Eq. 2.5: any triangle soup), signed (inside
    negative; needs a watertight mesh) or auto (signed when the mesh is watertight). Signed targets matter for LGCL:
    with unsigned ones the sign deep inside is free, and where regions from opposite sides meet (near the medial
    axis) a decoder left positive grows an inner sheet."""

    def validate(self) -> None:
        if not (self.surface >= 1 and self.near >= 0 and self.uniform >= 0 and self.near + self.uniform >= 1):
            raise ValueError("sample counts: surface at least 1, near and uniform zero or more and not both zero")
        if not (self.sigma_near > 0 and self.sigma_far > 0):
            raise ValueError("sigma_near and sigma_far must be positive")
        if self.signed not in ("auto", "signed", "unsigned"):
            raise ValueError(f"signed must be auto, signed or unsigned, not {self.signed!r}")


@dataclass
class Shape:
    """A mesh in the normalised frame: (V, 3) float32 vertices, (F, 3) int64 triangles, and the normalisation that
    maps it back to the file's units."""

    vertices: np.ndarray
    triangles: np.ndarray
    normalisation: Normalisation

    watertight: bool = False
    """Whether the mesh is closed (edge- and vertex-manifold, no boundary edge): distances can be signed."""

    @classmethod
    def from_mesh(cls, mesh: o3d.t.geometry.TriangleMesh) -> "Shape":
        """The shape of a mesh as sceneloc.evaluate.cloud.read_mesh returns it, cleaned, and turned outwards when
        it is closed and wound inwards (negative signed volume). ValueError for a mesh without area."""
        legacy = legacy_mesh(mesh.vertex.positions.numpy(), mesh.triangle.indices.numpy())
        legacy.remove_duplicated_vertices()
        legacy.remove_degenerate_triangles()
        legacy.remove_unreferenced_vertices()
        vertices, triangles = np.asarray(legacy.vertices), np.asarray(legacy.triangles).astype(np.int64)
        if len(triangles) == 0 or legacy.get_surface_area() <= 0:
            raise ValueError("the mesh has no triangle with an area")
        # Open3D's is_watertight also searches for self-intersections, quadratic in the triangles (14 s on the
        # bunny); closedness is what signing by ray parity needs.
        watertight = bool(legacy.is_edge_manifold(allow_boundary_edges=False) and legacy.is_vertex_manifold())
        if watertight:
            corners = vertices[triangles]
            volume = np.einsum("ij,ij->i", corners[:, 0], np.cross(corners[:, 1], corners[:, 2])).sum() / 6
            if volume < 0:
                triangles = triangles[:, ::-1].copy()
        normalisation = Normalisation.of(vertices)
        return cls(normalisation.to_model(vertices), triangles, normalisation, watertight)

    def legacy(self) -> o3d.geometry.TriangleMesh:
        mesh = legacy_mesh(self.vertices, self.triangles)
        mesh.compute_triangle_normals()
        return mesh

    def template(self, vertices: int) -> TemplateGraph:
        """The template graph: the shape decimated (Open3D's quadric decimation) to about `vertices` vertices, or
        the shape itself when it has no more than that."""
        mesh = self.legacy()
        if len(self.vertices) > vertices:
            mesh = mesh.simplify_quadric_decimation(target_number_of_triangles=2 * vertices)
            mesh.remove_degenerate_triangles()
            mesh.remove_unreferenced_vertices()
        return TemplateGraph.from_triangles(np.asarray(mesh.vertices), np.asarray(mesh.triangles))

    def distance_to(self, points: np.ndarray, signed: bool = False) -> np.ndarray:
        """(N,) float32 distances of normalised points (N, 3) to the surface: unsigned, or signed (negative inside,
        by ray parity: meaningful for a watertight mesh)."""
        scene = o3d.t.geometry.RaycastingScene()
        scene.add_triangles(o3d.core.Tensor(self.vertices), o3d.core.Tensor(self.triangles.astype(np.uint32)))
        query = o3d.core.Tensor(np.ascontiguousarray(points, dtype=np.float32))
        return (scene.compute_signed_distance(query) if signed else scene.compute_distance(query)).numpy()

    def surface_samples(self, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """(n, 3) float32 points uniform by area and their (n, 3) unit outward normals (the triangles')."""
        o3d.utility.random.seed(seed)
        cloud = self.legacy().sample_points_uniformly(n, use_triangle_normal=True)
        return np.asarray(cloud.points, dtype=np.float32), np.asarray(cloud.normals, dtype=np.float32)


@dataclass
class TrainingSamples:
    """surface (S, 3) and normals (S, 3); space (Q, 3) points around the surface and their (Q,) distances,
    signed (inside negative) when `signed`, else unsigned; all float32, normalised frame."""

    surface: np.ndarray
    normals: np.ndarray
    space: np.ndarray
    distances: np.ndarray
    signed: bool

    @classmethod
    def draw(cls, shape: Shape, config: SampleConfig, seed: int) -> "TrainingSamples":
        config.validate()
        rng = np.random.default_rng(seed)
        surface, normals = shape.surface_samples(config.surface + config.near, seed)
        centres, surface, normals = surface[config.surface:], surface[:config.surface], normals[:config.surface]
        sigma = np.where(np.arange(config.near) % 2 == 0, config.sigma_near, config.sigma_far)[:, None]
        space = np.concatenate([centres + rng.normal(size=centres.shape) * sigma,
                                rng.uniform(-1.1, 1.1, size=(config.uniform, 3))]).astype(np.float32)
        signed = config.signed == "signed" or (config.signed == "auto" and shape.watertight)
        return cls(surface, normals, space, shape.distance_to(space, signed), signed)
