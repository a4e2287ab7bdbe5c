"""sceneloc.sdf: the template graph's convolutions and k-rings against hand-computed values, the parameter budget of
the baseline, the metrics on meshes with known offsets, marching cubes of a known field, model files that
round-trip exactly, fitting a torus (every method learns it far better than it starts), and the `sceneloc sdf`
commands with their bad-input errors."""

from __future__ import annotations

import json

import numpy as np
import open3d as o3d
import pytest
import torch

from conftest import run_cli
from sceneloc.evaluate.cloud import read_mesh
from sceneloc.runtime.errors import InputError
from sceneloc.sdf.bench import CGAL_DATA
from sceneloc.sdf.evaluate import compare_meshes
from sceneloc.sdf.extract import drop_far_pieces, extract_mesh, write_mesh
from sceneloc.sdf.fit import SdfFitConfig, fit_sdf, similarity_loss
from sceneloc.sdf.graph import ChebConv, TemplateGraph
from sceneloc.sdf.model import (SdfConfig, SdfModel, build_net, count_parameters,
                                lgcl_cheb_parameters, load_sdf_model)
from sceneloc.sdf.shape import SampleConfig, Shape

pytestmark = pytest.mark.usefixtures("one_thread")

# An octahedron: each vertex touches four others, its opposite is two edges away, nothing is three away.
OCTAHEDRON_VERTICES = np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]], np.float64)
OCTAHEDRON_TRIANGLES = np.array([[0, 2, 4], [2, 1, 4], [1, 3, 4], [3, 0, 4], [2, 0, 5], [1, 2, 5], [3, 1, 5],
                                 [0, 3, 5]])


def t_mesh(legacy: o3d.geometry.TriangleMesh) -> o3d.t.geometry.TriangleMesh:
    """Geometry only, as sceneloc.evaluate.cloud.read_mesh returns it."""
    mesh = o3d.t.geometry.TriangleMesh()
    mesh.vertex.positions = o3d.core.Tensor(np.asarray(legacy.vertices, dtype=np.float32))
    mesh.triangle.indices = o3d.core.Tensor(np.asarray(legacy.triangles, dtype=np.int32))
    return mesh


def sphere(radius: float, resolution: int = 60) -> o3d.t.geometry.TriangleMesh:
    return t_mesh(o3d.geometry.TriangleMesh.create_sphere(radius, resolution))


def torus() -> o3d.t.geometry.TriangleMesh:
    """A 1 m wide ring (the tube 0.2 m across): hole, saddles and convex parts, watertight."""
    return t_mesh(o3d.geometry.TriangleMesh.create_torus(torus_radius=0.4, tube_radius=0.1, radial_resolution=60,
                                                         tubular_resolution=30))


# ------------------------------------------------------------------------------------------------------- graph


def test_octahedron_graph_edges_normals_and_rings():
    graph = TemplateGraph.from_triangles(OCTAHEDRON_VERTICES, OCTAHEDRON_TRIANGLES)
    assert len(graph.edges) == 12 and (graph.degrees() == 4).all()
    assert np.allclose(graph.normals, OCTAHEDRON_VERTICES, atol=1e-6)  # outward, one per vertex
    one, two, three = (a.to_dense().numpy() for a in graph.ring_averagers(3))
    assert np.allclose(one[0], [0, 0, 0.25, 0.25, 0.25, 0.25])
    assert np.allclose(two, np.eye(6)[[1, 0, 3, 2, 5, 4]])  # the opposite vertex
    assert np.allclose(three, np.eye(6))  # an empty ring averages the vertex itself
    frames = graph.tangent_frames()
    assert np.allclose(frames @ frames.transpose(0, 2, 1), np.eye(3), atol=1e-6)
    assert np.allclose(frames[:, 2], OCTAHEDRON_VERTICES, atol=1e-6)


def test_chebyshev_convolution_matches_the_recurrence_by_hand():
    graph = TemplateGraph.from_triangles(OCTAHEDRON_VERTICES, OCTAHEDRON_TRIANGLES)
    torch.manual_seed(0)
    conv = ChebConv(graph, 2, 3, 3)
    x = torch.randn(6, 2)
    adjacency = np.zeros((6, 6))
    adjacency[graph.edges[:, 0], graph.edges[:, 1]] = adjacency[graph.edges[:, 1], graph.edges[:, 0]] = 1
    laplacian = -adjacency / 4  # -D^-1/2 A D^-1/2 with every degree 4
    t0 = x.numpy().astype(np.float64)
    t1 = laplacian @ t0
    t2 = 2 * laplacian @ t1 - t0
    w = conv.weight.detach().numpy().astype(np.float64)
    expected = t0 @ w[0] + t1 @ w[1] + t2 @ w[2] + conv.bias.detach().numpy()
    assert np.allclose(conv(x).detach().numpy(), expected, atol=1e-6)


