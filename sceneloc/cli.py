"""The `sceneloc` command (typer). Each command is a thin layer over a package function."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape

from sceneloc.dem.cli import dem_app
from sceneloc.runtime.atomic import check_writable
from sceneloc.runtime.console import console, fail as _fail, print_error as _print_error
from sceneloc.runtime.errors import InputError
from sceneloc.sdf.cli import sdf_app

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Map a scene from posed RGB images, then relocalize new images (scene coordinate regression).")

DeviceOption = typer.Option("auto", "--device", help="auto | cpu | cuda")
SetOption = typer.Option(None, "--set",
                         help="Override any config field, e.g. --set iterations=4000 --set head.num_blocks=2")
PrecisionOption = typer.Option("auto", "--precision",
                               help="auto | bf16 | fp32 (auto: bfloat16 only on CPUs with AMX/AVX512-BF16, float16 "
                                    "on CUDA, else float32)")


def _device(name: str):
    from sceneloc.runtime.device import resolve_device

    try:
        return resolve_device(name)
    except ValueError as e:
        _fail(str(e))


def _precision(name: str) -> str:
    from sceneloc.runtime.device import check_precision

    try:
        return check_precision(name)
    except ValueError as e:
        _fail(str(e))


@app.command("map")
def map_command(
    scene_dirs: list[Path] = typer.Argument(..., help="Posed images: ACE folder, 7-Scenes, COLMAP model or "
                                                       "transforms.json (several with --multi)"),
    output: Path = typer.Option(..., "-o", "--output", help="Map file to write (.map, safetensors)"),
    map_type: str = typer.Option("scr", "--type", help="scr (scene coordinate regression) | structure (compressed "
                                                        "structure-based map, SceneSqueezer) | hybrid (both in one "
                                                        "map: scene coordinates guide the matching) | landmarks "
                                                        "(scene landmark detector, SLD*)"),
    landmarks: Optional[int] = typer.Option(None, "--landmarks", help="--type landmarks: landmarks per scene "
                                                                       "(default 300)"),
    budget_mb: Optional[float] = typer.Option(None, "--budget-mb", help="--type structure or hybrid: largest size "
                                                                         "of the points in MB (default: a tenth of "
                                                                         "the uncompressed map, 140 bytes per "
                                                                         "triangulated point)"),
    multi: bool = typer.Option(False, "--multi", help="Map all the given scenes into one multi-scene model (SCINR)"),
    split: str = typer.Option("train", help="Split to map when the folder has train/test splits"),
    images: Optional[Path] = typer.Option(None, help="Image folder for a COLMAP model, if not beside it"),
    encoder: Optional[str] = typer.Option(None, help="Frozen encoder (default: the measured best)"),
    iterations: Optional[int] = typer.Option(None, help="Optimisation steps, per scene with --multi (more: slower, "
                                                         "more accurate)"),
    buffer_size: Optional[int] = typer.Option(None, help="Feature rows in the training buffer (per scene with "
                                                          "--multi)"),
    image_height: Optional[int] = typer.Option(None, help="Working image height in pixels"),
    keypoints: bool = typer.Option(False, "--keypoints", help="Also train the keypoint network (single scene)"),
    start_from: Optional[Path] = typer.Option(
        None, "--init", help="With --multi: continue from this multi-scene map (add scenes to it): the scenes it "
                             "holds (matched by name) keep what they learnt, the steps are the new scenes' only; "
                             "settings default to the map's own"),
    seed: int = typer.Option(0, help="Random seed"),
    device: str = DeviceOption,
    precision: Optional[str] = typer.Option(None, "--precision", help=PrecisionOption.help + " (default auto; with "
                                                                       "--init, the map's own)"),
    overrides: Optional[list[str]] = SetOption,
):
    """Map a scene: posed RGB (+ optional depth) -> one map file. With --multi, several scenes -> one model
    (--set keys then read mapping.iterations, model.use_scra, sampling, ...)."""
    from sceneloc.runtime.config_overrides import apply_overrides
    from sceneloc.data import read_scene
    from sceneloc.mapping import MappingConfig, build_scene_map
    from sceneloc.mapping.hybrid import HybridMapConfig, build_hybrid_map
    from sceneloc.mapping.multi_scene import (MultiSceneConfig, build_multi_scene_map, check_can_continue,
                                              config_of_map)
    from sceneloc.maps.multi_scene_map import MultiSceneMap
    from sceneloc.nn.encoders import load_encoder

    if map_type not in ("scr", "structure", "hybrid", "landmarks"):
        _fail(f"unknown --type {map_type!r} (use scr, structure, hybrid or landmarks)")
    if len(scene_dirs) > 1 and not multi:
        _fail(f"{len(scene_dirs)} scene folders given: pass --multi to map them into one model")
    if landmarks is not None and map_type != "landmarks":
        _fail("--landmarks is for --type landmarks")
    if map_type == "landmarks":
        given = [name for name, value in {"--multi": multi, "--keypoints": keypoints, "--init": start_from,
                                          "--buffer-size": buffer_size, "--budget-mb": budget_mb}.items()
                 if value not in (None, False)]
        if given:
            _fail(f"--type landmarks maps one scene: {', '.join(given)} are for other map types")
        settings = {"num_landmarks": landmarks, "encoder": encoder, "iterations": iterations,
                    "image_height": image_height, "precision": precision}
        _map_landmarks(scene_dirs[0], output, split, images, seed, device, settings, overrides)
        return
    if map_type == "structure":
        scr_only = {"--multi": multi, "--keypoints": keypoints, "--init": start_from, "--encoder": encoder,
                    "--iterations": iterations, "--buffer-size": buffer_size, "--image-height": image_height,
                    "--precision": precision}
        given = [name for name, value in scr_only.items() if value not in (None, False)]
        if given:
            _fail(f"--type structure maps one scene from SIFT points: {', '.join(given)} are for scr maps")
        _map_structure(scene_dirs[0], output, split, images, budget_mb, seed, overrides)
        return
    hybrid = map_type == "hybrid"
    if budget_mb is not None and not hybrid:
        _fail("--budget-mb is for --type structure or hybrid")
    if hybrid and (multi or start_from is not None):
        _fail("--type hybrid maps one scene: --multi and --init are for scr maps")
    if start_from is not None and not multi:
        _fail("--init continues a multi-scene map: pass --multi")
    dev = _device(device)
    start = None if start_from is None else MultiSceneMap.load(start_from, dev)
    if start is not None:
        config = config_of_map(start_from, start)
    elif hybrid:
        config = HybridMapConfig()
        config.structure.budget_mb, config.structure.seed = budget_mb, seed
    else:
        config = MultiSceneConfig() if multi else MappingConfig()
    mapping = config.mapping if multi else config.scr if hybrid else config
    mapping.seed = seed
    mapping.keypoints.enabled = keypoints
    for name, value in [("encoder", encoder), ("iterations", iterations), ("buffer_size", buffer_size),
                        ("image_height", image_height), ("precision", precision)]:
        if value is not None:
            setattr(mapping, name, value)
    try:
        apply_overrides(config, overrides or [])
        config.validate()
        load_encoder(mapping.encoder)
    except ValueError as e:
        _fail(str(e))
    if start is not None:
        try:
            check_can_continue(start, config)
        except ValueError as e:
            _fail(f"{start_from}: cannot continue from this map: {e}")
    check_writable(output, [*scene_dirs, *([] if start_from is None else [start_from])])
    scenes = [read_scene(d, split=split, images=images) for d in scene_dirs]
    console.print(f"mapping [bold]{', '.join(s.name for s in scenes)}[/]: "
                  f"{sum(len(s.frames) for s in scenes)} frames, encoder {mapping.encoder}, device {dev}")
    if hybrid:
        hybrid_map = build_hybrid_map(scenes[0], config, dev)
        hybrid_map.save(output)
        build = hybrid_map.metadata["build"]
        console.print(f"wrote {output} ({output.stat().st_size / 1e6:.2f} MB): head in {build['scr_s']:.0f} s, "
                      f"{build['structure']['n_points']:,} of {build['structure']['n_triangulated']:,} points in "
                      f"{build['structure_s']:.0f} s")
        return
    if multi:
        scene_map, summary = build_multi_scene_map(scenes, config, dev, start=start)
    else:
        scene_map, summary = build_scene_map(scenes[0], config, dev)
    scene_map.save(output)
    console.print(f"wrote {output} ({output.stat().st_size / 1e6:.2f} MB) in {summary.total_s:.0f} s "
                  f"(encode {summary.encode_s:.0f} s, train {summary.train_s:.0f} s, peak RSS "
                  f"{summary.peak_rss_mb:.0f} MB)")
    if not multi and summary.steps < mapping.iterations:
        # Accuracy follows the rows trained on, so a user who asked for more steps must learn they were capped.
        console.print(f"note: training stopped after {summary.steps:,} of {mapping.iterations:,} steps, at "
                      f"max_buffer_epochs={mapping.max_buffer_epochs:g} passes over the {summary.buffer_rows:,}-row "
                      f"buffer; --set max_buffer_epochs=N trains longer")


def _map_structure(scene_dir: Path, output: Path, split: str, images: Path | None, budget_mb: float | None,
                   seed: int, overrides: list[str] | None) -> None:
    """`sceneloc map --type structure`: a StructureMap (mapping/structure/build.py)."""
    from sceneloc.data import read_scene
    from sceneloc.mapping.structure.build import StructureMapConfig, build_structure_map
    from sceneloc.runtime.config_overrides import apply_overrides

    config = StructureMapConfig(budget_mb=budget_mb, seed=seed)
    try:
        apply_overrides(config, overrides or [])
        config.validate()
    except ValueError as e:
        _fail(str(e))
    check_writable(output, [scene_dir])
    scene = read_scene(scene_dir, split=split, images=images)
    console.print(f"mapping [bold]{scene.name}[/]: {len(scene.frames)} frames, structure map (SIFT, "
                  f"{config.codec} codes of {config.descriptor_bytes} bytes)")
    structure_map = build_structure_map(scene, config)
    structure_map.save(output)
    build = structure_map.metadata["build"]
    console.print(f"wrote {output} ({output.stat().st_size / 1e6:.2f} MB): {build['n_points']:,} of "
                  f"{build['n_triangulated']:,} points in {build['n_clusters']} clusters, in "
                  f"{build['timings']['total_s']:.0f} s")
    ratio = output.stat().st_size / build["uncompressed_bytes"]
    if ratio > 0.5:
        # A scene of few points (a handful of mapping frames, weak texture): the codec and cluster descriptors
        # cost about the same on any scene, so compression stops paying (BENCHMARKS section 13, slambook).
        console.print(f"note: this map is {ratio:.0%} of the bytes of its {build['n_triangulated']:,} points "
                      f"uncompressed ({build['fixed_bytes'] / 1e6:.3f} MB of it codec and cluster descriptors): the "
                      f"scene is too small for compression to pay; `--set budget_fraction=1` keeps every point, "
                      f"`--type hybrid` adds scene coordinates", soft_wrap=True)


def _map_landmarks(scene_dir: Path, output: Path, split: str, images: Path | None, seed: int, device: str,
                   settings: dict, overrides: list[str] | None) -> None:
    """`sceneloc map --type landmarks`: a LandmarkMap (mapping/landmarks/build.py)."""
    from sceneloc.data import read_scene
    from sceneloc.mapping.landmarks.build import LandmarkMapConfig, build_landmark_map
    from sceneloc.nn.encoders import load_encoder
    from sceneloc.runtime.config_overrides import apply_overrides

    config = LandmarkMapConfig(seed=seed)
    for name, value in settings.items():
        if value is not None:
            setattr(config, name, value)
    try:
        apply_overrides(config, overrides or [])
        config.validate()
        load_encoder(config.encoder)
    except ValueError as e:
        _fail(str(e))
    dev = _device(device)
    check_writable(output, [scene_dir])
    scene = read_scene(scene_dir, split=split, images=images)
    console.print(f"mapping [bold]{scene.name}[/]: {len(scene.frames)} frames, {config.num_landmarks} landmarks, "
                  f"encoder {config.encoder}, device {dev}")
    landmark_map = build_landmark_map(scene, config, dev)
    landmark_map.save(output)
    build = landmark_map.metadata["build"]
    timings = build["timings"]
    console.print(f"wrote {output} ({output.stat().st_size / 1e6:.2f} MB): {build['n_landmarks']} landmarks of "
                  f"{build['n_triangulated']:,} points, {build['visible_per_view']['median']:.0f} visible per view; "
                  f"points {timings['points_s']:.0f} s, encoding {timings['encode_s']:.0f} s, head "
                  f"{timings['train_s']:.0f} s", soft_wrap=True)


@app.command("add-keypoints")
def add_keypoints_command(
    map_file: Path = typer.Argument(..., help="Single-scene map file from `sceneloc map` (without --keypoints)"),
    scene_dir: Path = typer.Argument(..., help="The posed images the map was made from"),
    output: Path = typer.Option(..., "-o", "--output", help="Map file to write (not MAP_FILE: inputs are never "
                                                            "overwritten)"),
    split: str = typer.Option("train", help="Split the map was made from when the folder has train/test splits"),
    images: Optional[Path] = typer.Option(None, help="Image folder for a COLMAP model, if not beside it"),
    fine_tune: Optional[int] = typer.Option(None, "--fine-tune", help="Steps of keypoint-guided fine-tuning of the "
                                                                        "head (default 0: none)"),
    device: str = DeviceOption,
    overrides: Optional[list[str]] = typer.Option(None, "--set", help="Override any KeypointConfig field, e.g. "
                                                                      "--set label_repro_px=3"),
):
    """Add a keypoint network to an existing map (and optionally fine-tune its head on keypoints) without training
    the head again: the same result as `sceneloc map --keypoints` for the map's own settings and seed."""
    from sceneloc.runtime.config_overrides import apply_overrides
    from sceneloc.data import read_scene
    from sceneloc.mapping import add_keypoints
    from sceneloc.mapping.config import KeypointConfig
    from sceneloc.maps.scene_map import SceneMap

    keypoints = KeypointConfig()
    if fine_tune is not None:
        keypoints.fine_tune_iterations = fine_tune
    try:
        apply_overrides(keypoints, overrides or [])
    except ValueError as e:
        _fail(str(e))
    dev = _device(device)
    check_writable(output, [map_file, scene_dir])
    scene_map = SceneMap.load(map_file, dev)
    scene = read_scene(scene_dir, split=split, images=images)
    try:
        new_map, result = add_keypoints(scene_map, scene, keypoints, dev)
    except ValueError as e:
        _fail(f"{map_file}: {e}")
    new_map.save(output)
    stats = result["keypoints"]
    console.print(f"keypoint network: {stats['positive_fraction']:.0%} of buffer rows are keypoints, validation AUC "
                  f"{stats['val_auc']:.2f}; wrote {output} ({output.stat().st_size / 1e6:.2f} MB) in "
                  f"{result['encode_s'] + result['keypoint_s']:.0f} s")


