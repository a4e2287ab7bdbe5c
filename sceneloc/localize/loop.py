"""Localization: the one loop every map kind goes through.

    frame ──decode──▶ working image ──encode──▶ cell features ──predictor──▶ scene coordinates (+ keypoint
    probabilities) per candidate scene ──keypoint selection──▶ RANSAC-PnP ──▶ PoseEstimate (most inliers)

What differs between map kinds is only the predictor (its encoding, candidates and 3D points per pixel):
SceneMapPredictor here (the regression head, the keypoint network if any; one candidate), MultiScenePredictor in
multi_scene.py (the SCINR head with a scene index; the named scene, or for "auto" the scenes that retrieval ranks
first), StructureMapPredictor in structure.py (SIFT keypoints, 2D-3D matches against the retrieved clusters).

localize_frames runs the stages as a pipeline: a thread pool decodes (and resizes) images ahead, the encoder takes
a few consecutive images of one size in one forward pass, and RANSAC of image i runs in its own thread while image
i + 1 is encoded (torch, OpenCV and poselib release the GIL). The results are those of the sequential loop
(LocalizeConfig.pipeline False, or localize_image per image): every stage computes the same thing in the same
order, and RANSAC is seeded per image (SolverConfig.seed)."""

from __future__ import annotations

import time
from collections import deque
from contextlib import contextmanager
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Callable, Protocol, Sequence

import numpy as np
import torch

from sceneloc.data import Scene
from sceneloc.runtime.device import autocast, resolve_precision
from sceneloc.encode import EncodedImage, encode_batch, encode_query, prepare_image
from sceneloc.geometry import Camera
from sceneloc.localize.estimate import PoseEstimate
from sceneloc.maps.scene_map import SceneMap
from sceneloc.nn.heads.scinr import normalised_positions
from sceneloc.runtime.progress import make_progress
from sceneloc.solve import PnPResult, SolverConfig, solve_pnp

__all__ = ["REFERENCE_HEIGHT", "PoseEstimate", "LocalizeConfig", "Prediction", "Predictor", "CellPredictor",
           "SceneMapPredictor", "most_inliers", "head_coordinates", "encode_query", "predict_scene_coordinates",
           "solve_image", "most_probable", "select_keypoints", "localize_encoded", "localize_frames", "working_image",
           "localize_rgb", "localize_image", "localize_scene"]

REFERENCE_HEIGHT = 480
"""Image height at which SolverConfig.inlier_threshold_px is expressed."""


