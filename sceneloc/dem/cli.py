"""`sceneloc dem`: train a DEM super-resolution model, upsample a DEM at any scale, score a DEM against its truth,
and the benchmark of the thesis's tables. Thin commands over sceneloc.dem's functions."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape

from sceneloc.runtime.atomic import check_writable
from sceneloc.runtime.console import console, fail as _fail

dem_app = typer.Typer(no_args_is_help=True, help="Continuous DEM super-resolution (EBCF-CDEM, thesis chapter 3).")
MAX_OUTPUT_CELLS = 200_000_000
"""Largest DEM `upsample` writes (800 MB of float32): beyond it, tile the input first."""
CellSizeOption = typer.Option(None, "--cell-size", help="Cell size in metres, for files that do not hold one "
                                                        "(.npy) or to override theirs")


def _scales(text: str) -> list[int]:
    try:
        scales = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        _fail(f"--scales {text!r}: expected integers separated by commas, e.g. 2,3,4")
    return scales


@dem_app.command("train")
def train_command(
    dems: list[Path] = typer.Argument(..., help="High-resolution DEMs to learn from (.tif, .npz, .npy)"),
    output: Path = typer.Option(..., "-o", "--output", help="Model file to write (.safetensors)"),
    method: str = typer.Option("cdem", "--method", help="cdem (EBCF-CDEM: every scale in one model) | cnn (the "
                                                        "fixed-scale baseline)"),
    scales: str = typer.Option("2,3,4,5,6,7,8", "--scales", help="Integer downsampling factors to train on, "
                                                                "comma-separated (cnn: one)"),
    steps: Optional[int] = typer.Option(None, "--steps", help="Optimiser steps (default 2000)"),
    hold_out: Optional[float] = typer.Option(None, "--hold-out", help="Fraction of each DEM's columns (its east) "
                                                                      "kept out of training (default 0)"),
    cell_size: Optional[float] = CellSizeOption,
    overrides: Optional[list[str]] = typer.Option(None, "--set", help="Any DemTrainConfig field, e.g. --set "
                                                                      "model.base=bicubic --set batch_tiles=8"),
):
    """Learn to super-resolve DEMs from high-resolution ones (tiles downsampled by random factors)."""
    from sceneloc.dem.raster import read_dem
    from sceneloc.dem.train import DemTrainConfig, train_dem_model
    from sceneloc.runtime.config_overrides import configure

    try:
        config = configure(DemTrainConfig(method=method, scales=_scales(scales)),
                           {"steps": steps, "hold_out": hold_out}, overrides)
    except ValueError as e:
        _fail(str(e))
    check_writable(output, dems)
    grids = [read_dem(p, cell_size) for p in dems]
    try:
        model = train_dem_model(grids, config, names=[p.name for p in dems])
    except ValueError as e:
        _fail(f"{', '.join(str(p) for p in dems)}: {e}")
    model.save(output)
    console.print(f"wrote {output}: {config.method}, final {config.loss.upper()} "
                  f"{model.training['final_loss']:.4f} (normalised), {model.training['train_s']:.0f} s")


@dem_app.command("upsample")
def upsample_command(
    model: str = typer.Argument(..., help="Model file from `sceneloc dem train`, or bicubic | bilinear | nearest"),
    low: Path = typer.Argument(..., help="Low-resolution DEM (.tif, .npz, .npy)"),
    output: Path = typer.Option(..., "-o", "--output", help="DEM to write (.tif, .npz, .npy)"),
    scale: float = typer.Option(..., "--scale", help="Upsampling factor, any real number above 1 (e.g. 4.5)"),
    cell_size: Optional[float] = CellSizeOption,
):
    """Super-resolve a DEM by any factor with one model: cells `scale` times smaller, the same ground."""
    from sceneloc.dem.model import CnnModel, Interpolation, load_model
    from sceneloc.dem.raster import check_dem_output, read_dem, write_dem
    from sceneloc.dem.sampling import BASES, fine_cells_of_centres

    if not scale > 1 or scale > 64:
        _fail(f"--scale {scale}: must be above 1 and at most 64")
    check_dem_output(output)
    model_path = None if model in BASES else Path(model)
    check_writable(output, [low] + ([model_path] if model_path else []))
    resolver = Interpolation(model) if model_path is None else load_model(model_path)
    if isinstance(resolver, CnnModel) and scale != resolver.config.factor:
        _fail(f"{model_path}: a fixed-scale CNN trained for x{resolver.config.factor}, not x{scale:g} (EBCF-CDEM "
              f"models take any scale)")
    dem = read_dem(low, cell_size)
    h, w = dem.shape
    out_h, out_w = round(h * scale), round(w * scale)
    if out_h * out_w > MAX_OUTPUT_CELLS:
        _fail(f"{low}: {h}x{w} cells at x{scale:g} would be {out_h}x{out_w}, over {MAX_OUTPUT_CELLS:,} cells")
    elevation = resolver.predict(dem.elevation, fine_cells_of_centres(h, out_h), fine_cells_of_centres(w, out_w),
                                 1.0 / scale)
    write_dem(output, dem.resampled(elevation))
    console.print(f"wrote {output}: {out_h}x{out_w} cells from {h}x{w} ({resolver.name}, x{scale:g})")


@dem_app.command("evaluate")
def evaluate_command(
    dem: Path = typer.Argument(..., help="Super-resolved DEM"),
    truth: Path = typer.Option(..., "--truth", help="The true DEM of the same cells"),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Also write the results to this JSON"),
    tile: int = typer.Option(48, "--tile", help="Also score tiles of this many cells a side (mean +- std)"),
    cell_size: Optional[float] = CellSizeOption,
):
    """RMSE of elevation (m), slope and aspect (degrees) against the truth, over the grid and per tile."""
    from sceneloc.dem.evaluate import compare_dems
    from sceneloc.dem.raster import read_dem
    from sceneloc.evaluate.report import write_json

    if not tile >= 3:
        _fail(f"--tile {tile}: must be at least 3 cells")
    if output is not None:
        check_writable(output, [dem, truth])
    result = compare_dems(read_dem(dem, cell_size), read_dem(truth, cell_size), tile, (str(dem), str(truth)))
    whole = result["whole"]
    line = (f"RMSE elevation {whole['elevation']:.3f} m, slope {whole['slope']:.3f} deg, aspect "
            f"{whole['aspect']:.3f} deg")
    if result["n_tiles"]:
        t = result["tiles"]
        line += (f"; over {result['n_tiles']} tiles of {tile}: elevation {t['elevation']['mean']:.3f} +- "
                 f"{t['elevation']['std']:.3f} m")
    Console().print(line)
    if output is not None:
        write_json(output, result)
        console.print(f"wrote {output}")


@dem_app.command("bench")
def bench_command(
    out: Path = typer.Option(..., "--out", help="Folder for results.json, report.md, the figures and the models"),
    steps: int = typer.Option(2000, "--steps", help="Training steps of every learned model"),
    resume: bool = typer.Option(False, "--resume", help="Reuse models an earlier run left in --out"),
):
    """The thesis's tables on matplotlib's real DEMs: bicubic, the fixed-scale CNN and EBCF-CDEM at x2-x8, the
    ablation (bias vs elevation, positional encoding), the cross-region test and error maps."""
    from sceneloc.dem.bench import run_dem_bench

    if not steps >= 1:
        _fail(f"--steps {steps}: must be at least 1")
    run_dem_bench(out, steps, resume, log=lambda m: console.print(escape(m), soft_wrap=True))
    console.print(f"wrote {out / 'results.json'}, {out / 'report.md'} and the figures")
