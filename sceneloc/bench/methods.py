"""The methods `sceneloc bench` compares, behind one interface: parse settings, build a map file from the mapping
frames, localize query frames with it. Also the entry point of the child process that builds a map, so that its
time and peak memory are its own.

This module is what that child imports: it (and sceneloc/bench/__init__.py) must import nothing heavy at module
level, or every method's peak memory would include it. Each method imports its own libraries when called.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Protocol

from sceneloc.runtime.config_overrides import apply_overrides
from sceneloc.data import Scene, read_scene
from sceneloc.runtime.errors import InputError
from sceneloc.runtime.memory import peak_rss_mb
from sceneloc.runtime.atomic import write_text_atomic
from sceneloc.mapping.structure.scores import SCORE_KINDS
from sceneloc.localize.estimate import PoseEstimate


class Method(Protocol):
    name: str
    map_suffix: str
    """File name ending of its map files."""
    cpu_only: bool
    """True when it ignores the device and runs on the CPU."""
    multi_scene: bool
    """True when one map holds all scenes of a suite (build_map gets them all; localize names the scene)."""
    precision_key: str | None
    """The settings key (dotted) of its numeric precision (`bench --precision`), None when it has none."""

    def settings(self, overrides: list[str]) -> dict:
        """Its full configuration with `key=value` overrides applied, as a dict; ValueError on a bad override."""

    def can_extend(self, settings: dict, base_settings: dict) -> bool:
        """True when this method, configured with `settings`, can build its map by extending a map made with
        base_settings (build_map's base_map)."""

    def build_map(self, scenes: list[Scene], map_path: Path, overrides: list[str], device: str,
                  show_progress: bool, base_map: Path | None = None) -> dict:
        """Map the posed scenes (one unless multi_scene) into map_path, from scratch or by extending base_map (see
        can_extend); returns details worth reporting (JSON-serialisable)."""

    def localize(self, map_path: Path, scene: Scene, overrides: list[str], device: str,
                 show_progress: bool, scene_name: str | None = None) -> list[PoseEstimate]:
        """One estimate per frame of `scene`; details["time_ms"] is the time per image (sceneloc's pipelined loop:
        the run's wall time over its images, decoding included as it overlaps the rest; the peer: without reading).
        scene_name: for multi-scene maps, the map's scene the queries show, or "auto"."""


class _SceneLocMethod:
    """A sceneloc configuration: the config's defaults, then the variant's settings, then the user's overrides."""

    cpu_only = False
    precision_key = "precision"

    def __init__(self, name: str, variant: tuple[str, ...] = ()):
        self.name = name
        self.variant = list(variant)
        """Config assignments that define this variant, e.g. ("encoder=effnet-lite0",)."""

    def _default_config(self):
        raise NotImplementedError

    def _config(self, overrides: list[str]):
        return apply_overrides(self._default_config(), self.variant + overrides)

    def settings(self, overrides: list[str]) -> dict:
        return self._config(overrides).to_dict()

    def can_extend(self, settings: dict, base_settings: dict) -> bool:
        return False


class ScrMethod(_SceneLocMethod):
    """sceneloc itself: build_scene_map with MappingConfig -> SceneMap.save -> localize_scene with the default
    LocalizeConfig."""

    map_suffix = ".map"
    multi_scene = False

    def __init__(self, name: str = "scr", variant: tuple[str, ...] = ()):
        super().__init__(name, variant)

    def _default_config(self):
        from sceneloc.mapping import MappingConfig

        return MappingConfig()

    def can_extend(self, settings: dict, base_settings: dict) -> bool:
        """With keypoints on: a map made with keypoints off and otherwise the same settings (add_keypoints)."""
        def without_keypoints(d: dict) -> dict:
            return {k: v for k, v in d.items() if k != "keypoints"}

        return (settings["keypoints"]["enabled"] and not base_settings.get("keypoints", {}).get("enabled", True)
                and without_keypoints(settings) == without_keypoints(base_settings))

    def build_map(self, scenes: list[Scene], map_path: Path, overrides: list[str], device: str,
                  show_progress: bool, base_map: Path | None = None) -> dict:
        import torch

        from sceneloc.mapping import add_keypoints, build_scene_map
        from sceneloc.maps.scene_map import SceneMap

        config, dev = self._config(overrides), torch.device(device)
        if base_map is not None:
            scene_map, result = add_keypoints(SceneMap.load(base_map, dev), scenes[0], config.keypoints, dev,
                                              show_progress)
            scene_map.save(map_path)
            return result
        scene_map, summary = build_scene_map(scenes[0], config, dev, show_progress)
        scene_map.save(map_path)
        return {k: getattr(summary, k) for k in ("buffer_rows", "steps", "encode_s", "train_s", "keypoint_s",
                                                 "final_median_repro_px", "final_valid_fraction", "keypoints")}

    def localize(self, map_path: Path, scene: Scene, overrides: list[str], device: str,
                 show_progress: bool, scene_name: str | None = None) -> list[PoseEstimate]:
        import torch

        from sceneloc.localize.loop import LocalizeConfig, localize_scene
        from sceneloc.maps.scene_map import SceneMap

        dev = torch.device(device)
        config = LocalizeConfig(precision=self._config(overrides).precision)
        return localize_scene(SceneMap.load(map_path, dev), scene, config, dev, show_progress)


class _StructureMethod:
    """A structure-based method: one scene per map, CPU only whatever the device (SIFT, matching and PnP are
    pycolmap/numpy), no precision setting; its settings are a dataclass config (_config)."""

    cpu_only = True
    multi_scene = False
    precision_key = None

    def settings(self, overrides: list[str]) -> dict:
        return asdict(self._config(overrides))

    def can_extend(self, settings: dict, base_settings: dict) -> bool:
        return False


class ColmapSiftMethod(_StructureMethod):
    """The structure-based peer (sceneloc.peers.colmap_sift)."""

    name = "colmap-sift"
    map_suffix = ".sift.safetensors"

    def _config(self, overrides: list[str]):
        from sceneloc.peers.colmap_sift import ColmapSiftConfig

        return apply_overrides(ColmapSiftConfig(), overrides)

    def build_map(self, scenes: list[Scene], map_path: Path, overrides: list[str], device: str,
                  show_progress: bool, base_map: Path | None = None) -> dict:
        from sceneloc.peers.colmap_sift import build_sift_map

        sift_map = build_sift_map(scenes[0], self._config(overrides), show_progress)
        sift_map.save(map_path)
        return {k: sift_map.metadata[k] for k in ("n_points", "n_pairs", "n_verified_pairs", "mean_track_length",
                                                  "timings")}

    def localize(self, map_path: Path, scene: Scene, overrides: list[str], device: str,
                 show_progress: bool, scene_name: str | None = None) -> list[PoseEstimate]:
        from sceneloc.peers.colmap_sift import SiftMap, localize_scene

        return localize_scene(SiftMap.load(map_path), scene, self._config(overrides), show_progress)


class SqueezeMethod(_StructureMethod):
    """sceneloc's compressed structure-based map (SceneSqueezer; mapping/structure), localized through the one
    loop (localize/structure.py)."""

    map_suffix = ".smap"

    def __init__(self, name: str = "squeeze", variant: tuple[str, ...] = ()):
        self.name = name
        self.variant = list(variant)

    def _config(self, overrides: list[str]):
        from sceneloc.mapping.structure.build import StructureMapConfig

        config = apply_overrides(StructureMapConfig(), self.variant + overrides)
        config.validate()
        return config

    def build_map(self, scenes: list[Scene], map_path: Path, overrides: list[str], device: str,
                  show_progress: bool, base_map: Path | None = None) -> dict:
        from sceneloc.mapping.structure.build import build_structure_map

        structure_map = build_structure_map(scenes[0], self._config(overrides), show_progress)
        structure_map.save(map_path)
        return structure_map.metadata["build"]

    def localize(self, map_path: Path, scene: Scene, overrides: list[str], device: str,
                 show_progress: bool, scene_name: str | None = None) -> list[PoseEstimate]:
        from sceneloc.localize.loop import LocalizeConfig
        from sceneloc.localize.structure import localize_structure_scene
        from sceneloc.maps.structure_map import StructureMap

        return localize_structure_scene(StructureMap.load(map_path), scene, LocalizeConfig(), show_progress)


class HybridMethod(_SceneLocMethod):
    """sceneloc's hybrid map (mapping/hybrid.py, localize/hybrid.py): the scr method's map plus compressed points;
    it extends the run's scr map of the same scene when that was made with the same scr settings."""

    map_suffix = ".map"
    multi_scene = False
    precision_key = "scr.precision"

    def __init__(self, name: str = "hybrid", variant: tuple[str, ...] = ()):
        super().__init__(name, variant)

    def _default_config(self):
        from sceneloc.mapping.hybrid import HybridMapConfig

        return HybridMapConfig()

    def _config(self, overrides: list[str]):
        config = super()._config(overrides)
        config.validate()
        return config

    def can_extend(self, settings: dict, base_settings: dict) -> bool:
        """A scene-coordinate map made with this hybrid's scr settings (build_map then adds the points to it)."""
        return base_settings == settings["scr"]

    def build_map(self, scenes: list[Scene], map_path: Path, overrides: list[str], device: str,
                  show_progress: bool, base_map: Path | None = None) -> dict:
        import torch

        from sceneloc.mapping.hybrid import build_hybrid_map
        from sceneloc.maps.scene_map import SceneMap

        dev = torch.device(device)
        scene_map = None if base_map is None else SceneMap.load(base_map, dev)
        hybrid_map = build_hybrid_map(scenes[0], self._config(overrides), dev, show_progress, scene_map)
        hybrid_map.save(map_path)
        return hybrid_map.metadata["build"]

    def localize(self, map_path: Path, scene: Scene, overrides: list[str], device: str,
                 show_progress: bool, scene_name: str | None = None) -> list[PoseEstimate]:
        import torch

        from sceneloc.localize.hybrid import HybridPredictor
        from sceneloc.localize.loop import LocalizeConfig, localize_with_progress
        from sceneloc.maps.hybrid_map import HybridMap

        dev = torch.device(device)
        config = LocalizeConfig(precision=self._config(overrides).scr.precision)
        return localize_with_progress(HybridPredictor(HybridMap.load(map_path, dev), config), scene, config, dev,
                                      show_progress, "localizing (hybrid map)")


class SldMethod(_SceneLocMethod):
    """sceneloc's scene landmark detector (SLD*, mapping/landmarks, localize/landmarks.py): landmarks from the
    triangulated points, a per-scene heatmap head on the frozen shared encoder."""

    map_suffix = ".lmap"
    multi_scene = False

    def __init__(self, name: str = "sld", variant: tuple[str, ...] = ()):
        super().__init__(name, variant)

    def _default_config(self):
        from sceneloc.mapping.landmarks.build import LandmarkMapConfig

        return LandmarkMapConfig()

    def _config(self, overrides: list[str]):
        config = super()._config(overrides)
        config.validate()
        return config

    def build_map(self, scenes: list[Scene], map_path: Path, overrides: list[str], device: str,
                  show_progress: bool, base_map: Path | None = None) -> dict:
        import torch

        from sceneloc.mapping.landmarks.build import build_landmark_map

        landmark_map = build_landmark_map(scenes[0], self._config(overrides), torch.device(device), show_progress)
        landmark_map.save(map_path)
        return {k: v for k, v in landmark_map.metadata["build"].items() if k != "history"}

    def localize(self, map_path: Path, scene: Scene, overrides: list[str], device: str,
                 show_progress: bool, scene_name: str | None = None) -> list[PoseEstimate]:
        import torch

        from sceneloc.localize.landmarks import LandmarkPredictor
        from sceneloc.localize.loop import LocalizeConfig, localize_with_progress
        from sceneloc.maps.landmark_map import LandmarkMap

        dev = torch.device(device)
        config = LocalizeConfig(precision=self._config(overrides).precision)
        return localize_with_progress(LandmarkPredictor(LandmarkMap.load(map_path, dev), config), scene, config,
                                      dev, show_progress, "localizing (landmark map)")


class ScinrMethod(_SceneLocMethod):
    """sceneloc's multi-scene model: every scene of a suite mapped into one SCINR map (MultiSceneConfig), each
    scene's queries localized with its name."""

    map_suffix = ".multimap"
    multi_scene = True
    precision_key = "mapping.precision"

    def __init__(self, name: str = "scinr", variant: tuple[str, ...] = ()):
        super().__init__(name, variant)

    def _default_config(self):
        from sceneloc.mapping.multi_scene import MultiSceneConfig

        return MultiSceneConfig()

    def build_map(self, scenes: list[Scene], map_path: Path, overrides: list[str], device: str,
                  show_progress: bool, base_map: Path | None = None) -> dict:
        import torch

        from sceneloc.mapping.multi_scene import build_multi_scene_map

        multi_map, summary = build_multi_scene_map(scenes, self._config(overrides), torch.device(device),
                                                   show_progress)
        multi_map.save(map_path)
        return {k: getattr(summary, k) for k in ("buffer_rows", "steps", "encode_s", "train_s", "scenes")}

    def localize(self, map_path: Path, scene: Scene, overrides: list[str], device: str,
                 show_progress: bool, scene_name: str | None = None) -> list[PoseEstimate]:
        import torch

        from sceneloc.localize.loop import LocalizeConfig
        from sceneloc.localize.multi_scene import localize_multi_scene
        from sceneloc.maps.multi_scene_map import MultiSceneMap

        dev = torch.device(device)
        config = LocalizeConfig(precision=self._config(overrides).mapping.precision)
        return localize_multi_scene(MultiSceneMap.load(map_path, dev), scene, scene_name, config, dev, show_progress)


ACE_HEAD = ("head.num_blocks=1", "head.layers_per_block=3", "head.num_output_layers=3")
"""The ACE-style head: one residual block of three layers, a three-layer output MLP."""
RESIDUAL_HEAD = ("head.num_blocks=6", "head.layers_per_block=3", "head.num_output_layers=5")
"""The keypoint paper's deeper head: six residual blocks of three layers, a five-layer output MLP."""
KEYPOINTS = ("keypoints.enabled=true", "keypoints.fine_tune_iterations=2000")
"""Keypoint network plus keypoint-guided fine-tuning of the head."""
BUDGET_FRACTIONS = (0.03, 0.05, 0.2, 0.4)
"""Point budgets (fractions of the uncompressed map) of the squeeze and hybrid variants beside the default 0.1:
the recall-against-size curve."""

METHODS: dict[str, Method] = {m.name: m for m in (
    ScrMethod(),
    ScrMethod("scr-effnet", ("encoder=effnet-lite0",)),
    ScrMethod("scr-xfeat-ctx", ("encoder=xfeat-ctx",)),
    ScrMethod("scr-acehead", ACE_HEAD),
    ScrMethod("scr-reshead", RESIDUAL_HEAD),
    ScrMethod("scr-acehead-kp", ACE_HEAD + KEYPOINTS),
    ScrMethod("scr-reshead-kp", RESIDUAL_HEAD + KEYPOINTS),
    ScinrMethod(),
    ScinrMethod("scinr-no-scra", ("model.use_scra=false",)),
    ScinrMethod("scinr-no-bases", ("model.scra_bases=0",)),
    ScinrMethod("scinr-no-complement", ("model.use_complement=false",)),
    ScinrMethod("scinr-position", ("model.use_position=true",)),
    ScinrMethod("scinr-raw-position", ("model.use_position=true", "model.use_positional_encoding=false")),
    ScinrMethod("scinr-modulation", ("model.use_position=true", "model.use_modulation=true")),
    SqueezeMethod(),
    SqueezeMethod("squeeze-no-selection", ("candidates_per_slot=1",)),
    SqueezeMethod("squeeze-no-quantisation", ("descriptor_bytes=128",)),
    SqueezeMethod("squeeze-pq", ("codec=pq",)),
    SqueezeMethod("squeeze-dsq", ("codec=dsq",)),
    HybridMethod(),
    *(SqueezeMethod(f"squeeze-budget-{f:g}", (f"budget_fraction={f:g}",)) for f in BUDGET_FRACTIONS),
    *(HybridMethod(f"hybrid-budget-{f:g}", (f"structure.budget_fraction={f:g}",)) for f in BUDGET_FRACTIONS),
    *(SqueezeMethod(f"squeeze-codes-{b}", (f"descriptor_bytes={b}",)) for b in (16, 32)),
    *(HybridMethod(f"hybrid-codes-{b}", (f"structure.descriptor_bytes={b}",)) for b in (16, 32)),
    *(SqueezeMethod(f"squeeze-scores-{k}", (f"scores={k}",)) for k in SCORE_KINDS),
    *(SqueezeMethod(f"squeeze-scores-{k}-budget-0.03", (f"scores={k}", "budget_fraction=0.03")) for k in SCORE_KINDS),
    SldMethod(),
    SldMethod("sld-scratch", ("backbone=scratch",)),
    ColmapSiftMethod(),
)}
"""The methods `sceneloc bench --methods` accepts: `scr` is the default configuration; `scr-*` are measured
variants of it (encoder choices; the ACE-style and the deeper residual head, each with and without keypoint
selection and keypoint-guided fine-tuning); `scinr` maps all scenes of a suite into one model (`scinr-no-*`: one
of its modules switched off; `scinr-position`, `-raw-position`, `-modulation`: the thesis' pixel-position input,
encoded or raw, and its modulation module switched on); `squeeze` is the compressed structure-based map
(`squeeze-no-selection`: the best-scored points without the QP; `squeeze-no-quantisation`: SIFT's own 128 bytes per
descriptor, no PCA, at the same byte budget; `squeeze-pq`, `squeeze-dsq`: product quantisation, the paper's DSQ
auto-encoder); `hybrid` holds an scr map and compressed points, the head's
coordinates guiding the matching (`squeeze-budget-F`, `hybrid-budget-F`: F of the uncompressed bytes for the points,
BUDGET_FRACTIONS; `-codes-B`: B-byte descriptor codes, more points in the same bytes; `squeeze-scores-K`: the QP's
distinctiveness scores of kind K (mapping/structure/scores.py), also at a 0.03 budget where selection matters most);
`sld` is the scene landmark detector (landmark heatmaps on the frozen encoder; `sld-scratch`: the encoder's
architecture trained from scratch with the head on each scene, the regime the fast one is measured against);
`colmap-sift` is the structure-based peer."""


def map_in_this_process(method: str, scene_roots: list[str], scene_names: list[str], map_path: str,
                        overrides: list[str], device: str, show_progress: bool, result_path: str,
                        base_map: str | None = None) -> None:
    """Child-process entry: read the mapping split of each scene (named scene_names), build and save the map (by
    extending base_map when given), and write {"map_s", "peak_rss_mb", "details"} (or {"error"} for bad input) as
    JSON to result_path. map_s runs from reading the scenes to the saved map file; interpreter start-up and imports
    are outside it."""
    try:
        t0 = time.perf_counter()
        scenes = []
        for root, name in zip(scene_roots, scene_names):
            scene = read_scene(root, split="train")
            scene.name = name
            scenes.append(scene)
        details = METHODS[method].build_map(scenes, Path(map_path), overrides, device, show_progress,
                                            None if base_map is None else Path(base_map))
        result = {"map_s": time.perf_counter() - t0, "peak_rss_mb": peak_rss_mb(), "details": details}
    except InputError as e:
        result = {"error": str(e)}
    write_text_atomic(result_path, json.dumps(result))