@dataclass
class LocalizeConfig:
    """Query-time settings."""

    solver: SolverConfig = field(default_factory=lambda: SolverConfig(inlier_threshold_px=20.0))
    """RANSAC-PnP settings. Its inlier threshold is given for a 480-pixel-high image and scaled to the working image
    (the map's image height), so one setting means the same angular tolerance at every resolution. 20 px rather
    than ACE's 10: on our maps it keeps recall at (5 cm, 5 deg), raises it at (10 cm, 5 deg) and halves RANSAC time
    (docs/BENCHMARKS.md); --threshold 10 trades that for slightly better recall at (2 cm, 2 deg)."""
    use_keypoints: bool = True
    """When the map has a keypoint network, give RANSAC only the correspondences it ranks as most likely keypoints."""
    keypoint_top_fraction: float = 0.5
    """Fraction of an image's correspondences kept, those of highest keypoint probability (a rank, not a
    probability threshold, so it works whatever the classifier's calibration)."""
    precision: str = "auto"
    """Numeric precision of the encoder and head: "auto" (bfloat16 on CPUs with AMX/AVX512-BF16, float16 on
    CUDA, else float32), "bf16" or "fp32" (sceneloc.runtime.device)."""
    pipeline: bool = True
    """Localizing many images (localize_scene): decode ahead in a thread pool and run RANSAC of one image while
    the next ones encode. False: one stage after the other, image by image (the same poses, slower)."""
    batch_size: int = 4
    """Consecutive images of one size encoded in one forward pass (pipeline only; not with float32 on the CPU, where
    a batch rounds differently from single images)."""
    decode_workers: int = 2
    """Threads decoding images ahead (pipeline only)."""
    network_threads: int = 0
    """torch's intra-op threads for the encoder and head while localizing on the CPU (pipelined or not, so that both
    give the same poses): 0 takes one less than torch.get_num_threads(), leaving a core to RANSAC's thread (on 2
    cores: one each, which also keeps torch's threads from waiting on each other when other processes load the
    machine)."""
    auto_margin: float = 0.05
    """Multi-scene maps with "auto": when the retrieval similarity of the second-ranked scene is within this of the
    first's, RANSAC runs on both and the pose with more inliers wins (maps.multi_scene_map.SceneDescriptors)."""
    auto_max_scenes: int = 2
    """Multi-scene maps with "auto": at most this many retrieval-ranked scenes get a RANSAC."""
    structure_threshold_px: float = 12.0
    """Structure maps: RANSAC's inlier threshold in pixels at 480 px image height, in place of solver's (COLMAP's and
    hloc's 12 px for SIFT keypoints)."""
    retrieval_clusters: int = 3
    """Structure maps: the query's descriptors are matched against the points of this many co-visible clusters,
    those whose retrieval descriptors are most similar to the query's (0: every point of the map)."""
    retrieval_min_points: int = 20000
    """Structure maps of fewer points are matched whole, without retrieval: on the quick suite's 3,222-point map
    retrieval of 3 clusters lost 2.5 points of recall and saved 6 % of the query time (docs/BENCHMARKS.md)."""
    landmark_min_confidence: float = 0.3
    """Landmark maps: a landmark is detected when its heatmap's peak probability reaches this (the head is trained
    to a Gaussian of peak 1 around the projection)."""
    landmark_threshold_px: float = 8.0
    """Landmark maps: RANSAC's inlier threshold in pixels at 480 px image height, in place of solver's (the peaks
    are located to a fraction of an 8-px cell of the working image)."""
    hybrid_radius_m: float = 0.3
    """Hybrid maps: a keypoint is matched only against the map points within this many metres of the scene
    coordinate the head predicts for its cell (localize/hybrid.py)."""
    hybrid_min_inliers: int = 10
    """Hybrid maps: the points' pose is taken when it has at least this many inliers (or agrees with the cells,
    hybrid_min_support), else the scene coordinates' pose. On lowtex every wrong points pose had at most 9
    inliers; 10 alone gives 61 % at (5 cm, 5 deg) there (20: 57 %) and 100 % on quick-room (20: 97 %)
    (docs/BENCHMARKS.md)."""
    hybrid_min_support: float = 0.9
    """Hybrid maps: a points pose with fewer than hybrid_min_inliers inliers is still taken when at least this
    fraction of the cells' own RANSAC inliers reproject within the cells' threshold under it (two independent
    correspondence sets agreeing). On lowtex right poses of 4-9 inliers had 0.92-0.99, wrong ones mostly below
    0.3 (docs/BENCHMARKS.md)."""


@dataclass
class Prediction:
    """The network's output for one image, in the working image (resized to the map's image height)."""

    pixels: np.ndarray
    """(N, 2) float64 cell-centre pixels."""
    coords: np.ndarray
    """(N, 3) float64 world scene coordinates."""
    camera: Camera
    """The working image's camera."""
    keypoint_prob: np.ndarray | None
    """(N,) float32 keypoint probabilities, None when the map has no keypoint network."""
    inlier_threshold_px: float | None = None
    """RANSAC's inlier threshold for these correspondences, in pixels at REFERENCE_HEIGHT; None: the config's
    (LocalizeConfig.solver). Local features located to a pixel get a tighter one than regression cells."""