@app.command()
def localize(
    map_file: Path = typer.Argument(..., help="Map file from `sceneloc map`"),
    query_dir: Path = typer.Argument(..., help="Query images: any supported layout (poses not needed), an image "
                                               "folder or one image (cameras from --intrinsics or EXIF)"),
    output: Path = typer.Option(..., "-o", "--output", help="Poses file to write (name qw qx qy qz tx ty tz inliers; "
                                                             "see --format)"),
    fmt: str = typer.Option("sceneloc", "--format", help="Poses file format: sceneloc | ace | hloc | colmap "
                                                          "(COLMAP images.txt); all hold cam_from_world"),
    intrinsics: Optional[Path] = typer.Option(
        None, "--intrinsics", help="Cameras of an image folder or image, in hloc's queries_with_intrinsics.txt "
                                   "format (name MODEL width height params...); default: from each image's EXIF"),
    split: str = typer.Option("test", help="Split to localize when the folder has train/test splits"),
    images: Optional[Path] = typer.Option(None, help="Image folder for a COLMAP model, if not beside it"),
    backend: str = typer.Option("poselib", help="RANSAC-PnP backend: poselib | opencv"),
    threshold: Optional[float] = typer.Option(None, help="RANSAC inlier threshold in pixels at 480 px image height "
                                                         "(default 20; structure maps 12, landmark maps 8)"),
    scene_name: Optional[str] = typer.Option(None, "--scene", help="Multi-scene maps: the scene the queries show, "
                                                                     "or 'auto' to identify it per image"),
    server: Optional[str] = typer.Option(None, "--server", help="Localize through a running `sceneloc serve` at "
                                                                  "this URL; MAP_FILE is then the map's name there"),
    token_file: Optional[Path] = typer.Option(None, "--token-file", help="With --server: file holding the token "
                                                                          "(default: $SCENELOC_TOKEN)"),
    device: str = DeviceOption,
    precision: str = PrecisionOption,
    overrides: Optional[list[str]] = SetOption,
):
    """Localize query images against a map (or a server's map, --server); writes a poses file and <output>.json with
    per-image details."""

    from sceneloc.runtime.config_overrides import apply_overrides
    from sceneloc.data import read_scene
    from sceneloc.data.query_images import read_query_images
    from sceneloc.export.pose_formats import FORMATS
    from sceneloc.export.poses import check_image_name
    from sceneloc.api import Localizer, load_map
    from sceneloc.localize.loop import LocalizeConfig
    from sceneloc.maps.files import read_map_metadata
    from sceneloc.maps.multi_scene_map import FORMAT as MULTI_FORMAT

    config = LocalizeConfig(precision=_precision(precision))
    config.solver.backend = backend
    if threshold is not None:  # one threshold for the map at hand, whichever kind it is
        config.solver.inlier_threshold_px = threshold
        config.structure_threshold_px = config.landmark_threshold_px = threshold
    try:
        apply_overrides(config, overrides or [])
    except ValueError as e:
        _fail(str(e))
    if config.solver.backend not in ("poselib", "opencv"):
        _fail(f"unknown backend {config.solver.backend!r} (use poselib or opencv)")
    if fmt not in FORMATS:
        _fail(f"unknown --format {fmt!r} (use {', '.join(FORMATS)})")
    if intrinsics is not None and images is not None:
        _fail("--images is for COLMAP models; with --intrinsics the images are in QUERY")
    dev = _device(device)
    details_json = output.with_suffix(output.suffix + ".json")
    for path in (output, details_json):
        check_writable(path, [*([] if server else [map_file]), query_dir, *([intrinsics] if intrinsics else [])])
    if server is not None and (overrides or threshold is not None or backend != "poselib"):
        _fail("--server: the server's settings apply (sceneloc serve --set localize.*), not --set/--threshold/"
              "--backend")
    if server is None:
        map_format = read_map_metadata(map_file).get("format")
        is_multi = map_format == MULTI_FORMAT
        if is_multi and scene_name is None:
            _fail(f"{map_file}: a multi-scene map: pass --scene NAME or --scene auto")
        if not is_multi and scene_name is not None:
            _fail(f"{map_file}: --scene needs a multi-scene map (from `sceneloc map --multi`)")
    if intrinsics is not None:
        scene = read_query_images(query_dir, intrinsics)
    else:
        scene = read_scene(query_dir, split=split, images=images)
    for frame in scene.frames:  # before localizing: a name the poses file cannot hold must not fail at the end
        check_image_name(output, frame.name)
    if server is not None:
        estimates = _localize_on_server(server, token_file, str(map_file), scene, scene_name)
        _write_poses(output, details_json, fmt, scene, estimates, f"on {server}")
        return
    estimates = Localizer(load_map(map_file, str(dev)), config, scene_name).localize_scene(scene, show_progress=True)
    _write_poses(output, details_json, fmt, scene, estimates, "")


