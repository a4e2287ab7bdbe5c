"""`run_bench`: for each suite and scene, render it or take it from the cache, build each method's map in a fresh
child process (time and peak memory are that process's own), localize the query frames, evaluate them, and write
results.json, report.md, the plots, the maps and the poses files.

Output folder: results.json (one row per (suite, scene, method), keys in RESULT_KEYS plus extras), report.md,
plots/<suite>_<scene>_cdf.png (every method's error CDF), plots/<suite>_<scene>_size.png (recall against map size;
budget variants as curves), plots/<suite>_<scene>_<method>_trajectory.png,
maps/<suite>_<scene>_<method>.<ext> (each with <map>.build.json: the method's settings and how the map was built),
poses/<suite>_<scene>_<method>.txt (the poses file format).

Maps are reused, not rebuilt: a method whose map extends another's (keypoints on a trained head) starts from the
map of any method of the same run with the right settings for that scene; its map time is the sum of both builds.
With `resume`, maps already in the output folder (from an interrupted run) count too.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import platform
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

import sceneloc
from sceneloc.runtime.atomic import write_text_atomic
from sceneloc.bench.methods import METHODS, Method, ScrMethod, map_in_this_process
from sceneloc.bench.report import write_markdown_report
from sceneloc.evaluate.report import write_json
from sceneloc.bench.scenes import PreparedScene, default_cache_dir, default_data_root
from sceneloc.bench.suites import SUITES
from sceneloc.data import read_scene
from sceneloc.runtime.errors import InputError
from sceneloc.evaluate import evaluate_poses, plot_error_cdf, plot_recall_against_size, plot_trajectory
from sceneloc.export.poses import write_poses
from sceneloc.localize.estimate import PoseEstimate

RESULT_KEYS = ("suite", "scene", "method", "n_map", "n_query", "median_t_cm", "median_r_deg", "recall", "map_s",
               "map_peak_rss_mb", "query_ms_median", "map_bytes", "device", "seed", "commit")
"""Keys every results.json row has, in this order (extras follow)."""


@dataclass
class BenchOptions:
    """What `sceneloc bench` runs."""

    out_dir: Path
    """Folder for results.json, report.md, plots/, maps/ and poses/ (created; files in it are replaced)."""
    suites: list[str] = field(default_factory=lambda: ["quick"])
    """Names from SUITES, run in this order."""
    methods: list[str] | None = None
    """Names from METHODS, run on every scene; None runs each suite's own list."""
    scenes: list[str] | None = None
    """Only these scenes of the suites (by name); None runs them all."""
    cache_dir: Path | None = None
    """Rendered-scene cache; None: default_cache_dir() ($SCENELOC_CACHE or ~/.cache/sceneloc)."""
    data_root: Path | None = None
    """Folder holding the real data sets scenes of the standard and real suites are made from (copyroom/,
    sevenscenes_stairs_slice/, strecha/, slambook_rgbd/); None: $SCENELOC_DATA."""
    overrides: list[str] = field(default_factory=list)
    """Method settings: "key=value" or "scr.key=value" for scr's MappingConfig, "colmap-sift.key=value" for the
    peer's ColmapSiftConfig (nested fields with dots, as the CLI's --set)."""
    device: str = "cpu"
    """Torch device for scr ("cpu" or "cuda"); the peer always runs on the CPU."""
    precision: str = "auto"
    """Numeric precision of sceneloc's methods, mapping and localization ("auto", "bf16", "fp32"; see
    sceneloc.runtime.device); each row records the precision that ran."""
    show_progress: bool = True
    """Progress bars (rendering, mapping, localizing)."""
    resume: bool = False
    """Reuse the maps an earlier run left in out_dir/maps when their method and settings are the same (their
    recorded build time and memory are reported), instead of building them again."""


def split_overrides(assignments: list[str], precision: str = "auto") -> dict[str, list[str]]:
    """Route --set assignments to methods: a "<method>." prefix names the method, no prefix means every scr
    variant (scr, scr-*). Every method with a precision setting gets `precision` first (a --set may override it)."""
    routed: dict[str, list[str]] = {name: [] if method.precision_key is None else
                                    [f"{method.precision_key}={precision}"] for name, method in METHODS.items()}
    for item in assignments:
        for name in METHODS:
            if item.startswith(name + "."):
                routed[name].append(item[len(name) + 1:])
                break
        else:
            for name, method in METHODS.items():
                if isinstance(method, ScrMethod):
                    routed[name].append(item)
    return routed