class Predictor(Protocol):
    """What a map kind gives the loop: its working height, its encoding of images, the scenes to try for an image,
    the 2D-3D correspondences of each, and the choice among their poses."""

    image_height: int | None
    """Height images are resized to before encoding (None: kept as they are)."""

    def encode(self, images: list[np.ndarray], cameras: list[Camera], device: torch.device, precision: str
               ) -> list[EncodedImage]:
        """Working images of one size (h, w, 3) uint8 with their cameras -> one EncodedImage each."""

    def candidates(self, encoded: EncodedImage) -> tuple[list, dict]:
        """(scene keys to try, in order, details to record), from the image's features."""

    def predict(self, encoded: EncodedImage, scene) -> Prediction:
        """The correspondences of scene key `scene`: pixels (usually encoded.pixels) in a camera (usually
        encoded.camera) with world points (N, 3) float64, NaN rows where the map has no point for a pixel (RANSAC
        ignores them), keypoint probabilities or None, and the inlier threshold they need (None: the config's)."""

    def choose(self, problems: list[Prediction], results: list[PnPResult]) -> int:
        """The index of the pose to return, from each candidate's correspondences (after keypoint selection) and
        RANSAC result (most_inliers for most map kinds)."""

    def finish(self, details: dict, scenes: list, results: list[PnPResult], best: int) -> None:
        """Record in `details` what the predictor's choice of scenes gave (scene names, scores)."""