def _write_poses(output: Path, details_json: Path, fmt: str, scene, estimates: list, where: str) -> None:
    """The poses file and its details JSON of `sceneloc localize`, and its summary line."""
    import numpy as np

    from sceneloc.export.pose_formats import write_pose_file
    from sceneloc.export.poses import write_pose_details_json

    write_pose_file(output, estimates, fmt, image_names={f.name: f.rgb_path.name for f in scene.frames})
    write_pose_details_json(details_json, estimates)
    ok = sum(e.cam_from_world is not None for e in estimates)
    ms = np.median([e.details["time_ms"] for e in estimates]) if estimates else float("nan")
    console.print(f"localized {ok}/{len(estimates)} images{' ' + where if where else ''}, median {ms:.0f} ms/image "
                  f"({1000 / ms:.1f} img/s); wrote {output}")


def _localize_on_server(server: str, token_file: Path | None, map_name: str, scene, scene_name: str | None) -> list:
    """`sceneloc localize --server`: every query frame through the server's localize endpoint, in order."""
    from sceneloc.client import Client, ServiceError
    from sceneloc.runtime.progress import make_progress
    from sceneloc.serve.auth import read_token

    token = read_token(token_file)
    estimates = []
    with Client(server, token) as client:
        try:
            served = {m["name"]: m for m in client.maps()}
        except ServiceError as e:
            _fail(f"{server}: {e.message}")
        except Exception as e:  # connection refused, DNS, TLS: one line, not a traceback
            _fail(f"{server}: cannot reach the server ({e.__class__.__name__}: {e})")
        if map_name not in served:
            _fail(f"{server}: no map named {map_name!r} (maps: {', '.join(served)})")
        if served[map_name]["scenes"] is not None and scene_name is None:
            _fail(f"{server}: {map_name} is a multi-scene map: pass --scene NAME or --scene auto")
        with make_progress(True) as progress:
            task = progress.add_task(f"localizing on {server}", total=len(scene.frames), info="")
            for frame in scene.frames:
                try:
                    estimate = client.localize_frame(map_name, frame, scene_name)
                except ServiceError as e:
                    _fail(f"{frame.rgb_path}: {server} refused it: {e.message}")
                estimates.append(estimate)
                progress.update(task, advance=1)
    return estimates


