"""Benchmark scenes: what a scene spec prepares (PreparedScene, SceneSpec), the on-disk cache every spec builds
into (cached_folder), and the specs of procedural synthetic scenes (SyntheticSceneSpec).

Scene cache: a rendered scene lives in <cache>/scenes/<preset>-seed<seed>-<key>/ (an ACE root with train/ and
test/), where <cache> is the bench's cache_dir option (`--cache`), else $SCENELOC_CACHE, else
$XDG_CACHE_HOME/sceneloc, else ~/.cache/sceneloc. <key> hashes the scene's full SyntheticSceneConfig, the
generator's source code (every module of sceneloc.data.synthetic) and the scikit-image version (the textures are
its photos): a second run reuses the folder, a changed generator or preset renders afresh. A scene is rendered
into a temporary folder beside its final place and renamed into place once complete, so an interrupted render is
never taken for a cached scene. Old keys are not deleted; remove <cache>/scenes to reclaim the space.

A suite's scenes are objects with a `name` and `prepare(cache_dir, show_progress, data_root) -> PreparedScene`
(SceneSpec); cached_folder gives any of them the same build-once cache.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from collections.abc import Callable, Iterable
from typing import Protocol

from sceneloc.data import synthetic
from sceneloc.data.synthetic import PRESETS, SyntheticSceneConfig, render_scene_to_folder
from sceneloc.runtime.errors import InputError


@dataclass
class PreparedScene:
    """A benchmark scene ready on disk: root is an ACE root (train/ = mapping frames with poses, test/ = query
    frames with ground-truth poses)."""

    name: str
    root: Path
    seed: int
    """Seed of the scene's generator."""
    resolution: tuple[int, int]
    """(width, height) of its images."""
    from_cache: bool
    """True when the scene was found in the cache (not rendered by this run)."""
    prepare_s: float
    """Seconds spent finding or rendering it."""
    query_variants: tuple[tuple[str, Path], ...] = ()
    """Extra query sets localized with the same map: (suffix, ACE root whose test/ holds the variant's queries).
    Each gives its own results row, scene name "<name>+<suffix>" (e.g. degraded copies of the queries)."""
    folds: tuple[Path, ...] = ()
    """Leave-one-out style scenes: when not empty, ACE roots (each with train/ and test/) that are mapped and
    localized one by one, their estimates pooled into one row; `root` is then not mapped itself."""


class SceneSpec(Protocol):
    name: str

    def prepare(self, cache_dir: Path, show_progress: bool = True, data_root: Path | None = None) -> PreparedScene:
        """The scene on disk. data_root: folder holding the real data sets some scenes are made from (the
        copyroom scan, 7-Scenes, Strecha, ...); specs that need it raise InputError when it is None or lacks
        their files."""
        ...


def default_data_root() -> Path | None:
    """$SCENELOC_DATA, else None (sceneloc itself never assumes where real data sets live)."""
    return Path(os.environ["SCENELOC_DATA"]) if os.environ.get("SCENELOC_DATA") else None


def default_cache_dir() -> Path:
    """$SCENELOC_CACHE, else $XDG_CACHE_HOME/sceneloc, else ~/.cache/sceneloc."""
    if os.environ.get("SCENELOC_CACHE"):
        return Path(os.environ["SCENELOC_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME")
    return (Path(base) if base else Path.home() / ".cache") / "sceneloc"


def cache_key(settings: object, files: Iterable[Path]) -> str:
    """12 hex digits of repr(settings) and the names and contents of `files` (a scene's inputs and the source code
    that writes it): a change to any of them gives another key, so a cached scene is never stale."""
    digest = hashlib.sha256(repr(settings).encode())
    for path in files:
        digest.update(Path(path).name.encode())
        digest.update(hashlib.sha256(Path(path).read_bytes()).digest())
    return digest.hexdigest()[:12]


def scene_key(config: SyntheticSceneConfig) -> str:
    """12 hex digits identifying what a rendering of `config` contains (see the module docstring)."""
    return cache_key((config, version("scikit-image")), sorted(Path(synthetic.__file__).parent.glob("*.py")))


@dataclass(frozen=True)
class SyntheticSceneSpec:
    """A scene rendered from a synthetic preset (sceneloc.data.synthetic.PRESETS), optionally with another seed."""

    preset: str
    seed: int | None = None
    """Generator seed; None keeps the preset's."""

    @property
    def config(self) -> SyntheticSceneConfig:
        config = PRESETS[self.preset]
        return config if self.seed is None else config.with_seed(self.seed)

    @property
    def name(self) -> str:
        return self.preset if self.seed is None else f"{self.preset}-seed{self.seed}"

    def prepare(self, cache_dir: Path, show_progress: bool = True, data_root: Path | None = None) -> PreparedScene:
        """The cached rendering, rendered first when missing. Raises InputError when the cache is not writable.
        data_root is not used (procedural scenes need no data)."""
        t0 = time.perf_counter()
        config = self.config
        root, from_cache = cached_folder(
            cache_dir, f"{self.preset}-seed{config.room.seed}-{scene_key(config)}",
            lambda tmp: render_scene_to_folder(config, tmp, progress=show_progress))
        return PreparedScene(self.name, root, config.room.seed, (config.width, config.height), from_cache,
                             time.perf_counter() - t0)


def cached_folder(cache_dir: Path, folder_name: str, build: Callable[[Path], object]) -> tuple[Path, bool]:
    """<cache_dir>/scenes/<folder_name>, made by build(tmp_folder) when missing -> (folder, found_in_cache).
    build writes into an empty temporary folder beside the final one, which is renamed into place only when build
    returns, so an interrupted build is never taken for a cached one. folder_name must change whenever what build
    writes would (e.g. include a key of its inputs). Raises InputError when the cache is not writable."""
    scenes = Path(cache_dir) / "scenes"
    final = scenes / folder_name
    if final.is_dir():
        return final, True
    try:
        scenes.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=scenes))
    except OSError as e:
        raise InputError(scenes, f"cannot write the scene cache here ({e.strerror})") from None
    try:
        build(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        os.rename(tmp, final)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        # Another process may have finished the same scene first: its copy is as good as ours.
        if not final.is_dir():
            raise
    return final, False
