"""`sceneloc sdf`: fit a signed-distance model to a mesh (LGCL or the DeepSDF-style baseline), extract its zero
level set as a mesh, score a mesh against the true one, and the benchmark of the thesis's tables. Thin commands
over sceneloc.sdf's functions."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape

from sceneloc.runtime.atomic import check_writable
from sceneloc.runtime.console import console, fail as _fail

sdf_app = typer.Typer(no_args_is_help=True, help="Signed-distance shapes with local geometry codes (LGCL, thesis "
                                                 "chapter 2).")
METHOD_NAMES = {"lgcl": ("lgcl", "cheb"), "lgcl-cheb": ("lgcl", "cheb"), "lgcl-vc": ("lgcl", "vc"),
                "deepsdf": ("deepsdf", "cheb")}
"""--method values -> (SdfConfig.method, SdfConfig.kernel); the baseline is sized by LGCL-Cheb's count."""


@sdf_app.command("fit")
def fit_command(
    mesh: Path = typer.Argument(..., help="Triangle mesh to learn (.off, .ply, .obj, ...)"),
    output: Path = typer.Option(..., "-o", "--output", help="Model file to write (.sdf or .safetensors)"),
    method: str = typer.Option("lgcl", "--method", help="lgcl (= lgcl-cheb) | lgcl-vc | deepsdf (one global code, "
                                                        "as many parameters as LGCL-Cheb)"),
    steps: Optional[int] = typer.Option(None, "--steps", help="Optimiser steps (default 2000)"),
    template_vertices: Optional[int] = typer.Option(None, "--template-vertices",
                                                    help="Key points: the mesh decimated to about this many "
                                                         "vertices (default 1500)"),
    overrides: Optional[list[str]] = typer.Option(None, "--set", help="Any SdfFitConfig field, e.g. --set "
                                                                      "lambda_sim=0.1 --set samples.surface=100000"),
):
    """Learn a shape's signed distance function from its mesh (surface samples with normals, distances around)."""
    from sceneloc.evaluate.cloud import read_mesh
    from sceneloc.runtime.config_overrides import configure
    from sceneloc.sdf.fit import SdfFitConfig, fit_sdf
    from sceneloc.sdf.shape import Shape

    if method not in METHOD_NAMES:
        _fail(f"--method {method!r}: expected one of {', '.join(METHOD_NAMES)}")
    config = SdfFitConfig()
    config.model.method, config.model.kernel = METHOD_NAMES[method]
    try:
        configure(config, {"steps": steps}, overrides)
        if template_vertices is not None:
            config.model.template_vertices = template_vertices
            config.validate()
    except ValueError as e:
        _fail(str(e))
    check_writable(output, [mesh])
    shape = Shape.from_mesh(read_mesh(mesh))
    try:
        model = fit_sdf(shape, config)
    except ValueError as e:
        _fail(f"{mesh}: {e}")
    model.save(output)
    p = model.parameters()
    console.print(f"wrote {output}: {model.name}, {p['net']:,} network + {p['latent']:,} code parameters, "
                  f"{model.training['template_vertices']} key points, {model.training['fit_s']:.0f} s")


@sdf_app.command("mesh")
def mesh_command(
    model: Path = typer.Argument(..., help="Model file from `sceneloc sdf fit`"),
    output: Path = typer.Option(..., "-o", "--output", help="Mesh to write (.ply, .obj, .off, .stl)"),
    resolution: int = typer.Option(256, "--resolution", help="Grid cells along the shape's longest side"),
    keep_far: bool = typer.Option(False, "--keep-far", help="Keep the pieces that come nowhere near the shape (more "
                                                            "than 1.5 template edge lengths from every key point)"),
):
    """Marching cubes of the model's zero level set, in the units of the mesh it was fitted to."""
    from sceneloc.sdf.extract import extract_mesh, write_mesh
    from sceneloc.sdf.model import load_sdf_model

    if not 8 <= resolution <= 1024:
        _fail(f"--resolution {resolution}: must be from 8 to 1024")
    if output.suffix.lower() not in (".ply", ".obj", ".off", ".stl"):
        _fail(f"{output}: unsupported mesh format {output.suffix!r} (use .ply, .obj, .off or .stl)")
    check_writable(output, [model])
    sdf = load_sdf_model(model)
    try:
        vertices, triangles = extract_mesh(sdf, resolution, keep_far=keep_far)
    except ValueError as e:
        _fail(f"{model}: {e}")
    write_mesh(output, vertices, triangles)
    console.print(f"wrote {output}: {len(vertices):,} vertices, {len(triangles):,} triangles ({sdf.name}, "
                  f"grid {resolution})")


@sdf_app.command("evaluate")
def evaluate_command(
    recon: Path = typer.Argument(..., help="Reconstructed mesh"),
    truth: Path = typer.Option(..., "--mesh", help="The true mesh"),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Also write the results to this JSON"),
    # 30,000: sceneloc.sdf.evaluate.N_SAMPLES, not imported here (it loads Open3D for every command's start).
    samples: int = typer.Option(30_000, "--samples", help="Points sampled on each surface for CD and HD"),
):
    """Chamfer (CD) and Hausdorff (HD) distances, and the Euclidean distance (ED) of the true vertices to the
    reconstruction, in mm for meshes in metres (Table 2.2)."""
    from sceneloc.evaluate.cloud import read_mesh
    from sceneloc.evaluate.report import write_json
    from sceneloc.sdf.evaluate import compare_meshes

    if not samples >= 1:
        _fail(f"--samples {samples}: must be at least 1")
    if output is not None:
        check_writable(output, [recon, truth])
    result = compare_meshes(read_mesh(recon), read_mesh(truth), samples)
    ed = result["ed_mm"]
    Console().print(f"CD {result['cd_mm']:.3f} mm, HD {result['hd_mm']:.3f} mm, ED {ed['mean']:.3f} +- "
                    f"{ed['std']:.3f} mm (median {ed['median']:.3f}, {ed['over_5']:.1f} % over 5 mm)")
    if output is not None:
        write_json(output, result)
        console.print(f"wrote {output}")


@sdf_app.command("bench")
def bench_command(
    out: Path = typer.Option(..., "--out", help="Folder for results.json, report.md, the figures, models, meshes"),
    steps: int = typer.Option(1000, "--steps", help="Fitting steps of every model"),
    meshes: str = typer.Option("bunny00,armadillo,homer", "--meshes",
                               help="Meshes of Debian's libcgal-demo (data/meshes/<name>.off), comma-separated"),
    resume: bool = typer.Option(False, "--resume", help="Reuse the models an earlier run left in --out (fitted "
                                                        "with the same settings)"),
):
    """Table 2.2 (LGCL-Cheb, LGCL-VC, DeepSDF at equal parameter counts) on real meshes, Table 2.4's similarity-loss
    ablation, and Figure 2.3's per-vertex error renders."""
    from sceneloc.sdf.bench import run_sdf_bench

    if not steps >= 1:
        _fail(f"--steps {steps}: must be at least 1")
    names = [m.strip() for m in meshes.split(",") if m.strip()]
    if not names:
        _fail("--meshes: give at least one mesh name")
    run_sdf_bench(out, names, steps, resume, log=lambda m: console.print(escape(m), soft_wrap=True))
    console.print(f"wrote {out / 'results.json'}, {out / 'report.md'} and the figures")