@app.command()
def evaluate(
    poses: Path = typer.Argument(..., help="Poses file: from `sceneloc localize`, ACE's poses_*.txt, hloc's "
                                           "results or a COLMAP images.txt"),
    fmt: Optional[str] = typer.Option(None, "--format", help="sceneloc | ace | hloc | colmap (default: detected "
                                                              "from the content)"),
    gt: Path = typer.Option(..., "--gt", help="Query folder with ground-truth poses"),
    split: str = typer.Option("test", help="Split of --gt when it has train/test splits"),
    images: Optional[Path] = typer.Option(None, help="Image folder for a COLMAP model, if not beside it"),
    output: Optional[Path] = typer.Option(None, "-o", "--output",
                                          help="Report prefix: writes PREFIX.json, PREFIX.md, PREFIX_cdf.png "
                                               "(default: next to the poses file)"),
):
    """Median errors and recalls at (1cm,1deg) ... (50cm,5deg); JSON + markdown + error-CDF PNG."""
    from sceneloc.data import read_scene
    from sceneloc.evaluate.metrics import check_coverage, evaluate_poses
    from sceneloc.evaluate.report import format_summary_table, report_paths, write_report
    from sceneloc.export.pose_formats import FORMATS, match_to_frames, read_pose_file

    if fmt is not None and fmt not in FORMATS:
        _fail(f"unknown --format {fmt!r} (use {', '.join(FORMATS)})")
    prefix = output or poses.with_name(poses.stem + "_eval")
    for path in report_paths(prefix):
        check_writable(path, [poses, gt])
    fmt, estimates = read_pose_file(poses, fmt)
    scene = read_scene(gt, split=split, images=images)
    truth = {f.name: f.cam_from_world for f in scene.posed_frames}
    if not truth:
        _fail(f"{gt}: no ground-truth poses found")
    estimates = match_to_frames(estimates, scene.posed_frames, poses, gt)
    check_coverage(estimates, truth, poses, gt)
    console.print(f"read {len(estimates)} poses from {escape(str(poses))} ({fmt} format)", soft_wrap=True)
    result = evaluate_poses(estimates, truth)
    written = write_report(result, prefix)
    Console().print(format_summary_table(result))
    console.print("wrote " + ", ".join(str(p) for p in written))


@app.command()
def render(
    scene: Optional[str] = typer.Argument(None, help="Benchmark scene name (see --list)"),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Folder to write (train/ and test/ inside)"),
    seed: Optional[int] = typer.Option(None, help="Another room of the same kind (procedural scenes only)"),
    overwrite: bool = typer.Option(False, help="Replace frames already in the folder (procedural scenes)"),
    data_root: Optional[Path] = typer.Option(
        None, "--data-root", help="Folder holding copyroom/ (the scan copyroom is rendered from; default: "
                                  "$SCENELOC_DATA)"),
    list_scenes: bool = typer.Option(False, "--list", help="List the scene names and exit"),
):
    """Render a benchmark scene as an ACE-style folder that `map` and `localize` read directly (with mesh.ply, the
    scene's exact geometry)."""
    from sceneloc.bench.scan_scenes import COPYROOM
    from sceneloc.bench.scenes import default_data_root
    from sceneloc.data.copyroom import CopyroomConfig
    from sceneloc.data.synthetic import PRESETS, render_scene_to_folder

    if list_scenes:
        for name, config in PRESETS.items():
            Console().print(f"{name}: procedural, {config.width}x{config.height}, {config.n_map} mapping + "
                            f"{config.n_query} query frames")
        copy = CopyroomConfig()
        Console().print(f"{COPYROOM.name}: the copyroom scan along its real trajectory (needs --data-root), "
                        f"{copy.width}x{copy.height}, {copy.n_map} mapping + {copy.n_query} query frames")
        return
    if scene is None or output is None:
        _fail("render needs a SCENE name and -o DIR (or --list)")
    if scene == COPYROOM.name:
        if seed is not None:
            _fail("copyroom follows its real trajectory: --seed applies to procedural scenes only")
        COPYROOM.write(output, data_root=data_root if data_root is not None else default_data_root())
    elif scene in PRESETS:
        config = PRESETS[scene] if seed is None else PRESETS[scene].with_seed(seed)
        render_scene_to_folder(config, output, overwrite=overwrite)
    else:
        _fail(f"unknown scene {scene!r}; available: {', '.join([*PRESETS, COPYROOM.name])}")
    console.print(f"wrote {output}/train, {output}/test and {output}/mesh.ply")


@app.command()
def bench(
    out: Path = typer.Option(..., "--out", help="Folder for results.json, report.md, plots/, maps/ and poses/"),
    suite: str = typer.Option("quick", "--suite",
                              help="Suites, comma-separated: tiny | quick | speed | standard | real"),
    methods: Optional[str] = typer.Option(None, "--methods",
                                          help="Methods, comma-separated: scr, colmap-sift, ... (default: the "
                                               "suite's)"),
    scenes: Optional[str] = typer.Option(None, "--scenes", help="Only these scenes of the suite, comma-separated"),
    cache: Optional[Path] = typer.Option(None, "--cache", help="Rendered-scene cache (default: $SCENELOC_CACHE, "
                                                                "else ~/.cache/sceneloc)"),
    data_root: Optional[Path] = typer.Option(
        None, "--data-root", help="Folder holding the real data sets (copyroom/, strecha/, ...) of the standard and "
                                  "real suites (default: $SCENELOC_DATA)"),
    device: str = DeviceOption,
    precision: str = PrecisionOption,
    overrides: Optional[list[str]] = typer.Option(
        None, "--set", help="Method setting: key=value for scr's mapping config, colmap-sift.key=value for the peer"),
    resume: bool = typer.Option(False, "--resume", help="Reuse maps an earlier run left in --out (same method and "
                                                        "settings) instead of building them again"),
):
    """Benchmark sceneloc against its peers (accuracy, mapping time and memory, query time, map size)."""
    from sceneloc.bench.report import format_results_table
    from sceneloc.bench.runner import BenchOptions, run_bench

    options = BenchOptions(out_dir=out, suites=[s.strip() for s in suite.split(",") if s.strip()],
                           methods=[m.strip() for m in methods.split(",") if m.strip()] if methods else None,
                           scenes=[n.strip() for n in scenes.split(",") if n.strip()] if scenes else None,
                           cache_dir=cache, data_root=data_root, overrides=overrides or [],
                           device=_device(device).type, precision=_precision(precision), resume=resume)
    rows = run_bench(options, log=lambda message: console.print(escape(message), soft_wrap=True))
    Console().print(format_results_table(rows))
    console.print(f"wrote {out / 'results.json'}, {out / 'report.md'} and {out / 'plots'}")