def check_options(options: BenchOptions) -> dict[str, dict]:
    """Validates suites, methods and overrides before anything runs; returns each method's settings. Raises
    InputError (no file: the problem is the command line) naming what is wrong and what is available."""
    for name in options.suites:
        if name not in SUITES:
            raise InputError(None, f"unknown suite {name!r}; available: {', '.join(SUITES)}")
    for name in options.methods or []:
        if name not in METHODS:
            raise InputError(None, f"unknown method {name!r}; available: {', '.join(METHODS)}")
    available = [spec.name for suite in options.suites for spec in SUITES[suite].scenes]
    for name in options.scenes or []:
        if name not in available:
            raise InputError(None, f"unknown scene {name!r} in suite(s) {', '.join(options.suites)}; available: "
                                   f"{', '.join(available)}")
    settings = {}
    for name, assignments in split_overrides(options.overrides, options.precision).items():
        try:
            settings[name] = METHODS[name].settings(assignments)
        except (ValueError, InputError) as e:  # a bad value, or a setting out of range (the configs' validate)
            raise InputError(None, f"{name}: {e}") from None
    return settings


def source_commit() -> str | None:
    """The git commit sceneloc runs from, with "-dirty" appended when tracked files differ from it (a measurement
    of uncommitted code must say so); None for an installed copy or where git is missing."""
    checkout = Path(sceneloc.__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "-C", str(checkout), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=30, check=True).stdout.strip()
        changed = subprocess.run(["git", "-C", str(checkout), "status", "--porcelain", "--untracked-files=no"],
                                 capture_output=True, text=True, timeout=30, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("-dirty" if changed else "")


def map_in_child(method: str, scene_roots: list[Path], scene_names: list[str], map_path: Path, overrides: list[str],
                 device: str, show_progress: bool, base_map: Path | None = None) -> dict:
    """Builds a map of the scenes at scene_roots (train splits, named scene_names; one scene unless the method is
    multi-scene; extending base_map when given) in a fresh 'spawn' child process -> {"map_s", "peak_rss_mb",
    "details", "process_s"} (process_s: the child's whole life, start-up and imports included). Re-raises the
    child's InputError."""
    map_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="sceneloc-bench-") as tmp:
        result_path = Path(tmp) / "result.json"
        process = multiprocessing.get_context("spawn").Process(
            target=map_in_this_process, name=f"sceneloc-bench-map-{method}",
            args=(method, [str(r) for r in scene_roots], scene_names, str(map_path), overrides, device, show_progress,
                  str(result_path), None if base_map is None else str(base_map)))
        t0 = time.perf_counter()
        process.start()
        process.join()
        process_s = time.perf_counter() - t0
        if not result_path.is_file():
            raise RuntimeError(f"mapping with {method} failed in its child process (exit code "
                               f"{process.exitcode}; its traceback is above)")
        result = json.loads(result_path.read_text())
    if "error" in result:
        raise InputError(None, result["error"])
    return {**result, "process_s": process_s}


def _median(values: list[float]) -> float:
    return float(np.median(values)) if values else float("nan")


def _device_name(device: str) -> str:
    """The GPU's or CPU's model name."""
    if device == "cuda":
        import torch

        return torch.cuda.get_device_name()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _precision_that_ran(method: Method, settings: dict, device: str) -> str | None:
    """The precision `method` ran in ("bf16", "fp16", "fp32"), from its settings; None when it has none."""
    import torch

    from sceneloc.runtime.device import resolve_precision

    if method.precision_key is None:
        return None
    asked = settings
    for key in method.precision_key.split("."):
        asked = asked[key]
    return resolve_precision(asked, torch.device(device))


