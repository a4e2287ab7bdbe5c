"""`sceneloc dem bench`: the thesis's chapter-3 experiments on the real DEMs that ship offline (matplotlib's sample
data), written to results.json, report.md and error-map figures.

Data: jacksboro_fault_dem.npz (Tennessee, 3 arc-second grid, 344 x 403 cells of about 93 x 74 m) is split by
columns: the western 70 % for training, the eastern 30 % cut into 48 x 48 test tiles that no training tile
overlaps. topobathy.npz (the Pacific Northwest, land and sea floor, 91 x 120 cells of about 2.4 km) is the other
region of the cross-region test (Table 3.4): models trained on jacksboro only, scored on it whole.

Methods (Tables 3.1-3.2): bicubic, the fixed-scale CNN (one model per factor), EBCF-CDEM with the bias taken from
the bicubic interpolation (positional encoding, one model for every factor: sceneloc's default), and EBCF-CDEM as
the thesis builds it (the bias from the nearest sample). Ablation (Table 3.3): elevation or bias regression, with
and without the positional encoding."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from sceneloc.dem.evaluate import EVAL_BORDER, EVAL_TILE, tile_errors
from sceneloc.dem.model import CdemConfig, Interpolation, SuperResolver, load_model
from sceneloc.dem.raster import Dem, read_dem
from sceneloc.dem.sampling import downsample_nearest, fine_cells_of_downsampled
from sceneloc.dem.terrain import ERROR_KEYS, dem_errors, summarise
from sceneloc.dem.train import DemTrainConfig, held_out_part, train_dem_model
from sceneloc.evaluate.report import write_json
from sceneloc.runtime.atomic import atomic_output, write_text_atomic

FACTORS = (2, 4, 6, 8)
"""The scales of the thesis's tables."""
HOLD_OUT = 0.3
"""Eastern fraction of the training DEM kept for testing."""


def sample_dem(name: str) -> Dem:
    """One of matplotlib's sample DEMs ("jacksboro_fault_dem" or "topobathy")."""
    from matplotlib import cbook

    return read_dem(cbook.get_sample_data(f"{name}.npz", asfileobj=False))


@dataclass
class Variant:
    """A learned model of the benchmark: its name in the tables and how it is trained."""

    name: str
    method: str = "cdem"
    model: CdemConfig = field(default_factory=CdemConfig)
    scales: list[int] = field(default_factory=lambda: [2, 3, 4, 5, 6, 7, 8])
    loss: str = "l2"


OURS = "EBCF-CDEM"
THESIS = "EBCF-CDEM, nearest base (thesis)"
VARIANTS = [
    Variant(OURS),
    Variant(THESIS, model=CdemConfig(base="nearest")),
    Variant("EBCF-CDEM, L1 loss (thesis)", loss="l1"),
    Variant("elevation regression", model=CdemConfig(target="elevation")),
    Variant("elevation regression, no PE", model=CdemConfig(target="elevation", positional_encoding=False)),
    Variant("bias regression, no PE", model=CdemConfig(positional_encoding=False)),
    *[Variant(f"CNN x{f}", method="cnn", scales=[f]) for f in FACTORS],
]
"""Every model the benchmark trains: EBCF-CDEM as sceneloc ships it (the bias from the bicubic base), as the thesis
builds it (from the nearest sample), with the thesis's L1 loss, the ablation's variants and the CNN baseline."""
ABLATION = ["elevation regression, no PE", "elevation regression", "bias regression, no PE", OURS]
"""Table 3.3's rows, in its order (the last: bias regression with PE, the shipped model)."""


def _file_name(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name.lower()).strip("_") + ".safetensors"