@app.command()
def serve(
    map_files: list[Path] = typer.Argument(..., help="Map files to serve (any kind); each is named by its file's "
                                                     "stem: office.map -> /v1/maps/office"),
    host: str = typer.Option("127.0.0.1", help="Address to bind (loopback unless told otherwise)"),
    port: int = typer.Option(8700, help="TCP port"),
    token_file: Optional[Path] = typer.Option(None, "--token-file", help="File holding the bearer token clients "
                                                                          "must send (default: $SCENELOC_TOKEN)"),
    workers: int = typer.Option(1, help="Server processes, each with the maps loaded"),
    threads: int = typer.Option(0, help="Localization threads per process (0: one per core)"),
    queue_size: Optional[int] = typer.Option(None, "--queue-size", help="Requests admitted beyond the running ones "
                                                                         "before 503 (default 8)"),
    reconstruct: bool = typer.Option(False, "--reconstruct", help="Fuse the frames streams localize into a mesh "
                                                                   "per map (scene-coordinate maps); the viewer "
                                                                   "shows it as it grows"),
    device: str = DeviceOption,
    overrides: Optional[list[str]] = typer.Option(None, "--set", help="Override any ServeConfig field, e.g. --set "
                                                                      "max_body_bytes=8000000 --set "
                                                                      "localize.solver.max_iterations=2000"),
):
    """Serve maps to AR clients over HTTP and WebSocket: localize, stream, metrics and a browser viewer
    (docs/SERVICE.md). Stops gracefully on Ctrl-C / SIGTERM."""
    from sceneloc.serve.auth import read_token

    read_token(token_file)  # a missing token fails now, before the seconds of importing torch below
    from sceneloc.runtime.config_overrides import apply_overrides
    from sceneloc.serve.config import ServeConfig
    from sceneloc.serve.server import describe, serve as run_server

    config = ServeConfig(host=host, port=port, workers=workers, threads=threads, device=device,
                         reconstruct=reconstruct)
    if queue_size is not None:
        config.queue_size = queue_size
    try:
        apply_overrides(config, overrides or [])
        config.validate()
    except ValueError as e:
        _fail(str(e))
    _device(config.device)

    def ready(maps) -> None:
        where = f"http://{config.host}:{config.port}"
        console.print(f"serving {len(maps)} map(s) on {where} ({config.workers} process(es)):\n{describe(maps)}\n"
                      f"viewer: {where}/viewer?token=<token>   stop: Ctrl-C")

    run_server(config, map_files, token_file, ready)


@app.command("load-test")
def load_test_command(
    map_file: Path = typer.Argument(..., help="Map file to serve"),
    query_dir: Path = typer.Argument(..., help="Query images with cameras (any supported layout)"),
    output: Path = typer.Option(..., "-o", "--output", help="Folder for results.json, report.md, load.png"),
    clients: str = typer.Option("1,4,16", help="Concurrent clients of each HTTP phase, comma-separated"),
    seconds: float = typer.Option(60.0, help="Length of each HTTP phase"),
    stream_seconds: float = typer.Option(30.0, "--stream-seconds", help="Length of the stream phase (0: none)"),
    stream_fps: float = typer.Option(30.0, "--stream-fps", help="Frames per second the stream client sends"),
    split: str = typer.Option("test", help="Split to use when the folder has train/test splits"),
    serve_args: Optional[list[str]] = typer.Option(None, "--serve-arg", help="An extra argument of `sceneloc "
                                                                             "serve` (repeat: --serve-arg=--threads "
                                                                             "--serve-arg=1)"),
):
    """Load-test `sceneloc serve` on a loopback port: throughput, latency percentiles, server memory, every
    request counted (answered, refused, lost), then a WebSocket stream at a fixed frame rate; against the
    in-process localize loop's throughput on the same cores."""
    from sceneloc.api import load_map
    from sceneloc.bench.service_load import LoadTestConfig, format_report, run_load_test
    from sceneloc.data import read_scene

    try:
        counts = [int(c) for c in clients.split(",")]
    except ValueError:
        _fail(f"--clients: expected comma-separated counts, got {clients!r}")
    if not counts or min(counts) < 1 or seconds <= 0 or stream_seconds < 0 or stream_fps <= 0:
        _fail("--clients must be positive counts, --seconds and --stream-fps positive, --stream-seconds >= 0")
    check_writable(output / "results.json", [map_file, query_dir])
    load_map(map_file, "cpu")  # a bad map fails here, in one line, before any server starts
    scene = read_scene(query_dir, split=split)
    config = LoadTestConfig(clients=counts, seconds=seconds, stream_seconds=stream_seconds, stream_fps=stream_fps,
                            serve_args=serve_args or [])
    results = run_load_test(map_file, scene, output, config)
    console.print(format_report(results))
    console.print(f"wrote {output / 'results.json'}, {output / 'report.md'}, {output / 'load.png'}")


export_app = typer.Typer(no_args_is_help=True, help="Export what a map knows about its scene.")
app.add_typer(export_app, name="export")
app.add_typer(dem_app, name="dem")
app.add_typer(sdf_app, name="sdf")


@export_app.command("points")
def export_points_command(
    map_file: Path = typer.Argument(..., help="Map file from `sceneloc map`"),
    scene_dir: Optional[Path] = typer.Argument(None, help="The posed mapping images (any supported layout); not "
                                                          "needed for structure and landmark maps, which hold their "
                                                          "points (a "
                                                          "hybrid map: its points without it, its head's cloud "
                                                          "with it)"),
    output: Path = typer.Option(..., "-o", "--output", help="PLY file to write (xyz float32 + rgb uint8)"),
    split: str = typer.Option("train", help="Split to export when the folder has train/test splits"),
    images: Optional[Path] = typer.Option(None, help="Image folder for a COLMAP model, if not beside it"),
    stride: Optional[int] = typer.Option(None, help="Use every STRIDE-th frame (default 1)"),
    min_depth: Optional[float] = typer.Option(None, help="Smallest camera-frame depth of a point, m (default 0.1)"),
    max_depth: Optional[float] = typer.Option(None, help="Largest camera-frame depth of a point, metres (default 10)"),
    keypoints: bool = typer.Option(True, "--keypoints/--no-keypoints",
                                   help="Keep only each frame's 25 % of cells the keypoint network rates highest "
                                        "(maps with one; --set keypoint_top_fraction=none for the paper's p > 0.9)"),
    consistency: bool = typer.Option(True, "--consistency/--no-consistency",
                                     help="Keep only cells whose prediction on the image rotated by 20 deg agrees "
                                          "within 0.1 m"),
    png: Optional[Path] = typer.Option(None, "--png", help="Also draw the cloud into this PNG"),
    device: str = DeviceOption,
    overrides: Optional[list[str]] = typer.Option(None, "--set", help="Override any PointExportConfig field, e.g. "
                                                                      "--set consistency_max_distance=0.05"),
):
    """Point cloud of a scene from its map: scene coordinates of every cell of every mapping frame, coloured from
    the image, filtered as in the keypoint paper (keypoint probability, rotation consistency, depth bounds). For a
    structure map: its points, coloured by co-visible cluster."""
    from sceneloc.runtime.config_overrides import configure
    from sceneloc.data import read_scene
    from sceneloc.evaluate.cloud import render_cloud_png, up_from_cameras
    from sceneloc.export.points import (PointExportConfig, export_points, landmark_points, structure_points,
                                        write_ply)
    from sceneloc.maps.files import read_map_metadata
    from sceneloc.maps.hybrid_map import FORMAT as HYBRID_FORMAT, HybridMap
    from sceneloc.maps.landmark_map import FORMAT as LANDMARK_FORMAT, LandmarkMap
    from sceneloc.maps.scene_map import SceneMap
    from sceneloc.maps.structure_map import FORMAT as STRUCTURE_FORMAT, StructureMap

    try:
        config = configure(PointExportConfig(use_keypoints=keypoints, consistency=consistency),
                           {"frame_stride": stride, "min_depth": min_depth, "max_depth": max_depth}, overrides)
    except ValueError as e:
        _fail(str(e))
    dev = _device(device)
    inputs = [map_file, *([] if scene_dir is None else [scene_dir])]
    check_writable(output, inputs)
    if png is not None:
        check_writable(png, [*inputs, output])
    map_format = read_map_metadata(map_file).get("format")
    hybrid_map = HybridMap.load(map_file, dev) if map_format == HYBRID_FORMAT else None
    if map_format in (STRUCTURE_FORMAT, LANDMARK_FORMAT) or (hybrid_map is not None and scene_dir is None):
        if map_format == LANDMARK_FORMAT:
            cloud = landmark_points(LandmarkMap.load(map_file))
            what = f"{len(cloud.xyz):,} landmarks"
        else:
            cloud = structure_points(StructureMap.load(map_file) if hybrid_map is None else hybrid_map.structure_map)
            what = f"{len(cloud.xyz):,} points in {cloud.counts['clusters']} clusters"
        write_ply(output, cloud)
        console.print(f"wrote {output}: {what}")
        if png is not None:
            render_cloud_png(cloud, png, title=f"{map_file.name}: {len(cloud.xyz):,} points")
            console.print(f"wrote {png}")
        return
    if scene_dir is None:
        _fail(f"{map_file}: a scene-coordinate map: give the posed mapping images (SCENE_DIR) to export its points")
    scene_map = SceneMap.load(map_file, dev) if hybrid_map is None else hybrid_map.scene_map
    scene = read_scene(scene_dir, split=split, images=images)
    cloud = export_points(scene_map, scene, config, dev)
    write_ply(output, cloud)
    counts = cloud.counts
    failed = ", ".join(f"{k[len('failed_'):]} {v:,}" for k, v in counts.items() if k.startswith("failed_"))
    console.print(f"kept {counts['kept']:,} of {counts['cells']:,} points from {counts['frames']} frames "
                  f"(failed: {failed}); wrote {output}")
    if png is not None:
        render_cloud_png(cloud, png, up=up_from_cameras([f.cam_from_world for f in scene.frames]),
                         title=f"{scene.name}: {len(cloud.xyz):,} points")
        console.print(f"wrote {png}")


