"""Benchmark suites (named lists of scenes, each with its default methods) and the on-disk cache of rendered
synthetic scenes.

Scene cache: a rendered scene lives in <cache>/scenes/<preset>-seed<seed>-<key>/ (an ACE root with train/ and
test/), where <cache> is the bench's cache_dir option (`--cache`), else $SCENELOC_CACHE, else
$XDG_CACHE_HOME/sceneloc, else ~/.cache/sceneloc. <key> hashes the scene's full SyntheticSceneConfig, the
generator's source code (every module of sceneloc.data.synthetic) and the scikit-image version (the textures are
its photos): a second run reuses the folder, a changed generator or preset renders afresh. A scene is rendered
into a temporary folder beside its final place and renamed into place once complete, so an interrupted render is
never taken for a cached scene. Old keys are not deleted; remove <cache>/scenes to reclaim the space.

A suite's scenes are objects with a `name` and `prepare(cache_dir, show_progress) -> PreparedScene`; real data
sets can join as another such class.
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
from typing import Protocol

from sceneloc.data import synthetic
from sceneloc.data.synthetic import PRESETS, SyntheticSceneConfig, render_scene_to_folder
from sceneloc.errors import InputError


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


class SceneSpec(Protocol):
    name: str

    def prepare(self, cache_dir: Path, show_progress: bool = True) -> PreparedScene: ...


def default_cache_dir() -> Path:
    """$SCENELOC_CACHE, else $XDG_CACHE_HOME/sceneloc, else ~/.cache/sceneloc."""
    if os.environ.get("SCENELOC_CACHE"):
        return Path(os.environ["SCENELOC_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME")
    return (Path(base) if base else Path.home() / ".cache") / "sceneloc"


def scene_key(config: SyntheticSceneConfig) -> str:
    """12 hex digits identifying what a rendering of `config` contains (see the module docstring)."""
    digest = hashlib.sha256(repr(config).encode())
    digest.update(version("scikit-image").encode())
    for path in sorted(Path(synthetic.__file__).parent.glob("*.py")):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


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

    def prepare(self, cache_dir: Path, show_progress: bool = True) -> PreparedScene:
        """The cached rendering, rendered first when missing. Raises InputError when the cache is not writable."""
        t0 = time.perf_counter()
        config = self.config
        scenes = Path(cache_dir) / "scenes"
        final = scenes / f"{self.preset}-seed{config.room.seed}-{scene_key(config)}"
        from_cache = final.is_dir()
        if not from_cache:
            try:
                scenes.mkdir(parents=True, exist_ok=True)
                tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=scenes))
            except OSError as e:
                raise InputError(scenes, f"cannot write the scene cache here ({e.strerror})") from None
            try:
                render_scene_to_folder(config, tmp, progress=show_progress)
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
        return PreparedScene(self.name, final, config.room.seed, (config.width, config.height), from_cache,
                             time.perf_counter() - t0)


@dataclass(frozen=True)
class Suite:
    """A named benchmark: its scenes and the methods run when none are asked for."""

    name: str
    description: str
    scenes: tuple[SceneSpec, ...]
    methods: tuple[str, ...]


SUITES: dict[str, Suite] = {s.name: s for s in [
    Suite("tiny", "tiny-room (160x120, 60 mapping / 20 query frames): seconds, for tests",
          (SyntheticSceneSpec("tiny-room"),), ("scr", "colmap-sift")),
    Suite("quick", "quick-room (320x240, 300 mapping / 50 query frames): CI-sized accuracy comparison",
          (SyntheticSceneSpec("quick-room"),), ("scr", "colmap-sift")),
    Suite("speed", "bench-room (640x480, 1000 mapping / 200 query frames), scr only: mapping time, peak memory, "
                   "localization rate and map size at full size",
          (SyntheticSceneSpec("bench-room"),), ("scr",)),
]}
"""The suites `sceneloc bench --suite` accepts."""