def _trained(variant: Variant, train_dem: Dem, steps: int, folder: Path, resume: bool, log) -> SuperResolver:
    path = folder / _file_name(variant.name)
    config = DemTrainConfig(method=variant.method, scales=variant.scales, model=variant.model, steps=steps,
                            hold_out=HOLD_OUT, loss=variant.loss)
    if resume and path.is_file():
        model = load_model(path)
        if model.training.get("config") == config.to_dict():
            log(f"{variant.name}: reusing {path}")
            return model
        log(f"{variant.name}: {path} was trained with other settings; training again")
    model = train_dem_model([train_dem], config, names=["jacksboro_fault_dem.npz"])
    model.save(path)
    log(f"{variant.name}: trained in {model.training['train_s']:.0f} s, final {variant.loss.upper()} "
        f"{model.training['final_loss']:.4f}")
    return model


def _whole_grid_errors(resolver: SuperResolver, dem: Dem, factor: int) -> dict:
    """The whole grid (cut to a multiple of factor) downsampled and super-resolved back."""
    h, w = (n - n % factor for n in dem.shape)
    hr = dem.elevation[:h, :w].astype(np.float64)
    lr = downsample_nearest(hr, factor)
    predicted = resolver.predict(lr, fine_cells_of_downsampled(h, factor), fine_cells_of_downsampled(w, factor),
                                 1.0 / factor)
    return dem_errors(predicted, hr, dem.cell_size)


def _fmt(stats: dict, key: str) -> str:
    return f"{stats[key]['mean']:.2f} ± {stats[key]['std']:.2f}"


def _report(results: dict) -> str:
    tiles = results["test_tiles"]
    lines = ["# DEM super-resolution (sceneloc dem bench)", "",
             f"Test: {tiles} tiles of {EVAL_TILE} x {EVAL_TILE} cells of jacksboro_fault_dem's eastern "
             f"{HOLD_OUT:.0%} (never trained on), scored without {EVAL_BORDER} cells at each edge as the thesis "
             f"does; training steps per model: {results['steps']}. RMSE per tile, mean ± std over tiles.", ""]
    units = {"elevation": "m", "slope": "deg", "aspect": "deg"}
    for key in ERROR_KEYS:
        lines += [f"## RMSE of {key} ({units[key]})", "", "| method | " + " | ".join(f"x{f}" for f in FACTORS) + " |",
                  "|---|" + "---|" * len(FACTORS)]
        for method, by_factor in results["methods"].items():
            cells = [_fmt(by_factor[f"x{f}"], key) if f"x{f}" in by_factor else "" for f in FACTORS]
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["## Ablation (Table 3.3): RMSE at x4 and x8, elevation m / slope deg / aspect deg", "",
              "| configuration | x4 | x8 |", "|---|---|---|"]
    for name in ABLATION:
        row = results["methods"][name]
        lines.append(f"| {name} | " + " | ".join(" / ".join(f"{row[f'x{f}'][k]['mean']:.2f}" for k in ERROR_KEYS)
                                                for f in (4, 8)) + " |")
    lines += ["", "## Cross-region (Table 3.4): trained on jacksboro, scored on topobathy whole "
              "(elevation RMSE m / slope deg / aspect deg)", "", "| method | " +
              " | ".join(f"x{f}" for f in FACTORS) + " |", "|---|" + "---|" * len(FACTORS)]
    for method, by_factor in results["cross_region"].items():
        lines.append(f"| {method} | " + " | ".join(
            " / ".join(f"{by_factor[f'x{f}'][k]:.1f}" for k in ERROR_KEYS) if f"x{f}" in by_factor else ""
            for f in FACTORS) + " |")
    bicubic, ours = results["methods"]["bicubic"]["x4"], results["methods"][OURS]["x4"]
    gain = 1 - ours["elevation"]["mean"] / bicubic["elevation"]["mean"]
    lines += ["", f"Target (EBCF-CDEM at least 10 % lower elevation RMSE than bicubic at x4): {gain:+.1%} "
                  f"({ours['elevation']['mean']:.2f} against {bicubic['elevation']['mean']:.2f} m).", ""]
    return "\n".join(lines)


