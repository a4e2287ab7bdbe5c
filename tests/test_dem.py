"""sceneloc.dem: terrain attributes against hand-computed values, the continuous interpolation reproducing planes and
quadratics at any scale, tiles, DEM files and model files that round-trip, EBCF-CDEM learning on a real DEM, and the
`sceneloc dem` commands with their bad-input errors."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import torch
from affine import Affine

from conftest import run_cli, torch_threads
from sceneloc.dem.bench import sample_dem
from sceneloc.dem.evaluate import compare_dems, tile_errors
from sceneloc.dem.model import (CdemConfig, CdemModel, CdemNet, CnnConfig, CnnModel, FixedScaleCnn, Interpolation,
                                load_model)
from sceneloc.dem.raster import Dem, read_dem, write_dem
from sceneloc.dem.sampling import (downsample_nearest, fine_cells_of_centres, fine_cells_of_downsampled,
                                   interpolate, tiles)
from sceneloc.dem.terrain import aspect_deg, dem_errors, slope_deg, summarise
from sceneloc.dem.train import DemTrainConfig, held_out_part, train_dem_model
from sceneloc.runtime.errors import InputError


def grid(h: int, w: int, f) -> np.ndarray:
    """(h, w) values of f(row, column) at the samples."""
    j, k = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64), indexing="ij")
    return f(j, k)


# ---------------------------------------------------------------------------------------------------- terrain


def test_horn_slope_and_aspect_of_a_hand_computed_window():
    # Window 1..9 row by row, 1 m cells: dz/d_east = ((3 + 2*6 + 9) - (1 + 2*4 + 7)) / 8 = 1, dz/d_north =
    # ((1 + 2*2 + 3) - (7 + 2*8 + 9)) / 8 = -3 (rows run south). Slope atan(sqrt(10)) = 72.4516 deg; downhill is
    # west (-1) and north (+3): aspect atan2(-1, 3) = 341.5651 deg.
    window = np.arange(1, 10, dtype=np.float64).reshape(3, 3)
    assert slope_deg(window, (1.0, 1.0))[0, 0] == pytest.approx(72.4516, abs=1e-4)
    assert aspect_deg(window, (1.0, 1.0))[0, 0] == pytest.approx(341.5651, abs=1e-4)
    # Cells twice as wide east-west halve the east gradient: atan(sqrt(0.25 + 9)) = 71.7992, atan2(-0.5, 3).
    assert slope_deg(window, (1.0, 2.0))[0, 0] == pytest.approx(71.7992, abs=1e-4)
    assert aspect_deg(window, (1.0, 2.0))[0, 0] == pytest.approx(350.5377, abs=1e-4)


@pytest.mark.parametrize("rise,facing", [("east", 270.0), ("west", 90.0), ("north", 180.0), ("south", 0.0)])
def test_a_plane_faces_downhill(rise, facing):
    gradient, cell = 0.2, (30.0, 30.0)  # 0.2 m per metre: 11.3099 deg
    f = {"east": lambda j, k: k * cell[1] * gradient, "west": lambda j, k: -k * cell[1] * gradient,
         "north": lambda j, k: -j * cell[0] * gradient, "south": lambda j, k: j * cell[0] * gradient}[rise]
    z = grid(6, 7, f)
    assert np.allclose(slope_deg(z, cell), 11.3099, atol=1e-4)
    assert np.allclose(aspect_deg(z, cell), facing % 360, atol=1e-9)


def test_flat_ground_has_no_aspect_and_is_left_out_of_its_error():
    flat = np.full((6, 6), 120.0)
    assert np.isnan(aspect_deg(flat, (10.0, 10.0))).all() and (slope_deg(flat, (10.0, 10.0)) == 0).all()
    tilted = grid(6, 6, lambda j, k: k)
    errors = dem_errors(flat, flat + 0.5, (10.0, 10.0))
    assert errors["elevation"] == pytest.approx(0.5) and errors["slope"] == 0 and np.isnan(errors["aspect"])
    # Aspect error is the angle between directions: east-facing against west-facing is 180 deg.
    assert dem_errors(-tilted, tilted, (1.0, 1.0))["aspect"] == pytest.approx(180.0)


def test_summary_is_mean_and_std_over_tiles():
    stats = summarise([{"elevation": 1.0, "slope": 2.0, "aspect": np.nan},
                       {"elevation": 3.0, "slope": 2.0, "aspect": 10.0}])
    assert stats["elevation"] == {"mean": 2.0, "std": 1.0}
    assert stats["slope"]["std"] == 0 and stats["aspect"] == {"mean": 10.0, "std": 0.0}


# ------------------------------------------------------------------------------------------- continuous model


def PLANE(j, k):
    return 250.0 + 3.0 * j - 1.5 * k


def QUADRATIC(j, k):
    return 100.0 + 0.04 * j ** 2 + 0.02 * j * k - 0.03 * k ** 2 + j


@pytest.mark.parametrize("scale", [1.7, 2.0, 4.5, 8.0])
@pytest.mark.parametrize("base", ["bilinear", "bicubic"])
def test_interpolation_reproduces_a_plane_at_any_scale(scale, base):
    lr = grid(30, 32, PLANE)
    u, v = fine_cells_of_centres(30, round(30 * scale)), fine_cells_of_centres(32, round(32 * scale))
    uu, vv = np.meshgrid(u, v, indexing="ij")
    # Bilinear: anywhere within the samples; bicubic: 8 samples in from the edges, beyond the reach of the
    # prefilter's edge (it decays by 0.27 a sample).
    margin = 0 if base == "bilinear" else 8
    inside = (uu >= margin) & (uu <= 29 - margin) & (vv >= margin) & (vv <= 31 - margin)
    error = np.abs(interpolate(lr, u, v, base) - PLANE(uu, vv))
    assert error[inside].max() < 1e-4  # float32 of values near 300 m


@pytest.mark.parametrize("scale", [1.7, 3.0, 4.5, 8.0])
def test_bicubic_reproduces_a_quadratic_away_from_the_edges(scale):
    lr = grid(30, 32, QUADRATIC)
    u, v = fine_cells_of_centres(30, round(30 * scale)), fine_cells_of_centres(32, round(32 * scale))
    uu, vv = np.meshgrid(u, v, indexing="ij")
    inside = (uu >= 8) & (uu <= 21) & (vv >= 8) & (vv <= 23)
    error = np.abs(interpolate(lr, u, v, "bicubic") - QUADRATIC(uu, vv))
    bilinear_error = np.abs(interpolate(lr, u, v, "bilinear") - QUADRATIC(uu, vv))
    assert error[inside].max() < 1e-3 < bilinear_error[inside].max()


@pytest.mark.parametrize("base", ["nearest", "bicubic"])
def test_an_untrained_bias_model_is_its_base_so_it_reproduces_a_plane_at_any_scale(base):
    torch.manual_seed(0)
    model = CdemModel(CdemNet(CdemConfig(channels=8, blocks=1, decoder_width=16, base=base)))
    lr = grid(16, 18, PLANE)
    for scale in (2.0, 4.5):
        u, v = fine_cells_of_centres(16, round(16 * scale)), fine_cells_of_centres(18, round(18 * scale))
        predicted = model.predict(lr, u, v, 1 / scale)
        assert np.abs(predicted - interpolate(lr, u, v, base)).max() < 1e-3
        if base == "bicubic":  # the plane itself, 6 samples in from the edges (the prefilter's reach)
            uu, vv = np.meshgrid(u, v, indexing="ij")
            inside = (uu >= 6) & (uu <= 9) & (vv >= 6) & (vv <= 11)
            assert np.abs(predicted - PLANE(uu, vv))[inside].max() < 1e-3


def test_downsampled_samples_are_where_the_coordinates_say():
    hr = grid(48, 48, PLANE)
    for factor in (2, 3, 4, 8):
        lr = downsample_nearest(hr, factor)
        assert lr.shape == (48 // factor, 48 // factor)
        coords = fine_cells_of_downsampled(48, factor)
        # Fine cell j * factor + factor // 2 is sample j itself: coordinate j.
        assert np.allclose(coords[factor // 2::factor][:lr.shape[0]], np.arange(lr.shape[0]))
        # A plane comes back exactly from its downsampling (the base is not charged for a half-cell shift).
        inside = (coords >= 0) & (coords <= lr.shape[0] - 1)
        assert np.abs(interpolate(lr, coords, coords, "bilinear") - hr)[np.ix_(inside, inside)].max() < 1e-3


def test_large_inputs_go_by_tiles_with_the_same_result():
    rng = np.random.default_rng(0)
    lr = np.cumsum(np.cumsum(rng.normal(size=(70, 61)), 0), 1)
    u, v = fine_cells_of_centres(70, 175), fine_cells_of_centres(61, 150)
    whole, tiled = interpolate(lr, u, v, "bilinear"), Interpolation("bilinear").predict(lr, u, v, 0.4)
    assert np.array_equal(whole, tiled)
    # The spline's prefilter reaches past a tile's halo only by 0.27^6 of a sample's curvature.
    cubic = np.abs(interpolate(lr, u, v, "bicubic") - Interpolation("bicubic").predict(lr, u, v, 0.4))
    assert cubic.max() < 1e-2 * np.abs(np.diff(lr, 2, axis=0)).max()


def test_the_model_tile_by_tile_on_a_large_input_is_its_base_when_untrained():
    torch.manual_seed(0)
    model = CdemModel(CdemNet(CdemConfig(channels=4, blocks=1, decoder_width=8, base="bilinear")))
    rng = np.random.default_rng(2)
    lr = 300 + np.cumsum(np.cumsum(rng.normal(size=(50, 70)), 0), 1)
    for scale in (2.0, 4.5):  # tiles of 24 and 11 samples plus halos
        u, v = fine_cells_of_centres(50, round(50 * scale)), fine_cells_of_centres(70, round(70 * scale))
        assert np.abs(model.predict(lr, u, v, 1 / scale) - interpolate(lr, u, v, "bilinear")).max() < 1e-3


def test_codes_are_sampled_at_the_query_rows_and_columns_of_a_non_square_grid():
    # With an identity encoder and a decoder that passes the blended code through, the network's output is the
    # bilinear interpolation of its input: rows and columns cannot have been swapped.
    net = CdemNet(CdemConfig(channels=1, blocks=1, decoder_width=4, target="elevation"))
    net.encoder = torch.nn.Identity()
    net.decoder = torch.nn.Sequential()  # the output is the first input feature: the code
    lr = grid(7, 11, lambda j, k: j ** 2 + 10 * k)
    u, v = np.array([0.0, 0.25, 3.5, 6.0]), np.array([0.0, 1.75, 9.5, 10.0])
    uu, vv = np.meshgrid(u, v, indexing="ij")
    query = torch.tensor(np.stack([uu, vv], -1).reshape(1, -1, 2), dtype=torch.float32)
    out = net(torch.tensor(lr, dtype=torch.float32)[None, None], query, torch.ones(1), torch.zeros(1, 16))
    assert np.allclose(out.detach().numpy().reshape(4, 4), interpolate(lr, u, v, "bilinear"), atol=1e-4)


def test_tiles_cover_the_grid_without_overlap():
    cells = tiles((100, 130), 48)
    assert len(cells) == 2 * 2
    covered = np.zeros((100, 130), int)
    for s in cells:
        covered[s] += 1
    assert covered.max() == 1 and covered.sum() == 4 * 48 * 48


# ------------------------------------------------------------------------------------------------------ files


@pytest.mark.parametrize("suffix", [".tif", ".npz", ".npy"])
def test_dem_files_round_trip(tmp_path, suffix):
    rng = np.random.default_rng(1)
    elevation = rng.normal(500, 50, size=(20, 30)).astype(np.float32)
    elevation[3, 4] = np.nan
    dem = Dem(elevation, (25.0, 25.0), Affine(25.0, 0, 400000.0, 0, -25.0, 5000000.0) if suffix == ".tif" else None,
              None)
    path = tmp_path / f"dem{suffix}"
    write_dem(path, dem)
    back = read_dem(path, cell_size=25.0 if suffix == ".npy" else None)
    assert np.array_equal(back.elevation, elevation, equal_nan=True)
    assert back.cell_size == (25.0, 25.0)
    if suffix == ".tif":
        assert back.transform == dem.transform
        finer = back.resampled(np.zeros((40, 60), np.float32))
        assert finer.cell_size == (12.5, 12.5) and finer.transform.a == 12.5 and finer.transform.c == 400000.0


def test_matplotlibs_sample_dems_read_with_their_cell_sizes():
    jacksboro = sample_dem("jacksboro_fault_dem")
    assert jacksboro.shape == (344, 403)
    # 3 arc-seconds: 92.8 m north-south, 74.5 m east-west at 36.6 deg N.
    assert jacksboro.cell_size == pytest.approx((92.77, 74.48), abs=0.01)
    topobathy = sample_dem("topobathy")
    raw = np.load(__import__("matplotlib").cbook.get_sample_data("topobathy.npz", asfileobj=False))
    # Its rows run south to north: read with the northern row first, as GeoTIFF has it.
    assert np.array_equal(topobathy.elevation[0], raw["topo"][-1]) and raw["latitude"][-1] > raw["latitude"][0]


def test_model_files_round_trip_and_hold_no_pickle(tmp_path):
    torch.manual_seed(0)
    net = CdemNet(CdemConfig(channels=8, blocks=2, decoder_width=32, base="bicubic"))
    torch.nn.init.normal_(net.decoder[-1].weight, std=0.1)  # not the zero start: predictions differ from the base
    model, lr = CdemModel(net, {"steps": 3}), grid(20, 20, QUADRATIC)
    coords = fine_cells_of_centres(20, 50)
    model.save(tmp_path / "m.safetensors")
    back = load_model(tmp_path / "m.safetensors")
    assert isinstance(back, CdemModel) and back.config == model.config and back.training == {"steps": 3}
    assert np.array_equal(back.predict(lr, coords, coords, 0.4), model.predict(lr, coords, coords, 0.4))
    data = (tmp_path / "m.safetensors").read_bytes()
    header = json.loads(data[8:8 + struct.unpack("<Q", data[:8])[0]])
    assert json.loads(header["__metadata__"]["sceneloc"])["format"] == "sceneloc-cdem"
    cnn = CnnModel(FixedScaleCnn(CnnConfig(factor=3, channels=4, blocks=1)))
    cnn.save(tmp_path / "c.safetensors")
    assert load_model(tmp_path / "c.safetensors").config.factor == 3


# --------------------------------------------------------------------------------------------------- learning


@pytest.fixture(scope="module")
def jacksboro():
    return sample_dem("jacksboro_fault_dem")


@pytest.fixture(scope="module")
def trained(jacksboro):
    """EBCF-CDEM (the thesis's nearest base) trained briefly on jacksboro's western 70 %, one thread."""
    config = DemTrainConfig(steps=150, hold_out=0.3, scales=[2, 4], batch_tiles=8, queries=256,
                            model=CdemConfig(channels=16, blocks=2, decoder_width=64, decoder_layers=3, base="nearest"))
    with torch_threads(1):
        return train_dem_model([jacksboro], config, show_progress=False)


def test_training_learns_to_beat_its_base_on_ground_it_never_saw(trained, jacksboro):
    test = held_out_part(jacksboro, 0.3)
    with torch_threads(1):
        for factor in (2, 4):
            model_errors, _ = tile_errors(trained, test, jacksboro.cell_size, factor)
            base_errors, _ = tile_errors(Interpolation("nearest"), test, jacksboro.cell_size, factor)
            assert len(model_errors) == 14  # 7 x 2 tiles of 48 cells in 344 x 121
            model_rmse = summarise(model_errors)["elevation"]["mean"]
            base_rmse = summarise(base_errors)["elevation"]["mean"]
            # Measured with seeds 0-2: 0.54-0.56 of the nearest sample's error at x2, 0.82-0.84 at x4.
            assert model_rmse < {2: 0.75, 4: 0.92}[factor] * base_rmse, (factor, model_rmse, base_rmse)
    assert trained.training["config"]["hold_out"] == 0.3 and len(trained.training["history"]) == 10


def test_training_is_reproducible(jacksboro):
    config = DemTrainConfig(steps=3, scales=[4], batch_tiles=2, queries=16,
                            model=CdemConfig(channels=4, blocks=1, decoder_width=8, decoder_layers=2))
    with torch_threads(1):
        a, b = (train_dem_model([jacksboro], config, show_progress=False) for _ in range(2))
    for (name, x), (_, y) in zip(a.net.state_dict().items(), b.net.state_dict().items()):
        assert torch.equal(x, y), name


def test_bad_training_settings_are_refused():
    for bad, match in [(dict(method="gan"), "method"), (dict(scales=[]), "scales"), (dict(scales=[40]), "scales"),
                       (dict(method="cnn", scales=[2, 4]), "one scale"), (dict(hold_out=1.0), "hold_out"),
                       (dict(lr_max=-1.0), "learning rates"), (dict(model=CdemConfig(base="lanczos")), "base")]:
        with pytest.raises(ValueError, match=match):
            DemTrainConfig(**bad).validate()


# ---------------------------------------------------------------------------------------------------- commands


@pytest.fixture(scope="module")
def low_tif(tmp_path_factory, jacksboro):
    """jacksboro's first 96 x 120 cells downsampled by 4, as a GeoTIFF, and the truth beside it. (The coarse file's
    transform puts each sample at its cell's centre, half a fine cell from the fine cell it took: the commands are
    under test here, not the accuracy, which test_training_learns... measures on the exact geometry.)"""
    folder = tmp_path_factory.mktemp("dem")
    truth = Dem(jacksboro.elevation[:96, :120].copy(), (25.0, 25.0), Affine(25.0, 0, 0, 0, -25.0, 3000.0))
    write_dem(folder / "truth.tif", truth)
    write_dem(folder / "low.tif", truth.resampled(downsample_nearest(truth.elevation, 4)))
    return folder


def test_train_upsample_evaluate_through_the_command_line(low_tif):
    model = low_tif / "m.safetensors"
    code, out = run_cli("dem", "train", low_tif / "truth.tif", "-o", model, "--steps", "2", "--scales", "4",
                        "--set", "batch_tiles=2", "--set", "model.channels=4", "--set", "model.blocks=1")
    assert code == 0, out
    code, out = run_cli("dem", "upsample", model, low_tif / "low.tif", "-o", low_tif / "high.tif", "--scale", "4")
    assert code == 0, out
    high, low = read_dem(low_tif / "high.tif"), read_dem(low_tif / "low.tif")
    assert high.shape == (96, 120) and high.cell_size == (25.0, 25.0) and high.transform.c == low.transform.c
    code, out = run_cli("dem", "upsample", "bicubic", low_tif / "low.tif", "-o", low_tif / "x45.npz", "--scale",
                        "4.5")
    assert code == 0, out
    assert read_dem(low_tif / "x45.npz").shape == (round(24 * 4.5), round(30 * 4.5))
    code, out = run_cli("dem", "evaluate", low_tif / "truth.tif", "--truth", low_tif / "truth.tif", "-o",
                        low_tif / "self.json")
    assert code == 0, out
    result = json.loads((low_tif / "self.json").read_text())
    assert result["whole"] == {"elevation": 0.0, "slope": 0.0, "aspect": 0.0} and result["n_tiles"] == 4
    code, out = run_cli("dem", "evaluate", low_tif / "high.tif", "--truth", low_tif / "truth.tif")
    assert code == 0 and "RMSE elevation" in out, out


def test_a_grid_of_other_cells_is_refused(low_tif):
    with pytest.raises(InputError, match="its truth"):
        compare_dems(read_dem(low_tif / "low.tif"), read_dem(low_tif / "truth.tif"), names=("low.tif", "truth.tif"))


@pytest.mark.parametrize("case", ["missing", "folder", "suffix", "npy-no-cell", "1d", "tiny", "garbage-tif",
                                  "nan-only", "npz-no-key", "scale", "overwrite", "not-a-model", "out-suffix",
                                  "three-bands", "cell-size", "npy-as-npz", "cnn-scale"])
def test_bad_input_gives_one_line_and_exit_code_2(tmp_path, low_tif, case):
    low = low_tif / "low.tif"
    out = tmp_path / "out.tif"
    if case == "missing":
        args, expect = ["upsample", "bicubic", tmp_path / "none.tif", "-o", out, "--scale", "2"], "does not exist"
    elif case == "folder":
        args, expect = ["upsample", "bicubic", tmp_path, "-o", out, "--scale", "2"], "is a folder"
    elif case == "suffix":
        (tmp_path / "dem.txt").write_text("1 2 3")
        args, expect = ["upsample", "bicubic", tmp_path / "dem.txt", "-o", out, "--scale", "2"], "unknown DEM file"
    elif case == "npy-no-cell":
        np.save(tmp_path / "d.npy", np.zeros((10, 10)))
        args, expect = ["upsample", "bicubic", tmp_path / "d.npy", "-o", out, "--scale", "2"], "--cell-size"
    elif case == "1d":
        np.save(tmp_path / "d.npy", np.zeros(100))
        args, expect = ["upsample", "bicubic", tmp_path / "d.npy", "-o", out, "--scale", "2", "--cell-size", "5"], \
            "not (rows, columns)"
    elif case == "tiny":
        np.savez(tmp_path / "d.npz", elevation=np.zeros((4, 40)), cell_size=5.0)
        args, expect = ["upsample", "bicubic", tmp_path / "d.npz", "-o", out, "--scale", "2"], "smaller than"
    elif case == "garbage-tif":
        (tmp_path / "g.tif").write_bytes(b"II*\x00 not really a tiff")
        args, expect = ["upsample", "bicubic", tmp_path / "g.tif", "-o", out, "--scale", "2"], "not a readable"
    elif case == "nan-only":
        np.savez(tmp_path / "d.npz", elevation=np.full((10, 10), np.nan), cell_size=5.0)
        args, expect = ["upsample", "bicubic", tmp_path / "d.npz", "-o", out, "--scale", "2"], "no valid elevation"
    elif case == "npz-no-key":
        np.savez(tmp_path / "d.npz", a=np.zeros((10, 10)), b=np.zeros((10, 10)))
        args, expect = ["upsample", "bicubic", tmp_path / "d.npz", "-o", out, "--scale", "2"], "no elevation array"
    elif case == "scale":
        args, expect = ["upsample", "bicubic", low, "-o", out, "--scale", "0.5"], "must be above 1"
    elif case == "overwrite":
        out = low
        args, expect = ["upsample", "bicubic", low, "-o", low, "--scale", "2"], "input"
    elif case == "not-a-model":
        (tmp_path / "m.safetensors").write_bytes(b"\x00" * 16)
        args, expect = ["upsample", tmp_path / "m.safetensors", low, "-o", out, "--scale", "2"], "not a DEM model"
    elif case == "three-bands":
        import rasterio

        with rasterio.open(tmp_path / "rgb.tif", "w", driver="GTiff", height=16, width=16, count=3,
                           dtype="uint8") as dst:
            dst.write(np.zeros((3, 16, 16), np.uint8))
        args, expect = ["upsample", "bicubic", tmp_path / "rgb.tif", "-o", out, "--scale", "2"], "has 3 bands"
    elif case == "cell-size":
        args, expect = ["upsample", "bicubic", low, "-o", out, "--scale", "2", "--cell-size", "0"], "--cell-size 0"
    elif case == "npy-as-npz":
        np.save(tmp_path / "d.npy", np.zeros((10, 10)))
        (tmp_path / "d.npy").rename(tmp_path / "d.npz")
        args, expect = ["upsample", "bicubic", tmp_path / "d.npz", "-o", out, "--scale", "2"], "not an .npz"
    elif case == "cnn-scale":
        CnnModel(FixedScaleCnn(CnnConfig(factor=4, channels=2, blocks=1))).save(tmp_path / "cnn.safetensors")
        args, expect = ["upsample", tmp_path / "cnn.safetensors", low, "-o", out, "--scale", "3"], "trained for x4"
    else:
        args, expect = ["upsample", "bicubic", low, "-o", tmp_path / "out.png", "--scale", "2"], "unknown DEM file"
    before = low.read_bytes()
    code, output = run_cli("dem", *args)
    lines = [line for line in output.strip().splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and expect in lines[0] and "Traceback" not in output, output
    assert low.read_bytes() == before
    if case != "overwrite":
        assert not out.exists() and not list(tmp_path.glob(".out*"))
