"""Benchmark scenes rendered from real textured scans under the data root ($SCENELOC_DATA or --data-root): the
copyroom scan along its real hand-held trajectory (sceneloc.data.copyroom).

Cache: <cache>/scenes/copyroom-<W>x<H>-<key>/, an ACE root (train/, test/, mesh.ply), where <key> hashes the
CopyroomConfig, the contents of the input files, the Open3D version and the source of the renderer
(scan_render.py, copyroom.py) and of the ACE writer, so a change to any of them renders afresh.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import open3d as o3d

from sceneloc.bench.real_scenes import require_data
from sceneloc.bench.scenes import PreparedScene, cache_key, cached_folder
from sceneloc.data import ace_folder, copyroom, scan_render
from sceneloc.data.copyroom import INPUT_FILES, CopyroomConfig, CopyroomScene, write_copyroom_scene


def copyroom_key(config: CopyroomConfig, data_dir: Path) -> str:
    """12 hex digits identifying what a rendering of the scan in data_dir with `config` contains."""
    sources = [Path(module.__file__) for module in (scan_render, copyroom, ace_folder)]
    return cache_key((config, o3d.__version__), [data_dir / name for name in INPUT_FILES] + sources)


@dataclass(frozen=True)
class CopyroomSceneSpec:
    """The copyroom scan (data_root / "copyroom") rendered along its trajectory: mapping frames from the first
    part of the capture, query frames from a later part."""

    name: str = "copyroom"
    """Scene name in the results."""
    config: CopyroomConfig = field(default_factory=CopyroomConfig)
    """Split and rendering settings."""
    subdir: str = "copyroom"
    """The scan's folder, relative to the data root."""
    seed: ClassVar[int] = 0
    """Real data: no generator."""

    def _data_dir(self, data_root: Path | None) -> Path:
        return require_data(data_root, self.subdir, INPUT_FILES)

    def write(self, out_dir: Path, show_progress: bool = True, data_root: Path | None = None) -> CopyroomScene:
        """Render the scene into out_dir (new or empty), for `sceneloc render copyroom -o DIR`. Raises InputError
        when data_root is None or lacks the scan, or out_dir is not empty."""
        return write_copyroom_scene(self._data_dir(data_root), out_dir, self.config, show_progress)

    def prepare(self, cache_dir: Path, show_progress: bool = True, data_root: Path | None = None) -> PreparedScene:
        """The cached rendering (module docstring), rendered first when missing. Raises InputError when data_root
        is None or lacks the scan, the scan is unreadable, or the cache is not writable."""
        t0 = time.perf_counter()
        data_dir = self._data_dir(data_root)
        config = self.config
        root, from_cache = cached_folder(
            cache_dir, f"{self.name}-{config.width}x{config.height}-{copyroom_key(config, data_dir)}",
            lambda tmp: write_copyroom_scene(data_dir, tmp, config, show_progress))
        return PreparedScene(self.name, root, self.seed, (config.width, config.height), from_cache,
                             time.perf_counter() - t0)


COPYROOM = CopyroomSceneSpec()
"""The standard copyroom scene: 500 mapping and 100 query frames at 640x480."""