def _error_maps(test: np.ndarray, resolvers_at: Callable[[int], dict[str, SuperResolver]], path: Path) -> None:
    """Figure 3.8-style: the test tile with the largest relief, and the absolute error of each method
    (resolvers_at(factor): name -> resolver) at x4 and x8."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sceneloc.dem.sampling import tiles

    candidates = [test[s].astype(np.float64) for s in tiles(test.shape, EVAL_TILE) if np.isfinite(test[s]).all()]
    hr = max(candidates, key=lambda t: np.ptp(t))
    columns = len(resolvers_at(4)) + 1
    fig, axes = plt.subplots(2, columns, figsize=(3.2 * columns, 6.4))
    for row, factor in enumerate((4, 8)):
        resolvers = resolvers_at(factor)
        coords = fine_cells_of_downsampled(EVAL_TILE, factor)
        lr = downsample_nearest(hr, factor)
        errors = {name: np.abs(r.predict(lr, coords, coords, 1.0 / factor) - hr) for name, r in resolvers.items()}
        vmax = max(float(np.percentile(e, 99)) for e in errors.values())
        axes[row, 0].imshow(hr, cmap="terrain")
        axes[row, 0].set_title(f"truth (x{factor} input: {lr.shape[0]}x{lr.shape[1]})", fontsize=9)
        for ax, (name, err) in zip(axes[row, 1:], errors.items()):
            im = ax.imshow(err, cmap="magma", vmin=0, vmax=vmax)
            ax.set_title(f"{name} x{factor}: RMSE {np.sqrt(np.mean(err ** 2)):.1f} m", fontsize=9)
        fig.colorbar(im, ax=axes[row, 1:].tolist(), shrink=0.8, label="|error| m")
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    with atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def run_dem_bench(out: Path, steps: int, resume: bool = False, log: Callable[[str], None] = print) -> dict:
    """Train every Variant on jacksboro's western part, score everything, write results.json, report.md,
    error_maps.png and the models (models/) into `out`. Returns the results."""
    from sceneloc.bench.runner import source_commit

    out = Path(out)
    (out / "models").mkdir(parents=True, exist_ok=True)
    jacksboro, topobathy = sample_dem("jacksboro_fault_dem"), sample_dem("topobathy")
    test = held_out_part(jacksboro, HOLD_OUT)
    resolvers: dict[str, SuperResolver] = {"bicubic": Interpolation("bicubic")}
    for variant in VARIANTS:
        resolvers[variant.name] = _trained(variant, jacksboro, steps, out / "models", resume, log)
    methods, cross = {}, {}
    for name, resolver in resolvers.items():
        for factor in FACTORS:
            if name.startswith("CNN x") and name != f"CNN x{factor}":
                continue
            table_name = "CNN (one model per factor)" if name.startswith("CNN x") else name
            errors, _ = tile_errors(resolver, test, jacksboro.cell_size, factor)
            methods.setdefault(table_name, {})[f"x{factor}"] = summarise(errors)
            if name in ("bicubic", THESIS, OURS) or name.startswith("CNN x"):
                cross.setdefault(table_name, {})[f"x{factor}"] = _whole_grid_errors(resolver, topobathy, factor)
        log(f"scored {name}")
    results = {"steps": steps, "test_tiles": len(tile_errors(resolvers["bicubic"], test, jacksboro.cell_size, 2)[0]),
               "commit": source_commit(), "threads": torch.get_num_threads(), "methods": methods,
               "cross_region": cross,
               "training": {name: {k: r.training.get(k) for k in ("train_s", "final_loss", "threads")}
                            for name, r in resolvers.items() if hasattr(r, "training")}}
    write_json(out / "results.json", results)
    write_text_atomic(out / "report.md", _report(results))
    _error_maps(test, lambda f: {"bicubic": resolvers["bicubic"], "CNN": resolvers[f"CNN x{f}"],
                                 THESIS: resolvers[THESIS], OURS: resolvers[OURS]}, out / "error_maps.png")
    return results