@app.command("complete-depth")
def complete_depth_command(
    map_file: Path = typer.Argument(..., help="Single-scene map of the scene (`sceneloc map`): its depth is the prior"),
    scene_dir: Path = typer.Argument(..., help="Posed frames with depth (any supported layout)"),
    output: Path = typer.Option(..., "-o", "--output", help="Folder to write: FRAME.depth.png per frame (uint16 "
                                                            "millimetres), or with --evaluate the report"),
    split: str = typer.Option("train", help="Split to use when the folder has train/test splits"),
    evaluate: bool = typer.Option(False, "--evaluate", help="Remove known depth in discs, fill it again with each "
                                                            "method and report the errors (depth_completion.json, "
                                                            ".md) instead of writing depth"),
    fraction: float = typer.Option(0.3, help="--evaluate: share of each frame's known depth removed"),
    stride: int = typer.Option(1, help="Use every STRIDE-th frame with depth"),
    device: str = DeviceOption,
    overrides: Optional[list[str]] = typer.Option(None, "--set", help="Override a DepthCompletionConfig field, "
                                                                      "e.g. --set steps=1000"),
):
    """Depth completion (landmark paper, section 3): fill the holes of each frame's depth from the map's depth and
    the image, with a small regressor fitted per image (sceneloc/export/depth.py)."""
    import cv2
    import numpy as np

    from sceneloc.data import read_scene
    from sceneloc.evaluate.report import write_json
    from sceneloc.export.depth import (DepthCompletionConfig, complete_depth, completion_markdown,
                                       evaluate_completion, map_depth)
    from sceneloc.maps.scene_map import SceneMap
    from sceneloc.runtime.atomic import write_bytes_atomic, write_text_atomic
    from sceneloc.runtime.config_overrides import apply_overrides
    from sceneloc.runtime.progress import make_progress

    config = DepthCompletionConfig()
    try:
        apply_overrides(config, overrides or [])
        config.validate()
    except ValueError as e:
        _fail(str(e))
    if not 0 < fraction < 1 or stride < 1:
        _fail("--fraction must be in (0, 1) and --stride >= 1")
    dev = _device(device)
    scene_map = SceneMap.load(map_file, dev)
    scene = read_scene(scene_dir, split=split)
    scene.require_poses()
    frames = [f for f in scene.frames if f.depth_path is not None][::stride]
    if not frames:
        _fail(f"{scene_dir}: no frame has depth to complete")
    if output.exists() and not output.is_dir():
        _fail(f"{output}: exists and is not a folder")
    inputs = [map_file, scene_dir, *(f.depth_path for f in frames), *(f.rgb_path for f in frames)]
    # <frame name>.depth.png: the ACE folder's depth naming, so the folder can stand in for a scene's depth/.
    names = ["depth_completion.json", "depth_completion.md"] if evaluate else [f"{f.name}.depth.png" for f in frames]
    for name in names:
        check_writable(output / name, inputs)
    if evaluate:
        result = evaluate_completion(scene_map, frames, config, fraction, dev)
        write_json(output / names[0], result)
        write_text_atomic(output / names[1], completion_markdown(result, scene.name))
        console.print(completion_markdown(result, scene.name), soft_wrap=True)
        console.print(f"wrote {output / names[0]}, {output / names[1]}")
        return
    with make_progress(True) as progress:
        task = progress.add_task("completing depth", total=len(frames), info="")
        for frame, name in zip(frames, names):
            depth, rgb = frame.load_depth(), frame.load_rgb()
            prior = map_depth(scene_map, rgb, frame.camera, frame.cam_from_world, dev)
            filled, stats = complete_depth(depth, rgb, prior, config)
            millimetres = np.clip(np.round(filled * 1000.0), 0, 65535).astype(np.uint16)
            write_bytes_atomic(output / name, cv2.imencode(".png", millimetres)[1].tobytes())
            progress.update(task, advance=1, info=f"{(depth <= 0).mean():.0%} filled")
    console.print(f"wrote {len(frames)} depth PNGs (uint16 millimetres) to {output}")


