"""The benchmark suites `sceneloc bench --suite` accepts: named lists of scene specs, each with the methods run
when none are asked for."""

from __future__ import annotations

from dataclasses import dataclass

from sceneloc.bench.real_scenes import FOUNTAIN_P11, HERZJESU_P8, SLAMBOOK, STAIRS_7SCENES
from sceneloc.bench.scan_scenes import COPYROOM
from sceneloc.bench.scenes import SceneSpec, SyntheticSceneSpec
from sceneloc.bench.variant_scenes import DegradedQueriesSpec, TranslatedSceneSpec


@dataclass(frozen=True)
class Suite:
    """A named benchmark: its scenes and the methods run when none are asked for."""

    name: str
    description: str
    scenes: tuple[SceneSpec, ...]
    methods: tuple[str, ...]
    multi_scene_extras: tuple[SceneSpec, ...] = ()
    """Scenes only multi-scene methods map (with the suite's own), so that even a one-scene suite gives them
    several scenes."""


SUITES: dict[str, Suite] = {s.name: s for s in [
    Suite("tiny", "tiny-room (160x120, 60 mapping / 20 query frames): seconds, for tests",
          (SyntheticSceneSpec("tiny-room"),), ("scr", "colmap-sift")),
    Suite("quick", "quick-room (320x240, 300 mapping / 200 query frames): CI-sized accuracy comparison; multi-scene "
                   "methods map it together with quick-room seed 1 (overlapping it: both rooms start at the "
                   "origin) and quick-room seed 2 moved 1 km away",
          (SyntheticSceneSpec("quick-room"),), ("scr", "colmap-sift"),
          (SyntheticSceneSpec("quick-room", 1), TranslatedSceneSpec(SyntheticSceneSpec("quick-room", 2),
                                                                    (1000.0, 0.0, 0.0)))),
    Suite("speed", "bench-room (640x480, 1000 mapping / 200 query frames), scr only: mapping time, peak memory, "
                   "localization rate and map size at full size",
          (SyntheticSceneSpec("bench-room"),), ("scr",)),
    Suite("standard", "the copyroom scan rendered along its real trajectory (needs --data-root or $SCENELOC_DATA) "
                      "and four procedural scenes (640x480): a richly textured office (its queries also degraded: "
                      "illumination, motion blur, sensor noise, JPEG), stairs (repeated structure), lowtex (weak "
                      "texture), hall (14 m)",
          (COPYROOM, DegradedQueriesSpec(SyntheticSceneSpec("office")), SyntheticSceneSpec("stairs"),
           SyntheticSceneSpec("lowtex"), SyntheticSceneSpec("hall")), ("scr", "colmap-sift")),
    Suite("real", "real image sets (needs --data-root or $SCENELOC_DATA): the 7-Scenes stairs slice (its own "
                  "train/test split), Strecha fountain-P11 and Herz-Jesu-P8 and slambook RGB-D (leave-one-out)",
          (STAIRS_7SCENES, FOUNTAIN_P11, HERZJESU_P8, SLAMBOOK), ("scr", "colmap-sift")),
]}
"""The suites `sceneloc bench --suite` accepts."""
