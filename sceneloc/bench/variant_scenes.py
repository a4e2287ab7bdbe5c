"""Benchmark scenes derived from another scene: degraded copies of its queries (DegradedQueriesSpec; the map is
built once from the base scene, then localized with each variant's queries as well), and the whole scene moved to
another place in the world (TranslatedSceneSpec, for multi-scene maps whose scenes lie far apart).

Cache: one ACE root per degradation, <cache>/scenes/<base folder>+<degradation>-<key>/test/, where <key> hashes the
base folder name, the degradation's settings in DegradationConfig and the source of degrade.py, this module and
the ACE writer. Each holds the base's test frames under the same names: the degraded image as PNG, the same
calibration and pose, and the depth (hard-linked from the base when it is an ACE depth PNG).
"""

from __future__ import annotations

import dataclasses
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sceneloc.bench.real_scenes import link_or_copy
from sceneloc.bench.scenes import PreparedScene, SceneSpec, cache_key, cached_folder
from sceneloc.data import ace_folder, degrade, read_scene
from sceneloc.data.ace_folder import WRITTEN_FILES, read_pose_file, write_ace_frame, write_pose_file
from sceneloc.data.degrade import DEGRADATIONS, DegradationConfig
from sceneloc.data.scene import Frame, Scene
from sceneloc.data.synthetic import MESH_FILE
from sceneloc.geometry import Rigid3
from sceneloc.runtime.progress import make_progress


def variant_key(base_folder: str, kind: str, config: DegradationConfig) -> str:
    """12 hex digits identifying what the `kind` variant of the base folder's queries contains: only the config
    fields of that degradation (and the seed) count, so changing the JPEG quality re-renders only the JPEG copy."""
    settings = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)
                if f.name == "seed" or f.name.startswith(kind)}
    return cache_key((base_folder, kind, sorted(settings.items())),
                     [Path(module.__file__) for module in (degrade, ace_folder)] + [Path(__file__)])


def frame_seed(config: DegradationConfig, kind: str, frame_name: str) -> int:
    """The seed of one frame's degradation: independent of the frame order, different per degradation."""
    entropy = [config.seed, zlib.crc32(f"{kind}/{frame_name}".encode())]
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])


def _write_variant(queries: Scene, kind: str, config: DegradationConfig, out_dir: Path, show_progress: bool) -> None:
    """The degraded copy of every query frame into the ACE folder out_dir."""
    with make_progress(show_progress) as progress:
        task = progress.add_task(f"degrading queries ({kind})", total=len(queries.frames), info="")
        for frame in queries.frames:
            _write_frame(frame, kind, config, out_dir)
            progress.advance(task)


def _write_frame(frame: Frame, kind: str, config: DegradationConfig, out_dir: Path) -> None:
    image = degrade.degrade(frame.load_rgb(), kind, config, frame_seed(config, kind, frame.name))
    # uint16 millimetre PNGs are what the ACE depth folder holds: share the file instead of re-encoding it.
    linkable = frame.depth_path is not None and frame.depth_path.suffix.lower() == ".png" \
        and frame.depth_scale == 0.001
    write_ace_frame(out_dir, frame.name, image, frame.camera, frame.cam_from_world,
                    None if linkable else frame.load_depth())
    if linkable:
        link_or_copy(frame.depth_path, out_dir / "depth" / f"{frame.name}{WRITTEN_FILES['depth']}")


