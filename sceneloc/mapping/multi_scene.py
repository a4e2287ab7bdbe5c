"""Mapping many scenes into one SCINR head: one buffer over all scenes (each row tagged with its scene), batches
balanced across scenes, the single-scene loss and one-cycle AdamW schedule.

Scenes keep their own world coordinates, taken together as one global frame: they may overlap or lie kilometres
apart. The head's global mean offset and its per-scene complement bias (initialised at each scene's centre) absorb
the distances, so the network itself only learns room-sized offsets."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from rich.progress import Progress

from sceneloc.data import Scene
from sceneloc.runtime.device import resolve_precision
from sceneloc.encode import vlad_descriptor
from sceneloc.runtime.errors import InputError
from sceneloc.maps.files import config_from_metadata
from sceneloc.mapping.buffer import Buffer, build_buffer, concatenate_buffers
from sceneloc.mapping.config import MappingConfig
from sceneloc.mapping.loss import repro_threshold
from sceneloc.mapping.optimise import RowBatches, optimise_head, rows_loss
from sceneloc.mapping.trainer import TrainingSummary
from sceneloc.runtime.memory import peak_rss_mb
from sceneloc.maps.multi_scene_map import MultiSceneMap, SceneDescriptors, build_multimap_metadata
from sceneloc.nn.encoders import Encoder, load_encoder
from sceneloc.nn.heads.scinr import ScinrConfig, ScinrHead
from sceneloc.runtime.progress import make_progress

SAMPLING = ("balanced", "proportional")


@dataclass
class MultiSceneConfig:
    """How several scenes are mapped into one SCINR head."""

    mapping: MappingConfig = field(default_factory=MappingConfig)
    """Encoder, working height, buffer, augmentation, loss and schedule, as for one scene (buffer_size and
    iterations per scene or in total: per_scene_budget). mapping.head and mapping.keypoints are not used (the
    network's shape is `model`)."""
    per_scene_budget: bool = True
    """True: mapping.buffer_size and mapping.iterations are each scene's budget, so n scenes train n x iterations
    steps on n x buffer_size rows and every scene gets what a single-scene map gets (mapping time grows with the
    number of scenes, as for separate maps). False: they are totals shared by all scenes (the thesis' one fixed
    schedule; with five scenes each gets a fifth of the steps, docs/BENCHMARKS.md section 10)."""
    model: ScinrConfig = field(default_factory=ScinrConfig)
    """Shape of the SCINR head and its ablation switches."""
    descriptor_vocabulary: int = 64
    """Scene identification ("auto"): k-means centres of the VLAD vocabulary (descriptors of K x 64 numbers for
    XFeat's 64-channel features); scene_descriptors."""
    descriptor_views: int = 64
    """Scene identification: at most this many augmented mapping views per scene keep a descriptor (8 KB each
    with the default vocabulary and encoder)."""
    sampling: str = "balanced"
    """"balanced": every scene gets an equal share of the buffer and of every batch, so a scene with 10x fewer
    frames is seen as often as the others (its frames get more augmented views, up to mapping.max_buffer_passes).
    "proportional": buffer shares follow the number of mapping frames and batches are drawn uniformly over all
    rows, as one buffer over all frames would give (the thesis' setting)."""

    def to_dict(self) -> dict:
        return asdict(self)

    def validate(self) -> None:
        """Raise ValueError naming the first field that cannot work (those of mapping and model included)."""
        self.mapping.validate()
        self.model.validate()
        if self.sampling not in SAMPLING:
            raise ValueError(f"sampling must be one of {', '.join(SAMPLING)}, got {self.sampling!r}")
        if self.mapping.keypoints.enabled:
            # Refused rather than ignored: the map would record keypoints as enabled without having a network.
            raise ValueError("keypoints are for single-scene maps: a multi-scene map has no keypoint network "
                             "(drop --keypoints or mapping.keypoints.enabled)")

    @staticmethod
    def from_dict(d: dict) -> "MultiSceneConfig":
        d = dict(d)
        return MultiSceneConfig(mapping=MappingConfig.from_dict(d.pop("mapping", {})),
                                model=ScinrConfig(**d.pop("model", {})), **d)


@dataclass
class MultiSceneSummary(TrainingSummary):
    """What happened during mapping, totals over all scenes (final_* of the last batch; keypoint_s is 0), then per
    scene; stored in the map file's metadata."""

    scenes: list[dict] = field(default_factory=list)
    """Per scene in embedding order: name, n_frames, camera_bounds, buffer_rows, final_valid_fraction and
    final_median_repro_px (on up to 4,096 of its buffer rows after training)."""
    warm_started: list[str] = field(default_factory=list)
    """Scenes whose embedding (and the shared network) came from an earlier map (map_scenes' `start`)."""
    descriptors_s: float = 0.0
    """Time spent making the scene descriptors (build_multi_scene_map; scene_descriptors)."""


def buffer_shares(scenes: list[Scene], total: int, sampling: str) -> list[int]:
    """Rows of the buffer given to each scene: equal ("balanced") or proportional to its frames (at least 1)."""
    weights = np.ones(len(scenes)) if sampling == "balanced" else np.array([len(s.frames) for s in scenes], float)
    return [max(1, int(total * w / weights.sum())) for w in weights]


def total_budget(config: MultiSceneConfig, n_scenes: int, n_new_scenes: int | None = None) -> tuple[int, int]:
    """(buffer rows, optimiser steps) of the whole run (per_scene_budget). n_new_scenes: scenes not learnt yet when
    the run starts from an earlier map (None: all); the steps are theirs, at least one scene's, while every scene
    gets buffer rows, so the learnt ones are rehearsed."""
    factor = n_scenes if config.per_scene_budget else 1
    step_factor = factor if n_new_scenes is None or not config.per_scene_budget else max(1, n_new_scenes)
    return config.mapping.buffer_size * factor, config.mapping.iterations * step_factor


def build_multi_scene_buffer(scenes: list[Scene], encoder: Encoder, config: MultiSceneConfig, device: torch.device,
                             progress: Progress) -> Buffer:
    """build_buffer on each scene with its share of the total buffer (total_budget; its own seed), concatenated into
    one Buffer (scene i's rows after scene i-1's)."""
    shares = buffer_shares(scenes, total_budget(config, len(scenes))[0], config.sampling)
    return concatenate_buffers([build_buffer(scene, encoder, replace(config.mapping, buffer_size=share,
                                                                     seed=config.mapping.seed + i), device, progress)
                                for i, (scene, share) in enumerate(zip(scenes, shares))])


def scene_batches(scene_rows: list[int], batch_size: int, sampling: str, generator: torch.Generator) -> RowBatches:
    """Batches over a buffer whose scenes occupy consecutive row ranges of the given sizes: "balanced" takes an equal
    share of every batch from each scene's rows; "proportional" draws batches from all rows alike."""
    starts = np.cumsum([0] + scene_rows)
    if sampling == "balanced":
        pools = [torch.arange(int(a), int(b)) for a, b in zip(starts[:-1], starts[1:])]
        base, extra = divmod(batch_size, len(scene_rows))
        return RowBatches(pools, [min(base + (i < extra), n) for i, n in enumerate(scene_rows)], generator)
    return RowBatches([torch.arange(int(starts[-1]))], [min(batch_size, int(starts[-1]))], generator)


def _check_scenes(scenes: list[Scene]) -> None:
    if not scenes:
        raise InputError(None, "no scenes to map")
    seen = set()
    for scene in scenes:
        if not scene.frames:
            raise InputError(scene.root, "scene has no frames")
        scene.require_poses()
        if scene.name in seen:
            raise InputError(scene.root, f"scene name {scene.name!r} is used twice; scene names must be unique")
        seen.add(scene.name)


def config_of_map(path: str | Path, start: MultiSceneMap) -> MultiSceneConfig:
    """The settings a multi-scene map was made with (its metadata "config"), the defaults of a run that continues it
    (`sceneloc map --multi --init`). Raises InputError naming the map file `path` for a key that is not a setting or
    a value of the wrong type. A map of an earlier sceneloc may record keypoints as enabled (they were ignored):
    they are off, as they were."""
    config = config_from_metadata(path, MultiSceneConfig, start.metadata.get("config"), "config")
    config.mapping.keypoints.enabled = False
    return config


def check_can_continue(start: MultiSceneMap, config: MultiSceneConfig) -> None:
    """Raise ValueError when a run with `config` cannot continue from `start` (other model shape, encoder or working
    height)."""
    if start.metadata["model"] != config.model.to_dict():
        raise ValueError("its model config differs from this run's (--set model.* as it was made)")
    if start.encoder_name != config.mapping.encoder or start.image_height != config.mapping.image_height:
        raise ValueError(f"it was made with encoder {start.encoder_name} at {start.image_height} px, this run uses "
                         f"{config.mapping.encoder} at {config.mapping.image_height} px")


def warm_start(head: ScinrHead, start: MultiSceneMap, scenes: list[Scene], config: MultiSceneConfig) -> list[str]:
    """Copy an earlier map's network into `head` (made for `scenes` with config.model): every shared weight, and the
    embedding of each scene it already holds (by name); new scenes keep their fresh embeddings. The per-scene
    anchors are not copied: head's were computed from the scenes' own camera centres, and mean + anchor (the scene's
    centre) is all that predictions depend on. Returns the names of the scenes taken over. Raises ValueError as
    check_can_continue."""
    check_can_continue(start, config)
    state = {k: v for k, v in start.head.state_dict().items() if k not in ("mean", "anchors", "embeddings")}
    head.load_state_dict(state, strict=False)
    taken = [s.name for s in scenes if s.name in start.scene_names]
    if hasattr(head, "embeddings"):
        with torch.no_grad():
            for i, scene in enumerate(scenes):
                if scene.name in start.scene_names:
                    head.embeddings[i] = start.head.embeddings[start.scene_index(scene.name)]
    return taken


def map_scenes(scenes: list[Scene], config: MultiSceneConfig, device: torch.device,
               show_progress: bool = True, start: MultiSceneMap | None = None) -> tuple[ScinrHead, MultiSceneSummary]:
    """Train one SCINR head for `scenes` (every frame posed, names unique; scene i gets embedding i).
    start: an earlier map to continue from (warm_start), e.g. to add scenes to it without training from scratch:
    the run then takes the steps of the new scenes only (total_budget) and rehearses the others from their buffers.
    Deterministic for a given seed on a given device and thread count."""
    head, summary, _ = _map_scenes(scenes, config, device, show_progress, start)
    return head, summary


def _map_scenes(scenes: list[Scene], config: MultiSceneConfig, device: torch.device, show_progress: bool,
                start: MultiSceneMap | None) -> tuple[ScinrHead, MultiSceneSummary, Buffer]:
    """map_scenes, also returning the training buffer (scene descriptors are made from it)."""
    _check_scenes(scenes)
    config.validate()
    cfg = config.mapping
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    t0 = time.perf_counter()
    encoder = load_encoder(cfg.encoder).to(device)
    centres = torch.tensor(np.stack([s.camera_centers().mean(0) for s in scenes]), dtype=torch.float32)
    head = ScinrHead(encoder.out_channels, config.model, len(scenes), centres)
    warm_started = [] if start is None else warm_start(head, start, scenes, config)
    head = head.to(device)

    with make_progress(show_progress) as progress:
        buffer = build_multi_scene_buffer(scenes, encoder, config, device, progress)
        t_encoded = time.perf_counter()
        total_steps = total_budget(config, len(scenes), len(scenes) - len(warm_started) if start else None)[1]
        no_decay = {id(p) for p in head.no_decay_parameters()}
        groups = [{"params": [p for p in head.parameters() if id(p) not in no_decay]},
                  {"params": head.no_decay_parameters(), "weight_decay": 0.0}]
        generator = torch.Generator().manual_seed(cfg.seed)
        batches = scene_batches(buffer.scene_rows, min(cfg.batch_size, len(buffer)), config.sampling, generator)
        loss, stats, history = optimise_head(
            head, buffer, cfg, device, progress, f"training SCINR on {len(scenes)} scenes", total_steps,
            (cfg.lr_start, cfg.lr_max, cfg.lr_end), lambda t: repro_threshold(cfg, t), batches=batches,
            param_groups=groups)
    head.eval()
    t_end = time.perf_counter()

    per_scene, start = [], 0
    frame_K, frame_pose = buffer.frame_K.to(device), buffer.frame_cam_from_world.to(device)
    with torch.no_grad():
        for scene, n_rows in zip(scenes, buffer.scene_rows):
            rows = torch.arange(start, start + n_rows)[torch.randperm(n_rows, generator=generator)[:4096]]
            start += n_rows
            _, scene_stats = rows_loss(head, buffer, rows, frame_K, frame_pose, cfg, cfg.repro_threshold_end,
                                       device)
            centers = scene.camera_centers()
            per_scene.append({"name": scene.name, "n_frames": len(scene.frames),
                              "camera_bounds": [centers.min(0).tolist(), centers.max(0).tolist()],
                              "buffer_rows": n_rows, "final_valid_fraction": scene_stats["valid"],
                              "final_median_repro_px": scene_stats["repro_px"]})
    summary = MultiSceneSummary(
        n_frames=sum(len(s.frames) for s in scenes), buffer_rows=len(buffer), steps=total_steps,
        encode_s=t_encoded - t0, train_s=t_end - t_encoded, keypoint_s=0.0, total_s=t_end - t0,
        peak_rss_mb=peak_rss_mb(),
        final_loss=loss, final_valid_fraction=float(stats.get("valid", float("nan"))),
        final_median_repro_px=float(stats.get("repro_px", float("nan"))), device=str(device),
        precision=resolve_precision(cfg.precision, device), scenes=per_scene,
        history=history, warm_started=warm_started)
    return head, summary, buffer


def build_multi_scene_map(scenes: list[Scene], config: MultiSceneConfig, device: torch.device,
                          show_progress: bool = True, start: MultiSceneMap | None = None
                          ) -> tuple[MultiSceneMap, MultiSceneSummary]:
    """map_scenes plus everything the map file records about the scenes and the run."""
    head, summary, buffer = _map_scenes(scenes, config, device, show_progress, start)
    t0 = time.perf_counter()
    descriptors = scene_descriptors(buffer, len(scenes), config)
    summary.descriptors_s = time.perf_counter() - t0
    del buffer
    training = {k: v for k, v in asdict(summary).items() if k not in ("scenes", "keypoint_s", "keypoints")}
    metadata = build_multimap_metadata(load_encoder(config.mapping.encoder), config.model,
                                       config.mapping.image_height, summary.scenes, training, config.to_dict())
    return MultiSceneMap(head, config.mapping.encoder, config.mapping.image_height,
                         [s.name for s in scenes], metadata, descriptors.to(device)), summary


def kmeans(rows: torch.Tensor, k: int, iterations: int, generator: torch.Generator) -> torch.Tensor:
    """Lloyd's k-means of rows (N, C) float32 -> centres (min(k, N), C), started from k distinct random rows; a
    centre left without rows keeps its place."""
    centres = rows[torch.randperm(len(rows), generator=generator)[:k]].clone()
    for _ in range(iterations):
        nearest = (rows @ centres.T - 0.5 * (centres * centres).sum(1)).argmax(1)
        sums = torch.zeros_like(centres).index_add_(0, nearest, rows)
        counts = torch.bincount(nearest, minlength=len(centres))[:, None]
        centres = torch.where(counts > 0, sums / counts.clamp(min=1), centres)
    return centres


def scene_descriptors(buffer: Buffer, n_scenes: int, config: MultiSceneConfig) -> SceneDescriptors:
    """Scene descriptors for identification ("auto") from the training buffer, without encoding anything again: a
    vocabulary of config.descriptor_vocabulary k-means centres of (up to 50,000) buffer features, then the VLAD
    descriptor of the buffer rows of each augmented mapping view, up to config.descriptor_views views per scene
    (spread evenly over its views)."""
    generator = torch.Generator().manual_seed(config.mapping.seed)
    sample = torch.randperm(len(buffer), generator=generator)[:50_000]
    vocabulary = kmeans(buffer.features[sample].float(), config.descriptor_vocabulary, 20, generator)
    order = torch.argsort(buffer.frame_index, stable=True)
    _, counts = torch.unique_consecutive(buffer.frame_index[order], return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    view_scene = buffer.scene_index(order[starts])
    descriptors, scene_index = [], []
    for scene in range(n_scenes):
        mine = torch.nonzero(view_scene == scene)[:, 0]
        if len(mine) > config.descriptor_views:
            mine = mine[torch.linspace(0, len(mine) - 1, config.descriptor_views).round().long()]
        for v in mine.tolist():
            rows = order[int(starts[v]):int(starts[v] + counts[v])]
            descriptors.append(vlad_descriptor(buffer.features[rows], vocabulary))
            scene_index.append(scene)
    # float16 values, as the map file stores them: a map scores alike before and after saving.
    return SceneDescriptors(vocabulary, torch.stack(descriptors).half().float(),
                            torch.tensor(scene_index, dtype=torch.int64), n_scenes)