@torch.no_grad()
def head_coordinates(head: torch.nn.Module, encoded: EncodedImage, scene: int = 0, precision: str = "auto",
                     keypoint_net: torch.nn.Module | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """What any map's head gives for an encoded image: (world scene coordinates (N, 3) float64, keypoint
    probabilities (N,) float32 or None without a keypoint network), with scene index `scene` as the head's scene
    input (a single-scene head ignores it) and the cells' normalised positions where the head reads them."""
    features = encoded.features
    device = features.device
    positions = (normalised_positions(encoded.pixels, encoded.camera.K).to(device)
                 if getattr(head, "reads_positions", False) else None)
    scenes = torch.full((len(features),), scene, dtype=torch.int64, device=device)
    with autocast(device, precision):
        coords = head(features, positions, scenes)
        prob = None if keypoint_net is None else keypoint_net.probabilities(features)
    return coords.float().cpu().numpy().astype(np.float64), None if prob is None else prob.float().cpu().numpy()


def most_inliers(results: list[PnPResult]) -> int:
    """The index of the result with a pose and the most inliers (the first on ties; 0 when none has a pose)."""
    return max(range(len(results)), key=lambda i: results[i].num_inliers if results[i].cam_from_world else -1)


class CellPredictor:
    """The encoding of scene-coordinate maps: the map's frozen encoder, per-cell features (encode.encode_batch);
    of the candidate scenes' poses the one with the most inliers."""

    encoder_name: str

    def encode(self, images: list[np.ndarray], cameras: list[Camera], device: torch.device, precision: str
               ) -> list[EncodedImage]:
        return encode_batch(self.encoder_name, images, cameras, device, precision)

    def choose(self, problems: list[Prediction], results: list[PnPResult]) -> int:
        return most_inliers(results)


class SceneMapPredictor(CellPredictor):
    """A SceneMap's regression head (and keypoint network): one scene, no scene input."""

    def __init__(self, scene_map: SceneMap, precision: str = "auto"):
        self.map = scene_map
        self.encoder_name = scene_map.encoder_name
        self.image_height = scene_map.image_height
        self.precision = precision

    def candidates(self, encoded: EncodedImage) -> tuple[list, dict]:
        return [0], {}

    def predict(self, encoded: EncodedImage, scene: int = 0) -> Prediction:
        coords, prob = head_coordinates(self.map.head, encoded, scene, self.precision, self.map.keypoint_net)
        return Prediction(encoded.pixels, coords, encoded.camera, prob)

    def finish(self, details: dict, scenes: list, results: list[PnPResult], best: int) -> None:
        pass


@torch.no_grad()
def predict_scene_coordinates(scene_map: SceneMap, rgb: np.ndarray, camera: Camera,
                              device: torch.device, precision: str = "auto") -> Prediction:
    """rgb: (H, W, 3) uint8 of `camera` -> Prediction for every stride-8 cell of the working image."""
    features, pixels, work_cam = encode_query(scene_map.encoder_name, scene_map.image_height, rgb, camera, device,
                                              precision)
    return SceneMapPredictor(scene_map, precision).predict(EncodedImage(features, pixels, work_cam))


def solve_image(pixels: np.ndarray, coords: np.ndarray, work_cam: Camera, config: LocalizeConfig,
                threshold_px: float | None = None) -> PnPResult:
    """RANSAC-PnP of (N, 2) working-image pixels and (N, 3) scene coordinates, with the inlier threshold
    threshold_px (None: config.solver's) scaled from REFERENCE_HEIGHT to the working image."""
    threshold = (config.solver.inlier_threshold_px if threshold_px is None else threshold_px) \
        * work_cam.height / REFERENCE_HEIGHT
    return solve_pnp(pixels, coords, work_cam, replace(config.solver, inlier_threshold_px=threshold))


def most_probable(prob: np.ndarray, fraction: float, minimum: int = 4) -> np.ndarray:
    """prob (N,) -> indices of the `fraction` of entries with the highest values (at least `minimum`, at most N), in
    descending order (ties in index order)."""
    count = min(len(prob), max(minimum, int(round(len(prob) * fraction))))
    return np.argsort(-prob, kind="stable")[:count]


def select_keypoints(prediction: Prediction, config: LocalizeConfig) -> np.ndarray:
    """Indices of the correspondences RANSAC gets: all of them without keypoint probabilities (or with
    use_keypoints off), else the keypoint_top_fraction of highest probability (at least 4), in probability order."""
    if prediction.keypoint_prob is None or not config.use_keypoints:
        return np.arange(len(prediction.pixels))
    return most_probable(prediction.keypoint_prob, config.keypoint_top_fraction)


# --- the loop ---------------------------------------------------------------------------------------------------

@dataclass
class _Job:
    """One image between the network and the solver: what RANSAC gets per candidate scene."""

    name: str
    scenes: list
    problems: list[Prediction]
    """The correspondences per candidate scene, after keypoint selection."""
    details: dict


def _network(predictor: Predictor, name: str, encoded: EncodedImage, config: LocalizeConfig,
             details: dict) -> _Job:
    """The head stage: candidate scenes, their scene coordinates, keypoint selection."""
    t0 = time.perf_counter()
    scenes, extra = predictor.candidates(encoded)
    problems = []
    for scene in scenes:
        prediction = predictor.predict(encoded, scene)
        keep = select_keypoints(prediction, config)
        problems.append(replace(prediction, pixels=prediction.pixels[keep], coords=prediction.coords[keep],
                                keypoint_prob=None))
    details.update(extra)
    details["head_ms"] = (time.perf_counter() - t0) * 1e3
    details["n_cells"] = len(encoded.pixels)
    return _Job(name, scenes, problems, details)


def _solve(predictor: Predictor, job: _Job, config: LocalizeConfig) -> PoseEstimate:
    """The solver stage: RANSAC per candidate scene, the pose the predictor chooses."""
    t0 = time.perf_counter()
    results = [solve_image(p.pixels, p.coords, p.camera, config, p.inlier_threshold_px) for p in job.problems]
    best = predictor.choose(job.problems, results)
    result = results[best]
    details = job.details
    details["solver_ms"] = (time.perf_counter() - t0) * 1e3
    details["network_ms"] = details.get("encode_ms", 0.0) + details["head_ms"]
    details["iterations"] = result.iterations
    details["n_correspondences"] = int(np.isfinite(job.problems[best].coords).all(1).sum())
    predictor.finish(details, job.scenes, results, best)
    return PoseEstimate(name=job.name, cam_from_world=result.cam_from_world, num_inliers=result.num_inliers,
                        inlier_ratio=result.inlier_ratio, details=details)


def localize_encoded(predictor: Predictor, name: str, encoded: EncodedImage, config: LocalizeConfig,
                     details: dict | None = None) -> PoseEstimate:
    """An encoded image -> PoseEstimate: the head and solver stages, one after the other."""
    return _solve(predictor, _network(predictor, name, encoded, config, dict(details or {})), config)


def localize_frames(predictor: Predictor, frames: Sequence, config: LocalizeConfig, device: torch.device,
                    on_done: Callable[[PoseEstimate], None] | None = None) -> list[PoseEstimate]:
    """Localize frames (objects with name, camera and load_rgb(), e.g. sceneloc.data.Frame) in order, pipelined
    unless config.pipeline is False (module docstring). on_done is called with each estimate as it is finished.

    details of every estimate: decode_ms (read, undistort, resize), encode_ms (its share of its batch's encoder
    pass), head_ms (scene choice, head, keypoint network and selection), solver_ms (RANSAC), network_ms
    (encode + head), each the time of its own stage (stages overlap in the pipeline, so they add up to more than
    the wall time); time_ms: the wall time of the whole run over the number of images (1000 / images per second);
    iterations, n_correspondences (given to RANSAC), n_cells (predicted), encode_batch (images in its batch)."""
    frames = list(frames)
    if not frames:
        return []
    batch_size = max(1, config.batch_size) if config.pipeline and _batching_is_exact(config, device) else 1
    height = predictor.image_height
    start = time.perf_counter()

    def decode(frame):
        t0 = time.perf_counter()
        image, work_cam = working_image(frame.load_rgb(), frame.camera, height)
        return image, work_cam, (time.perf_counter() - t0) * 1e3

    decoders = ThreadPoolExecutor(max(1, config.decode_workers), "sceneloc-decode") if config.pipeline else None
    solver = ThreadPoolExecutor(1, "sceneloc-solve") if config.pipeline else None
    lookahead = 2 * batch_size + max(1, config.decode_workers) if config.pipeline else 1
    estimates: list[Future] = []
    decoded: deque[Future] = deque()
    solving: deque[Future] = deque()
    next_frame = 0

    def submit_decodes():
        nonlocal next_frame
        while next_frame < len(frames) and len(decoded) < lookahead:
            frame = frames[next_frame]
            decoded.append(decoders.submit(decode, frame) if decoders is not None else _done(decode(frame)))
            next_frame += 1

    def solve(job: _Job) -> PoseEstimate:
        estimate = _solve(predictor, job, config)
        if on_done is not None:
            on_done(estimate)
        return estimate

    try:
        with network_threads(config, device):
            index = 0
            submit_decodes()
            while decoded:
                # A batch: consecutive images of one size (a deterministic grouping, whatever the threads' timing).
                batch = [decoded.popleft().result()]
                while len(batch) < batch_size and decoded and decoded[0].result()[0].shape == batch[0][0].shape:
                    batch.append(decoded.popleft().result())
                submit_decodes()
                t0 = time.perf_counter()
                encoded = predictor.encode([b[0] for b in batch], [b[1] for b in batch], device, config.precision)
                encode_ms = (time.perf_counter() - t0) * 1e3 / len(batch)
                for (_, _, decode_ms), enc in zip(batch, encoded):
                    details = {"decode_ms": decode_ms, "encode_ms": encode_ms, "encode_batch": len(batch)}
                    job = _network(predictor, frames[index].name, enc, config, details)
                    index += 1
                    if solver is None:
                        estimates.append(_done(solve(job)))
                        continue
                    # The network stage runs at most two batches ahead of RANSAC.
                    while len(solving) >= 2 * batch_size:
                        solving.popleft().result()
                    solving.append(solver.submit(solve, job))
                    estimates.append(solving[-1])
            results = [e.result() for e in estimates]
    finally:
        for pool in (decoders, solver):
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
    per_image_ms = (time.perf_counter() - start) * 1e3 / len(results)
    for estimate in results:
        estimate.details["time_ms"] = per_image_ms
    return results


def working_image(rgb: np.ndarray, camera: Camera, image_height: int | None) -> tuple[np.ndarray, Camera]:
    """A decoded image at the predictor's working height (encode.prepare_image), or as it is for None."""
    return (rgb, camera) if image_height is None else prepare_image(rgb, camera, image_height)


@contextmanager
def network_threads(config: LocalizeConfig, device: torch.device):
    """torch's intra-op threads while images are localized on the CPU: config.network_threads, or one less than
    torch.get_num_threads() (at least one), leaving a core to the solver thread; restored afterwards. The single-image
    path keeps the same count as the pipeline because float32 convolutions round differently with another thread
    count (oneDNN), and both must give the same poses."""
    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(config.network_threads or max(1, threads - 1))
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _batching_is_exact(config: LocalizeConfig, device: torch.device) -> bool:
    """Whether a batched encoder pass gives each image the features it gets alone: with bfloat16/float16 autocast
    (bit-identical on the CPUs tried); not in float32 on the CPU, where oneDNN's rounding depends on the batch."""
    return not (device.type == "cpu" and resolve_precision(config.precision, device) == "fp32")


def _done(value) -> Future:
    """A Future already holding `value` (the sequential loop's stand-in for a pool's)."""
    future: Future = Future()
    future.set_result(value)
    return future


def localize_image(scene_map: SceneMap, name: str, rgb: np.ndarray, camera: Camera, config: LocalizeConfig,
                   device: torch.device) -> PoseEstimate:
    """One image -> PoseEstimate (cam_from_world None when the solver fails). details: time_ms (encode, head and
    solver), encode_ms, head_ms, network_ms, solver_ms, iterations, n_correspondences (given to RANSAC), n_cells
    (predicted)."""
    return localize_rgb(SceneMapPredictor(scene_map, config.precision), name, rgb, camera, config, device)


def localize_rgb(predictor: Predictor, name: str, rgb: np.ndarray, camera: Camera, config: LocalizeConfig,
                 device: torch.device) -> PoseEstimate:
    """One decoded image through the stages of the loop, one after the other (time_ms: their sum)."""
    t0 = time.perf_counter()
    with network_threads(config, device):
        image, work_cam = working_image(rgb, camera, predictor.image_height)
        encoded = predictor.encode([image], [work_cam], device, config.precision)[0]
        details = {"encode_ms": (time.perf_counter() - t0) * 1e3}
        estimate = localize_encoded(predictor, name, encoded, config, details)
    estimate.details["time_ms"] = (time.perf_counter() - t0) * 1e3
    return estimate


def localize_with_progress(predictor: Predictor, scene: Scene, config: LocalizeConfig, device: torch.device,
                           show_progress: bool, description: str) -> list[PoseEstimate]:
    """localize_frames over the frames of `scene` with a progress bar showing the images per second."""
    with make_progress(show_progress) as progress:
        task = progress.add_task(description, total=len(scene.frames), info="")
        start, count = time.perf_counter(), [0]

        def done(_: PoseEstimate) -> None:
            count[0] += 1
            progress.update(task, advance=1, info=f"{count[0] / (time.perf_counter() - start):.1f} img/s")

        return localize_frames(predictor, scene.frames, config, device, done)


def localize_scene(scene_map: SceneMap, scene: Scene, config: LocalizeConfig, device: torch.device,
                   show_progress: bool = True) -> list[PoseEstimate]:
    """Localize every frame of `scene` (poses, if any, are ignored here; `evaluate` compares them); details as
    localize_frames."""
    return localize_with_progress(SceneMapPredictor(scene_map, config.precision), scene, config, device,
                                  show_progress, "localizing")