def test_similarity_loss_is_zero_for_equal_codes_and_the_mean_ring_gap_otherwise():
    graph = TemplateGraph.from_triangles(OCTAHEDRON_VERTICES, OCTAHEDRON_TRIANGLES)
    rings = graph.ring_averagers(2)
    assert similarity_loss(torch.ones(6, 4), rings).item() == 0.0
    codes = torch.zeros(6, 1)
    codes[0] = 1.0
    # Ring 1: vertex 0 is 1 from its neighbours' mean 0; its 4 neighbours are 1/4 from theirs; vertex 1 is 0 from
    # its neighbours' 0. Ring 2: vertices 0 and 1 are 1 apart from their opposite. Means over 6 vertices.
    ring1, ring2 = (1 + 4 * 0.25) / 6, 2 / 6
    assert similarity_loss(codes, rings).item() == pytest.approx((ring1 + ring2) / 2)


# ------------------------------------------------------------------------------------------------------- model


def test_the_baseline_has_lgcl_chebs_parameter_count():
    shape = Shape.from_mesh(torus())
    graph = shape.template(400)
    config = SdfConfig()
    lgcl = count_parameters(build_net(config, graph))
    assert lgcl["net"] + lgcl["latent"] == lgcl_cheb_parameters(config, graph.num_vertices)
    assert lgcl["latent"] == graph.num_vertices * config.vertex_code
    baseline = count_parameters(build_net(SdfConfig(method="deepsdf"), graph))
    assert baseline["latent"] == config.global_code
    total = lambda p: p["net"] + p["latent"]  # noqa: E731
    # The width is an integer: one step of it changes the count by about 7 x 2 x width.
    assert abs(total(baseline) - total(lgcl)) < 0.02 * total(lgcl)


def untrained(method: str, kernel: str, mesh: o3d.t.geometry.TriangleMesh, key_points: int) -> SdfModel:
    shape = Shape.from_mesh(mesh)
    graph = shape.template(key_points)
    torch.manual_seed(0)
    return SdfModel(build_net(SdfConfig(method=method, kernel=kernel), graph), graph, shape.normalisation)


def test_untrained_lgcl_is_its_tangent_planes_and_marching_cubes_finds_them_facing_out(tmp_path):
    # With the decoder's last layer zero, LGCL's field is the height above the nearest key point's tangent plane:
    # on a finely tessellated sphere, close to the sphere itself. Its mesh must lie on the sphere and face out.
    model = untrained("lgcl", "cheb", sphere(0.5, 40), 4000)
    points = np.random.default_rng(0).normal(size=(2000, 3))
    points = points / np.linalg.norm(points, axis=1, keepdims=True) * np.random.default_rng(1).uniform(0.3, 0.7,
                                                                                                       (2000, 1))
    radius, sdf = np.linalg.norm(points, axis=1), model.sdf(points)
    assert np.abs(sdf - (radius - 0.5)).max() < 0.01
    away = np.abs(radius - 0.5) > 0.01
    assert (np.sign(sdf[away]) == np.sign(radius[away] - 0.5)).all()  # negative inside
    vertices, triangles = extract_mesh(model, 48, progress=False)
    assert np.abs(np.linalg.norm(vertices, axis=1) - 0.5).max() < 0.01
    corners = vertices[triangles]
    normals = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    assert np.mean(np.einsum("ij,ij->i", normals, corners.mean(1)) > 0) > 0.999
    write_mesh(tmp_path / "s.ply", vertices, triangles)
    assert len(read_mesh(tmp_path / "s.ply").triangle.indices) == len(triangles)


def test_pieces_far_from_every_key_point_are_dropped():
    model = untrained("lgcl", "cheb", sphere(0.5, 20), 500)
    near = o3d.geometry.TriangleMesh.create_sphere(1.0, 20)  # the shape itself (normalised: radius 1)
    far = o3d.geometry.TriangleMesh.create_sphere(0.1, 10).translate((1.6, 0, 0))  # edge lengths out
    both = near + far
    vertices, faces = drop_far_pieces(np.asarray(both.vertices), np.asarray(both.triangles).astype(np.int32), model)
    assert np.array_equal(vertices, np.asarray(near.vertices)) and np.array_equal(faces, np.asarray(near.triangles))