def _row(suite: str, scene_name: str, prepared: PreparedScene, method: str, n_map: int, result: dict,
         estimates: list[PoseEstimate], built: dict, device: str, commit: str | None, settings: dict) -> dict:
    """One results.json row: RESULT_KEYS, then extras. built: the pooled mapping result (_pool_builds)."""
    query_ms = _median([e.details["time_ms"] for e in estimates])
    device = "cpu" if METHODS[method].cpu_only else device
    precision = _precision_that_ran(METHODS[method], settings, device)
    return {
        "suite": suite, "scene": scene_name, "method": method, "n_map": n_map, "n_query": result["n_query"],
        "median_t_cm": result["median_t_cm"], "median_r_deg": result["median_r_deg"], "recall": result["recall"],
        "map_s": built["map_s"], "map_peak_rss_mb": built["peak_rss_mb"], "query_ms_median": query_ms,
        "map_bytes": built["map_bytes"], "device": device,
        "seed": prepared.seed, "commit": commit, "precision": precision,
        "resolution": f"{prepared.resolution[0]}x{prepared.resolution[1]}",
        "n_failed": result["n_failed"],
        "inlier_ratio_median": _median([e.inlier_ratio for e in estimates]),
        "ransac_iterations_median": _median([e.details["iterations"] for e in estimates
                                             if e.details.get("iterations") is not None]),
        "solver_ms_median": _median([e.details["solver_ms"] for e in estimates if "solver_ms" in e.details]),
        "num_inliers_median": _median([e.num_inliers for e in estimates]),
        "query_images_per_s": 1000.0 / query_ms if query_ms > 0 else None,
        "map_process_s": built["process_s"],
        "n_folds": built["n_folds"],
        "map_details": built["details"],
        "settings": settings,
        "device_name": _device_name(device),
        "cpu_count": os.cpu_count(),
        # Timings taken while other processes load the CPU are not comparable: this shows when that was so.
        "load_avg_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "scene_from_cache": prepared.from_cache,
        "scene_prepare_s": prepared.prepare_s,
        "sceneloc_version": sceneloc.__version__,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _pool_builds(builds: list[dict], map_paths: list[Path]) -> dict:
    """One mapping result for a scene mapped as several folds: mean time and size per map, the largest peak
    memory, the first fold's details."""
    return {"map_s": float(np.mean([b["map_s"] for b in builds])),
            "peak_rss_mb": float(max(b["peak_rss_mb"] for b in builds)),
            "process_s": float(np.mean([b["process_s"] for b in builds])),
            "map_bytes": int(np.mean([p.stat().st_size for p in map_paths])),
            "n_folds": len(builds), "details": builds[0]["details"]}


@dataclass
class _Run:
    """What every step of one bench run shares."""

    options: BenchOptions
    settings: dict[str, dict]
    overrides: dict[str, list[str]]
    out: Path
    commit: str | None
    log: Callable[[str], None]
    rows: list[dict] = field(default_factory=list)
    evaluations: dict[tuple[str, str], dict[str, dict]] = field(default_factory=dict)
    """(suite, scene row name) -> method -> evaluate_poses result, for the CDF plots."""
    maps_built: set[Path] = field(default_factory=set)
    """Maps built (or reused) by this run so far: the ones other methods may extend."""

    def add_row(self, suite: str, name: str, prepared: PreparedScene, method: str, n_map: int,
                estimates: list[PoseEstimate], truth: dict, built: dict, **extras) -> None:
        """Evaluate, write the poses and trajectory plot, and append the results.json row (file rewritten)."""
        tag = f"{suite}_{name}_{method}"
        write_poses(self.out / "poses" / f"{tag}.txt", estimates)
        result = evaluate_poses(estimates, truth)
        self.evaluations.setdefault((suite, name), {})[method] = result
        plot_trajectory(truth, estimates, self.out / "plots" / f"{tag}_trajectory.png")
        row = _row(suite, name, prepared, method, n_map, result, estimates, built, self.options.device,
                   self.commit, self.settings[method])
        self.rows.append({**row, **extras})
        # Rewritten after every row, so an interrupted run keeps what it measured.
        write_json(self.out / "results.json", self.rows)

    def build_map(self, method: str, roots: list[Path], names: list[str], map_path: Path, unit_tag: str) -> dict:
        """map_in_child's result for `method`'s map at map_path, reusing what can be reused (module docstring).
        unit_tag: "<suite>_<scene><fold>", the prefix of every method's map of the same scenes."""
        settings = self.settings[method]
        record = _build_record_path(map_path)
        if self.options.resume:
            built = _recorded_build(map_path, method, settings)
            if built is not None:
                self.log(f"{unit_tag} / {method}: reusing {map_path.name} from an earlier run")
                self.maps_built.add(map_path)
                return built
        base_map, base_built = self._find_base(method, unit_tag)
        record.unlink(missing_ok=True)  # an earlier record must not describe the map this build replaces
        started = datetime.now(timezone.utc).isoformat(timespec="seconds")
        built = map_in_child(method, roots, names, map_path, self.overrides[method], self.options.device,
                             self.options.show_progress, base_map)
        if base_map is not None:
            built = {"map_s": base_built["map_s"] + built["map_s"],
                     "peak_rss_mb": max(base_built["peak_rss_mb"], built["peak_rss_mb"]),
                     "process_s": base_built["process_s"] + built["process_s"],
                     "details": {**built["details"], "base_map": base_map.name, "base_map_s": base_built["map_s"],
                                 "extension_map_s": built["map_s"]}}
        write_text_atomic(record, json.dumps({"method": method, "settings": settings, "built": built,
                                              "commit": self.commit, "started": started}, indent=1))
        self.maps_built.add(map_path)
        return built

    def _find_base(self, method: str, unit_tag: str) -> tuple[Path | None, dict | None]:
        """A map of the same scenes that `method` can extend (Method.can_extend): built by this run (or, resuming,
        found on disk). (None, None) when there is none."""
        settings = json.loads(json.dumps(self.settings[method]))  # as recorded: tuples become lists
        for name, other in METHODS.items():
            path = self.out / "maps" / f"{unit_tag}_{name}{other.map_suffix}"
            if name == method or not (path in self.maps_built or self.options.resume):
                continue
            recorded = _read_build_record(path)
            if recorded is not None and recorded.get("method") == name and \
                    METHODS[method].can_extend(settings, recorded.get("settings", {})):
                self.log(f"{unit_tag} / {method}: extending {path.name}")
                return path, recorded["built"]
        return None, None


def _build_record_path(map_path: Path) -> Path:
    return map_path.with_name(map_path.name + ".build.json")


def _read_build_record(map_path: Path) -> dict | None:
    """The build record of the map at map_path ({"method", "settings", "built", ...}), None when either is missing
    or the record is unreadable."""
    record = _build_record_path(map_path)
    if not (map_path.is_file() and record.is_file()):
        return None
    try:
        return json.loads(record.read_text())
    except (OSError, ValueError):
        return None


def _recorded_build(map_path: Path, method: str, settings: dict) -> dict | None:
    """The recorded build of the map at map_path when it was made by `method` with `settings`."""
    recorded = _read_build_record(map_path)
    # Compared after a JSON round trip, as recorded (tuples become lists).
    if recorded is None or recorded.get("method") != method or \
            recorded.get("settings") != json.loads(json.dumps(settings)):
        return None
    return recorded["built"]


def _query_sets(prepared: PreparedScene) -> list[tuple[str, Path | None]]:
    """(row name, ACE root of the variant's queries or None for the scene's own) of each query set."""
    return [(prepared.name, None)] + [(f"{prepared.name}+{suffix}", root) for suffix, root in prepared.query_variants]


def _run_scene(run: _Run, suite: str, prepared: PreparedScene, methods: list[str]) -> None:
    """Single-scene methods on one prepared scene: each fold mapped in a child, every query set localized."""
    options = run.options
    units = list(prepared.folds) or [prepared.root]
    query_sets = _query_sets(prepared)
    n_map = len(read_scene(units[0], split="train").frames)
    for method in methods:
        builds, map_paths = [], []
        estimates: dict[str, list[PoseEstimate]] = {name: [] for name, _ in query_sets}
        truth: dict[str, dict] = {name: {} for name, _ in query_sets}
        for k, unit in enumerate(units):
            fold = f"_fold{k:02d}" if prepared.folds else ""
            map_path = run.out / "maps" / f"{suite}_{prepared.name}{fold}_{method}{METHODS[method].map_suffix}"
            run.log(f"[{suite}] {prepared.name}{fold} / {method}: mapping {n_map} frames in a child process")
            built = run.build_map(method, [unit], [prepared.name], map_path, f"{suite}_{prepared.name}{fold}")
            builds.append(built)
            map_paths.append(map_path)
            run.log(f"[{suite}] {prepared.name}{fold} / {method}: map in {built['map_s']:.1f} s, peak RSS "
                    f"{built['peak_rss_mb']:.0f} MB, {map_path.stat().st_size / 1e6:.2f} MB")
            for name, variant_root in query_sets:
                queries = read_scene(variant_root or unit, split="test")
                truth[name].update({f.name: f.cam_from_world for f in queries.posed_frames})
                estimates[name] += METHODS[method].localize(map_path, queries, run.overrides[method],
                                                            options.device, options.show_progress)
        pooled = _pool_builds(builds, map_paths)
        for name, _ in query_sets:
            run.add_row(suite, name, prepared, method, n_map, estimates[name], truth[name], pooled)


def _run_multi_scene(run: _Run, suite: str, scenes: list[PreparedScene], methods: list[str]) -> None:
    """Multi-scene methods: all (fold-less) scenes mapped into one map in a child; each scene's query sets
    localized with its name (the rows) and with scene identification ("auto": identification_accuracy)."""
    from sceneloc.localize.multi_scene import AUTO, identification_accuracy

    options = run.options
    scenes = [p for p in scenes if not p.folds]
    for method in methods:
        map_path = run.out / "maps" / f"{suite}_{method}{METHODS[method].map_suffix}"
        n_maps = [len(read_scene(p.root, split="train").frames) for p in scenes]
        run.log(f"[{suite}] {method}: mapping {len(scenes)} scenes ({sum(n_maps)} frames) into one map in a child "
                f"process")
        built = run.build_map(method, [p.root for p in scenes], [p.name for p in scenes], map_path, suite)
        pooled = _pool_builds([built], [map_path])
        run.log(f"[{suite}] {method}: map in {built['map_s']:.1f} s, peak RSS {built['peak_rss_mb']:.0f} MB, "
                f"{map_path.stat().st_size / 1e6:.2f} MB")
        for prepared, n_map in zip(scenes, n_maps):
            for name, variant_root in _query_sets(prepared):
                queries = read_scene(variant_root or prepared.root, split="test")
                truth = {f.name: f.cam_from_world for f in queries.posed_frames}
                estimates = METHODS[method].localize(map_path, queries, run.overrides[method], options.device,
                                                     options.show_progress, scene_name=prepared.name)
                auto = METHODS[method].localize(map_path, queries, run.overrides[method], options.device,
                                                options.show_progress, scene_name=AUTO)
                auto_result = evaluate_poses(auto, truth)
                run.add_row(suite, name, prepared, method, n_map, estimates, truth, pooled,
                            n_scenes_in_map=len(scenes),
                            identification_accuracy=identification_accuracy(auto, prepared.name),
                            auto_recall=auto_result["recall"], auto_median_t_cm=auto_result["median_t_cm"])


def run_bench(options: BenchOptions, log: Callable[[str], None] = lambda message: None) -> list[dict]:
    """Runs the benchmark (module docstring) and returns the results.json rows. `log` receives one line per
    step. Raises InputError for bad options (before anything runs) or unusable scenes.

    A scene with folds (leave-one-out) maps each fold and pools the estimates of all folds into one row (map time
    and size per fold); a scene with query variants localizes each variant's queries with the same map, one row
    per variant ("<scene>+<variant>"). A multi-scene method maps all scenes of a suite (plus the suite's
    multi_scene_extras, and without leave-one-out scenes) into one map; its rows give that map's time and size."""
    settings = check_options(options)
    out = Path(options.out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(out, f"cannot create the output folder ({e.strerror})") from None
    cache = Path(options.cache_dir) if options.cache_dir is not None else default_cache_dir()
    data_root = Path(options.data_root) if options.data_root is not None else default_data_root()
    run = _Run(options, settings, split_overrides(options.overrides, options.precision), out, source_commit(), log)
    for suite_name in options.suites:
        suite = SUITES[suite_name]
        methods = options.methods or list(suite.methods)
        single = [m for m in methods if not METHODS[m].multi_scene]
        multi = [m for m in methods if METHODS[m].multi_scene]
        specs = [s for s in suite.scenes if options.scenes is None or s.name in options.scenes]
        prepared_scenes = []
        for spec in specs + (list(suite.multi_scene_extras) if multi else []):
            prepared = spec.prepare(cache, options.show_progress, data_root)
            log(f"[{suite_name}] {prepared.name}: {'cached' if prepared.from_cache else 'prepared'} in "
                f"{prepared.root} ({prepared.prepare_s:.0f} s)")
            prepared_scenes.append(prepared)
            if spec in specs:
                _run_scene(run, suite_name, prepared, single)
        if multi:
            _run_multi_scene(run, suite_name, prepared_scenes, multi)
    for (suite_name, name), by_method in run.evaluations.items():
        plot_error_cdf(by_method, out / "plots" / f"{suite_name}_{name}_cdf.png")
        rows = [r for r in run.rows if (r["suite"], r["scene"]) == (suite_name, name)]
        plot_recall_against_size(rows, out / "plots" / f"{suite_name}_{name}_size.png")
    write_markdown_report(out / "report.md", run.rows)
    return run.rows