@dataclass(frozen=True)
class DegradedQueriesSpec:
    """The base scene, plus one query variant per degradation (PreparedScene.query_variants, suffix = the
    degradation's name). Bases with folds are not supported (their queries are spread over the folds)."""

    base: SceneSpec
    """The scene whose map is built and whose test/ queries are degraded."""
    degradations: tuple[str, ...] = DEGRADATIONS
    """Names from sceneloc.data.degrade.DEGRADATIONS, one variant each, in this order."""
    config: DegradationConfig = field(default_factory=DegradationConfig)
    """Severities and seed of the degradations."""

    def __post_init__(self):
        unknown = [d for d in self.degradations if d not in DEGRADATIONS]
        if unknown or not self.degradations or len(set(self.degradations)) != len(self.degradations):
            raise ValueError(f"degradations {self.degradations!r} must be distinct names from "
                             f"{', '.join(DEGRADATIONS)}")

    @property
    def name(self) -> str:
        """The base scene's name: the variants' results rows are named "<name>+<degradation>"."""
        return self.base.name

    def prepare(self, cache_dir: Path, show_progress: bool = True, data_root: Path | None = None) -> PreparedScene:
        """Prepares the base scene (passing data_root on), then finds or writes each variant. from_cache is True
        only when the base and every variant came from the cache. Raises InputError when the base cannot be
        prepared or read, or the cache is not writable; ValueError when the base scene has folds."""
        t0 = time.perf_counter()
        base = self.base.prepare(cache_dir, show_progress, data_root)
        if base.folds:
            raise ValueError(f"{base.name}: degraded queries of a scene with folds are not supported")
        queries = read_scene(base.root, split="test")
        variants, all_cached = [], base.from_cache
        for kind in self.degradations:
            root, from_cache = cached_folder(
                cache_dir, f"{base.root.name}+{kind}-{variant_key(base.root.name, kind, self.config)}",
                lambda tmp, kind=kind: _write_variant(queries, kind, self.config, tmp / "test", show_progress))
            variants.append((kind, root))
            all_cached = all_cached and from_cache
        return dataclasses.replace(base, from_cache=all_cached, prepare_s=time.perf_counter() - t0,
                                   query_variants=base.query_variants + tuple(variants))


@dataclass(frozen=True)
class TranslatedSceneSpec:
    """The base scene (an ACE root with train/ and test/) moved by `offset_m` in the world: every camera pose and
    the ground-truth mesh are translated, images, calibration and depth are the base's (hard-linked). Cached as
    <base folder>@<x>_<y>_<z>/."""

    base: SceneSpec
    """The scene to move (no folds, no query variants)."""
    offset_m: tuple[float, float, float]
    """World translation in metres."""

    @property
    def name(self) -> str:
        return f"{self.base.name}@{'_'.join(f'{v:g}' for v in self.offset_m)}m"

    def prepare(self, cache_dir: Path, show_progress: bool = True, data_root: Path | None = None) -> PreparedScene:
        """Prepares the base scene, then finds or writes the moved copy. Raises InputError as the base does."""
        t0 = time.perf_counter()
        base = self.base.prepare(cache_dir, show_progress, data_root)
        if base.folds or base.query_variants:
            raise ValueError(f"{base.name}: only a plain train/test scene can be moved")
        offset = "_".join(f"{v:g}" for v in self.offset_m)
        root, from_cache = cached_folder(cache_dir, f"{base.root.name}@{offset}",
                                         lambda tmp: _write_translated(base.root, np.asarray(self.offset_m), tmp))
        return dataclasses.replace(base, name=self.name, root=root, from_cache=from_cache and base.from_cache,
                                   prepare_s=time.perf_counter() - t0)


def _write_translated(source: Path, offset: np.ndarray, out: Path) -> None:
    """Copy the ACE root `source` into `out` with every pose's world moved by offset (3,) metres; other files
    hard-linked; mesh.ply (when present) translated."""
    import open3d as o3d

    for path in sorted(source.rglob("*")):
        if not path.is_file():
            continue
        target = out / path.relative_to(source)
        if path.parent.name == "poses" and path.name.endswith(".pose.txt"):
            cam_from_world = read_pose_file(path)
            # x_cam = R (x_new - offset) + t
            moved = Rigid3(cam_from_world.rotation, cam_from_world.translation - cam_from_world.rotation @ offset)
            target.parent.mkdir(parents=True, exist_ok=True)
            write_pose_file(target, moved)
        elif path.name == MESH_FILE and path.parent == source:
            mesh = o3d.io.read_triangle_mesh(str(path))
            mesh.translate(offset)
            o3d.io.write_triangle_mesh(str(target), mesh)
        else:
            link_or_copy(path, target)