@app.command("reconstruct")
def reconstruct_command(
    scene_dir: Path = typer.Argument(..., help="Posed frames (any supported layout), with or without depth"),
    output: Path = typer.Option(..., "-o", "--output", help="Mesh file to write (.ply: vertex colours and normals)"),
    map_file: Optional[Path] = typer.Option(None, "--map", help="Scene-coordinate map of the scene: the depth of "
                                                                "frames without depth (else the plane sweep's)"),
    depth: Optional[str] = typer.Option(None, "--depth", help="Depth per frame: auto (sensor where there is, else "
                                                              "the map's, else multiview) | sensor | multiview "
                                                              "(plane sweep over "
                                                              "posed neighbours) | map | completed (sensor holes "
                                                              "filled from the map)"),
    voxel: Optional[float] = typer.Option(None, "--voxel", help="Voxel size in metres (default 0.02)"),
    split: str = typer.Option("train", help="Split to use when the folder has train/test splits"),
    stride: Optional[int] = typer.Option(None, help="Fuse every STRIDE-th frame (default 1)"),
    semantics: bool = typer.Option(False, "--semantics", help="Label every vertex (floor, wall, ceiling, "
                                                              "furniture, stairs): the PLY's 'label' property"),
    semantics_model: Optional[Path] = typer.Option(None, "--semantics-model", help="Segmentation model for "
                                                                                   "--semantics (default: the "
                                                                                   "shipped one; implies it)"),
    device: str = DeviceOption,
    overrides: Optional[list[str]] = typer.Option(None, "--set", help="Override a ReconstructionConfig field, e.g. "
                                                                      "--set max_depth_m=4"),
):
    """Dense reconstruction: TSDF fusion of the frames' depth (sensor, or what a map implies) into a coloured mesh,
    coarse to fine, optionally labelled per vertex (sceneloc/reconstruct/fusion.py)."""
    from sceneloc.data import read_scene
    from sceneloc.data.mesh_file import write_mesh
    from sceneloc.maps.scene_map import SceneMap
    from sceneloc.reconstruct.fusion import ReconstructionConfig, reconstruct
    from sceneloc.runtime.config_overrides import configure

    try:
        config = configure(ReconstructionConfig(), {"depth": depth, "voxel_m": voxel, "frame_stride": stride},
                           overrides)
    except ValueError as e:
        _fail(str(e))
    if output.suffix.lower() != ".ply":
        _fail(f"{output}: the mesh is written as PLY: give a .ply name")
    check_writable(output, [scene_dir, *([] if map_file is None else [map_file]),
                            *([] if semantics_model is None else [semantics_model])])
    dev = _device(device)
    segmentation = None
    if semantics or semantics_model is not None:
        from sceneloc.reconstruct.semantics import SHIPPED_MODEL, load_segmentation

        segmentation = load_segmentation(semantics_model or SHIPPED_MODEL)
    scene_map = None if map_file is None else SceneMap.load(map_file, dev)
    scene = read_scene(scene_dir, split=split)
    mesh, stats = reconstruct(scene, config, scene_map, dev, segmentation=segmentation)
    labels = mesh.vertex["labels"].numpy() if "labels" in mesh.vertex else None
    write_mesh(output, mesh, labels)
    sources = ", ".join(f"{k} {v}" for k, v in stats["depth_sources"].items())
    labelled = "" if labels is None else f", labelled ({stats['semantics_s']:.0f} s of it)"
    console.print(f"wrote {output}: {stats['vertices']:,} vertices, {stats['triangles']:,} triangles from "
                  f"{stats['frames']} frames (depth: {sources}) in {stats['total_s']:.0f} s{labelled}")


@app.command("evaluate-mesh")
def evaluate_mesh_command(
    mesh_file: Path = typer.Argument(..., help="Reconstructed mesh (e.g. from `sceneloc reconstruct`)"),
    truth: Path = typer.Option(..., "--mesh", help="Ground-truth mesh (PLY, OBJ, ...), same world frame and units"),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Report prefix: PREFIX.json, PREFIX.md, "
                                                                       "PREFIX.png (default: next to the mesh)"),
    visible_from: Optional[Path] = typer.Option(None, "--visible-from", help="Posed frames: measure completeness "
                                                                             "and recall on the part of the truth "
                                                                             "they see"),
    split: str = typer.Option("train", help="--visible-from: the split whose frames count"),
    tau: Optional[float] = typer.Option(None, help="Distance threshold of precision and recall, metres (default 0.05)"),
    samples: Optional[int] = typer.Option(None, help="Points sampled on each mesh (default 200000)"),
):
    """CDRNet's 3D metrics of a mesh against the truth (accuracy, completeness, precision, recall, F-score; with
    labels on both meshes, the mIoU of the vertices); JSON + markdown, a PNG of the reconstruction coloured by its
    distance to the truth and one of it beside the truth."""
    import numpy as np
    import open3d as o3d
    from matplotlib import colormaps

    from sceneloc.data import read_scene
    from sceneloc.evaluate.cloud import (CloudEvalConfig, cloud_report_paths, format_cloud_table, read_mesh,
                                         render_cloud_png, sample_mesh, up_from_cameras, write_cloud_report)
    from sceneloc.data.mesh_file import read_vertex_labels
    from sceneloc.evaluate.mesh import evaluate_mesh, render_mesh_pair_png
    from sceneloc.evaluate.report import with_suffix
    from sceneloc.data.synthetic.room import SEMANTIC_CLASSES
    from sceneloc.evaluate.mesh import CLASS_COLOUR_NAMES
    from sceneloc.evaluate.semantic import mesh_semantic_scores
    from sceneloc.export.points import PointCloud
    from sceneloc.runtime.config_overrides import configure

    try:
        config = configure(CloudEvalConfig(), {"tau": tau, "n_mesh_samples": samples})
    except ValueError as e:
        _fail(str(e))
    prefix = output or mesh_file.with_name(mesh_file.stem + "_eval")
    png, pair = with_suffix(prefix, ".png"), Path(f"{prefix}_views.png")
    inputs = [mesh_file, truth, *([] if visible_from is None else [visible_from])]
    for path in cloud_report_paths(prefix) + [png, pair, Path(f"{prefix}_semantic.png")]:
        check_writable(path, inputs)
    mesh, truth_mesh = read_mesh(mesh_file), read_mesh(truth)
    posed = None if visible_from is None else read_scene(visible_from, split=split).posed_frames
    frames = None if posed is None else posed[::5]
    result = evaluate_mesh(mesh, truth_mesh, config, frames, config.n_mesh_samples)
    labels, truth_labels = read_vertex_labels(mesh_file), read_vertex_labels(truth)
    if labels is not None and truth_labels is not None:
        result["semantic"] = mesh_semantic_scores(mesh.vertex.positions.numpy(), labels, truth_mesh, truth_labels,
                                                  config.tau)
    written = write_cloud_report(result, prefix)
    points = sample_mesh(mesh, min(config.n_mesh_samples, 100_000), config.seed)
    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(truth_mesh)
    error = scene.compute_distance(o3d.core.Tensor(points)).numpy()
    rgb = (np.array(colormaps["RdYlGn_r"](np.clip(error / (2 * config.tau), 0, 1)))[:, :3] * 255).astype(np.uint8)
    render_cloud_png(PointCloud(points, rgb), png, title=f"{mesh_file.name}: distance to the truth (green 0, red >= "
                                                         f"{2 * config.tau * 100:g} cm)")
    up = None if posed is None else up_from_cameras([f.cam_from_world for f in posed])
    render_mesh_pair_png(mesh_file, truth_mesh, pair, up, f"{mesh_file.name}")
    pictures = [png, pair]
    if "semantic" in result:
        semantic_png = Path(f"{prefix}_semantic.png")
        names = ", ".join(f"{name} {colour}" for name, colour in zip(SEMANTIC_CLASSES, CLASS_COLOUR_NAMES))
        render_mesh_pair_png(mesh_file, truth_mesh, semantic_png, up, f"{mesh_file.name}: classes ({names})",
                             labels=(labels, truth_labels))
        pictures.append(semantic_png)
    Console().print(format_cloud_table(result))
    console.print("wrote " + ", ".join(str(p) for p in [*written, *pictures]))