@pytest.mark.parametrize("method,kernel", [("lgcl", "cheb"), ("lgcl", "vc"), ("deepsdf", "cheb")])
def test_model_files_round_trip_exactly(tmp_path, method, kernel):
    model = untrained(method, kernel, torus(), 300)
    with torch.no_grad():  # weights that are not their initial values
        for p in model.net.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    model.training = {"fit_s": 1.5, "note": "kept"}
    model.save(tmp_path / "m.sdf")
    loaded = load_sdf_model(tmp_path / "m.sdf")
    points = np.random.default_rng(0).uniform(-0.6, 0.6, (5000, 3))
    assert np.array_equal(loaded.sdf(points), model.sdf(points))
    assert loaded.name == model.name and loaded.training == model.training
    assert np.array_equal(loaded.graph.edges, model.graph.edges)


def test_the_baseline_starts_as_a_sphere():
    # SAL's initialisation, |x| - 0.5 in normalised units: exact on average, noisy for a finite width (108 here).
    model = untrained("deepsdf", "cheb", torus(), 1500)
    directions = np.random.default_rng(0).normal(size=(500, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    inside, outside = model.sdf_normalised(directions * 0.25), model.sdf_normalised(directions)
    assert (inside < 0).all() and (outside > 0).all()
    assert abs(inside.mean() + 0.25) < 0.1 and abs(outside.mean() - 0.5) < 0.1


def test_a_closed_mesh_wound_inwards_is_turned_outwards():
    inwards = sphere(0.5, 20)
    inwards.triangle.indices = o3d.core.Tensor(inwards.triangle.indices.numpy()[:, ::-1].copy())
    graph = Shape.from_mesh(inwards).template(1000)
    assert (np.einsum("ij,ij->i", graph.normals, graph.vertices) > 0).all()


def test_a_mesh_without_area_is_refused():
    flat = o3d.t.geometry.TriangleMesh()
    flat.vertex.positions = o3d.core.Tensor(np.array([[0, 0, 0], [1, 0, 0], [2, 0, 0]], np.float32))
    flat.triangle.indices = o3d.core.Tensor(np.array([[0, 1, 2]], np.int32))
    with pytest.raises(ValueError, match="area"):
        Shape.from_mesh(flat)


def test_loading_anything_else_names_the_file(tmp_path):
    (tmp_path / "junk.sdf").write_bytes(b"not a model")
    with pytest.raises(InputError, match="junk.sdf"):
        load_sdf_model(tmp_path / "junk.sdf")


# ----------------------------------------------------------------------------------------------------- metrics


def test_metrics_of_a_sphere_grown_by_2_mm():
    # Every point of the 52 mm sphere is 2 mm from the 50 mm one (up to the tessellation): ED 2 mm exactly; CD 2 mm
    # each way plus the sampling's own gap, which the same mesh against itself measures; HD at least 2 mm.
    truth, grown = sphere(0.05), sphere(0.052)
    result, floor = compare_meshes(grown, truth, 20_000), compare_meshes(truth, truth, 20_000)
    assert result["ed_mm"]["mean"] == pytest.approx(2.0, abs=0.01) and result["ed_mm"]["over_5"] == 0.0
    assert 4.0 < result["cd_mm"] < 4.0 + floor["cd_mm"] and floor["cd_mm"] < 2.0
    assert 2.0 <= result["hd_mm"] < 2.0 + floor["hd_mm"]



# --------------------------------------------------------------------------------------------------------- fit


def quick_fit(method: str, kernel: str, steps: int) -> SdfFitConfig:
    config = SdfFitConfig(steps=steps, batch_surface=1024, batch_space=1024,
                          samples=SampleConfig(surface=20_000, near=20_000, uniform=4_000))
    config.model.method, config.model.kernel, config.model.template_vertices = method, kernel, 1000
    return config


@pytest.mark.parametrize("method,kernel", [("lgcl", "cheb"), ("lgcl", "vc"), ("deepsdf", "cheb")])
def test_fitting_learns_a_torus(method, kernel):
    # A fitted model must be within a millimetre of the mesh's exact signed distance near the surface and clearly
    # better than the model it started as (fitted for 1 step, same samples): for LGCL its key points' tangent
    # planes (1.2 mm off), for the baseline a sphere.
    mesh = torus()
    shape = Shape.from_mesh(mesh)
    rng = np.random.default_rng(5)
    surface = mesh.sample_points_uniformly(3000).point.positions.numpy().astype(np.float64)
    points = surface + rng.normal(size=surface.shape) * 0.02
    truth = shape.distance_to(shape.normalisation.to_model(points), signed=True) * shape.normalisation.scale

    def error(steps: int) -> float:
        model = fit_sdf(shape, quick_fit(method, kernel, steps), progress=False)
        assert model.training["signed_targets"]  # the torus is watertight
        return float(np.abs(model.sdf(points) - truth).mean())

    start, fitted = error(1), error(300)
    assert fitted < 0.001 and fitted < 0.75 * start


# ------------------------------------------------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def torus_file(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sdf")
    mesh = torus()
    write_mesh(folder / "torus.ply", mesh.vertex.positions.numpy(), mesh.triangle.indices.numpy())
    return folder / "torus.ply"


def test_fit_mesh_evaluate_commands(torus_file, tmp_path):
    code, out = run_cli("sdf", "fit", torus_file, "-o", tmp_path / "t.sdf", "--steps", "150", "--template-vertices",
                        "300", "--set", "samples.surface=20000", "--set", "samples.near=20000",
                        "--set", "batch_surface=1024", "--set", "batch_space=1024")
    assert code == 0, out
    assert "LGCL-Cheb" in out
    code, out = run_cli("sdf", "mesh", tmp_path / "t.sdf", "-o", tmp_path / "t.ply", "--resolution", "64")
    assert code == 0, out
    for suffix in (".stl", ".obj", ".off"):  # the same mesh in every format the command offers
        code, out = run_cli("sdf", "mesh", tmp_path / "t.sdf", "-o", tmp_path / f"t{suffix}", "--resolution", "64")
        assert code == 0, out
        assert len(read_mesh(tmp_path / f"t{suffix}").triangle.indices) == len(read_mesh(tmp_path / "t.ply")
                                                                               .triangle.indices)
    code, out = run_cli("sdf", "evaluate", tmp_path / "t.ply", "--mesh", torus_file, "-o", tmp_path / "e.json")
    assert code == 0, out
    result = json.loads((tmp_path / "e.json").read_text())
    # The tube is 200 mm across: a reconstruction off by more than 10 mm on average has not learnt it.
    assert result["cd_mm"] < 10.0 and result["ed_mm"]["mean"] < 5.0


@pytest.mark.parametrize("args,message", [
    (["fit", "{missing}", "-o", "{tmp}/m.sdf"], "mesh file not found"),
    (["fit", "{torus}", "-o", "{tmp}/m.sdf", "--method", "nerf"], "--method"),
    (["fit", "{torus}", "-o", "{tmp}/m.sdf", "--set", "lambda_sim=-1"], "lambda_sim"),
    (["fit", "{torus}", "-o", "{torus}"], "torus.ply"),
    (["mesh", "{torus}", "-o", "{tmp}/m.ply"], "torus.ply"),
    (["mesh", "{tmp}/m.sdf", "-o", "{tmp}/m.xyz"], "unsupported mesh format"),
    (["mesh", "{tmp}/m.sdf", "-o", "{tmp}/m.ply", "--resolution", "4"], "--resolution"),
    (["evaluate", "{missing}", "--mesh", "{torus}"], "mesh file not found"),
    (["bench", "--out", "{tmp}/b", "--meshes", "no_such_mesh"], "no_such_mesh" if CGAL_DATA.is_file() else "CGAL"),
    (["bench", "--out", "{torus}"], "must be a folder"),
    (["evaluate", "{broken}", "--mesh", "{torus}"], "refers to vertex"),
])
def test_bad_input_is_one_line_and_exit_2(torus_file, tmp_path, args, message):
    (tmp_path / "m.sdf").write_bytes(b"junk")
    (tmp_path / "broken.ply").write_text("ply\nformat ascii 1.0\nelement vertex 3\nproperty float x\nproperty float y\n"
                                         "property float z\nelement face 1\nproperty list uchar int vertex_indices\n"
                                         "end_header\n0 0 0\n1 0 0\n0 1 0\n3 0 1 7\n")  # vertex 7 of 3
    fill = {"{missing}": str(tmp_path / "missing.ply"), "{torus}": str(torus_file), "{tmp}": str(tmp_path),
            "{broken}": str(tmp_path / "broken.ply")}
    filled = []
    for a in args:
        for k, v in fill.items():
            a = a.replace(k, v)
        filled.append(a)
    code, out = run_cli("sdf", *filled)
    assert code == 2, out
    assert message in out
    assert len(out.strip().splitlines()) == 1, out