@app.command("evaluate-cloud")
def evaluate_cloud_command(
    cloud_file: Path = typer.Argument(..., help="PLY point cloud (e.g. from `sceneloc export points`)"),
    mesh: Path = typer.Option(..., "--mesh", help="Ground-truth mesh (PLY, OBJ, ...), same world frame and units"),
    output: Optional[Path] = typer.Option(None, "-o", "--output",
                                          help="Report prefix: writes PREFIX.json, PREFIX.md, PREFIX.png "
                                               "(default: next to the cloud)"),
    tau: Optional[float] = typer.Option(None, help="Distance threshold of precision and recall, metres (default 0.05)"),
    samples: Optional[int] = typer.Option(None, help="Points sampled on the mesh for completeness and recall "
                                                     "(default 200000)"),
    seed: Optional[int] = typer.Option(None, help="Seed of the mesh sampling (default 0)"),
):
    """Accuracy, completeness, precision, recall and F-score of a point cloud against a mesh; JSON + markdown + PNG."""
    from sceneloc.evaluate.cloud import (CloudEvalConfig, cloud_report_paths, evaluate_cloud, format_cloud_table,
                                         read_mesh, render_cloud_png, write_cloud_report)
    from sceneloc.evaluate.report import with_suffix
    from sceneloc.export.points import read_ply
    from sceneloc.runtime.config_overrides import configure

    try:
        config = configure(CloudEvalConfig(), {"tau": tau, "n_mesh_samples": samples, "seed": seed})
    except ValueError as e:
        _fail(str(e))
    prefix = output or cloud_file.with_name(cloud_file.stem + "_eval")
    png = with_suffix(prefix, ".png")
    for path in cloud_report_paths(prefix) + [png]:
        check_writable(path, [cloud_file, mesh])
    cloud = read_ply(cloud_file)
    result = evaluate_cloud(cloud, read_mesh(mesh), config)
    written = write_cloud_report(result, prefix)
    render_cloud_png(cloud, png, title=f"{cloud_file.name}: {len(cloud.xyz):,} points")
    Console().print(format_cloud_table(result))
    console.print("wrote " + ", ".join(str(p) for p in [*written, png]))


def _model_training_setup(config, scenes: str | None, validation: str | None, steps: int | None,
                          overrides: list[str] | None, output: Path, what: str):
    """The shared start of the commands that train a shipped model on generated scenes: the config with --scenes,
    --validation (comma-separated preset:seed), --steps and --set applied, and the training record's path beside
    the .safetensors output, both checked writable. Exit code 2 for a bad setting or output name."""
    from sceneloc.runtime.config_overrides import configure

    def names(text: str | None) -> list[str] | None:
        return None if text is None else [n.strip() for n in text.split(",") if n.strip()]

    try:
        config = configure(config, {"scenes": names(scenes), "validation": names(validation), "steps": steps},
                           overrides)
    except ValueError as e:
        _fail(str(e))
    if output.suffix == ".json":
        _fail(f"{output}: the {what} is a .safetensors file (its training record is written beside it as .json)")
    record_path = output.with_suffix(".json")
    for path in (output, record_path):
        check_writable(path)
    return config, record_path


@app.command("train-scores")
def train_scores_command(
    output: Path = typer.Option(..., "-o", "--output", help="Scorer file to write (.safetensors; its training "
                                                           "record goes beside it as .json)"),
    scenes: Optional[str] = typer.Option(None, "--scenes", help="Training scenes, comma-separated preset:seed "
                                                                "(default: four quick-rooms, an office, a lowtex)"),
    validation: Optional[str] = typer.Option(None, "--validation", help="Held-out scenes, preset:seed, "
                                                                        "comma-separated"),
    steps: Optional[int] = typer.Option(None, "--steps", help="Optimiser steps (default 3000)"),
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir", help="Rendered-scene cache (default "
                                                                       "$SCENELOC_CACHE or ~/.cache/sceneloc)"),
    overrides: Optional[list[str]] = SetOption,
):
    """Train the learned distinctiveness scores of structure maps (`map --type structure --set scores=learned`) on
    generated scenes, labelled by matching success in their verification frames."""
    from rich.table import Table

    from sceneloc.evaluate.report import write_json
    from sceneloc.mapping.structure.scorer import save_scorer
    from sceneloc.mapping.structure.train_scores import KEPT_FRACTIONS, ScoreTrainingConfig, train_scorer

    config, record_path = _model_training_setup(ScoreTrainingConfig(), scenes, validation, steps, overrides, output,
                                                "scorer")
    net, record = train_scorer(config, cache_dir)
    save_scorer(output, net, record)
    write_json(record_path, record)
    table = Table(title="correct verification matches kept, best-scored points first")
    for column in ["scene", "scores", *(f"{100 * f:g} % of points" for f in KEPT_FRACTIONS)]:
        table.add_column(column)
    for row in record["validation"]:
        for kind, kept in row["kept"].items():
            table.add_row(row["scene"], kind, *(f"{100 * kept[f'{f:g}']:.1f} %" for f in KEPT_FRACTIONS))
    Console().print(table)
    console.print(f"wrote {output} and {record_path}: {record['n_points']:,} points, final loss "
                  f"{record['final_loss']:.4f}, {record['total_s']:.0f} s")


@app.command("train-segmentation")
def train_segmentation_command(
    output: Path = typer.Option(..., "-o", "--output", help="Model file to write (.safetensors; its training "
                                                           "record goes beside it as .json)"),
    scenes: Optional[str] = typer.Option(None, "--scenes", help="Training rooms, comma-separated preset:seed "
                                                                "(default: the five room presets, seeds 30-32)"),
    validation: Optional[str] = typer.Option(None, "--validation", help="Held-out rooms, preset:seed, "
                                                                        "comma-separated"),
    steps: Optional[int] = typer.Option(None, "--steps", help="Optimiser steps (default 3000)"),
    overrides: Optional[list[str]] = SetOption,
):
    """Train the segmentation head of `reconstruct --semantics` on generated rooms, whose renderer labels every
    pixel; reports the mIoU on the held-out rooms."""
    from rich.table import Table

    from sceneloc.evaluate.report import write_json
    from sceneloc.reconstruct.semantics import SEMANTIC_CLASSES, SegmentationTrainingConfig, train_segmentation

    config, record_path = _model_training_setup(SegmentationTrainingConfig(), scenes, validation, steps, overrides,
                                                output, "model")
    model, record = train_segmentation(config)
    model.save(output)
    write_json(record_path, record)
    if record["validation"]:
        table = Table(title="held-out rooms: IoU per class")
        for column in ["room", "mIoU", "accuracy", *SEMANTIC_CLASSES]:
            table.add_column(column)
        rows = [*record["validation"]["scenes"].items(), ("all", record["validation"])]
        for name, row in rows:
            table.add_row(name, f"{100 * row['miou']:.1f}", f"{100 * row['accuracy']:.1f}",
                          *("-" if row["iou"][c] is None else f"{100 * row['iou'][c]:.1f}" for c in SEMANTIC_CLASSES))
        Console().print(table)
    console.print(f"wrote {output} and {record_path}: {record['views']} views, final loss {record['final_loss']:.3f}, "
                  f"{record['render_s'] + record['train_s']:.0f} s")


def main() -> None:
    """Entry point: user errors become one red line and exit code 2, never a traceback."""
    try:
        app()
    except InputError as e:
        _print_error(str(e))
        sys.exit(2)


if __name__ == "__main__":
    main()
