"""Depth completion (the landmark paper's section 3): fill the holes of a frame's depth (a sensor's dropouts, a
sparse or partial reconstruction) from a dense depth prior and the image, with a small regressor fitted per image
on the pixels whose depth is known.

The prior is what a scene-coordinate map implies: its scene coordinate for every cell of the frame, taken into the
frame's camera, gives a depth per cell (map_depth), interpolated to every pixel. The paper's prior is a monocular
depth network (Depth-Anything); none ships in a wheel we may use, and a map of the scene is what a sceneloc user
has. As in the paper, an MLP of hidden sizes (100, 50), fitted on 80 % of the known pixels and checked on the other
20 %, maps (prior, colour, pixel position) to depth; here it predicts the log ratio of depth to prior, so that where
it has learnt nothing the prior stands. The plain baseline is nearest-neighbour hole filling."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from scipy import ndimage

from sceneloc.data import Frame
from sceneloc.geometry import Camera, Rigid3
from sceneloc.export.points import lookup_coordinates
from sceneloc.localize.loop import predict_scene_coordinates
from sceneloc.mapping.optimise import train_one_cycle
from sceneloc.maps.scene_map import SceneMap
from sceneloc.runtime.errors import InputError
from sceneloc.runtime.progress import make_progress


@dataclass
class DepthCompletionConfig:
    """The per-image regressor."""

    hidden: list[int] = field(default_factory=lambda: [100, 50])
    """Hidden layer sizes of the MLP (the paper's (100, 50))."""
    steps: int = 600
    """Optimisation steps per image."""
    batch_size: int = 4096
    """Known pixels per step."""
    max_pixels: int = 50000
    """At most this many known pixels (a random sample) are used to fit; all missing ones are predicted."""
    validation_fraction: float = 0.2
    """Share of the known pixels held out to report the fit (the paper's 80/20 split)."""
    lr_max: float = 3e-3
    """Peak learning rate of the one-cycle schedule."""
    seed: int = 42
    """Seed of the pixel sample, the split and the initialisation (the paper's random state)."""

    def validate(self) -> None:
        """ValueError naming the first setting that cannot work."""
        if not self.hidden or min(self.hidden) < 1:
            raise ValueError(f"hidden must be a non-empty list of sizes >= 1, got {self.hidden}")
        for name in ("steps", "batch_size", "max_pixels"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 < self.validation_fraction < 1:
            raise ValueError(f"validation_fraction must be in (0, 1), got {self.validation_fraction}")
        if not self.lr_max > 0:
            raise ValueError(f"lr_max must be > 0, got {self.lr_max}")


def map_depth(scene_map: SceneMap, rgb: np.ndarray, camera: Camera, cam_from_world: Rigid3,
              device: torch.device) -> np.ndarray:
    """The depth a scene-coordinate map implies for a posed image: (H, W) float32 metres along the optical axis at
    every pixel of `rgb` (taken with `camera` at cam_from_world), from the map's scene coordinates per cell
    interpolated bilinearly and taken into the camera; 0 where that depth is not positive."""
    prediction = predict_scene_coordinates(scene_map, rgb, camera, device)
    h, w = rgb.shape[:2]
    u, v = np.meshgrid(np.arange(w), np.arange(h))
    scale = np.array([prediction.camera.width / w, prediction.camera.height / h])
    # Pixel centres of the full image in the working image (both OpenCV convention: centre of pixel 0 at 0).
    work = (np.stack([u.ravel(), v.ravel()], 1) + 0.5) * scale - 0.5
    coords = lookup_coordinates(prediction, work)
    depth = cam_from_world.apply(coords)[:, 2].reshape(h, w)
    return np.where(np.isfinite(depth) & (depth > 0), depth, 0.0).astype(np.float32)


def nearest_fill(depth: np.ndarray) -> np.ndarray:
    """(H, W) depth with every hole (0) given the depth of the nearest known pixel (the plain baseline)."""
    holes = depth <= 0
    if not holes.any() or holes.all():
        return depth.copy()
    _, (rows, cols) = ndimage.distance_transform_edt(holes, return_indices=True)
    return depth[rows, cols]


def _features(prior: np.ndarray, rgb: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> torch.Tensor:
    """(N, 6) float32 regressor inputs: log prior, colour in 0..1, pixel position in -1..1."""
    h, w = prior.shape
    return torch.from_numpy(np.c_[np.log(prior[rows, cols]), rgb[rows, cols] / 255.0,
                                  2 * cols / max(w - 1, 1) - 1, 2 * rows / max(h - 1, 1) - 1].astype(np.float32))


def complete_depth(depth: np.ndarray, rgb: np.ndarray, prior: np.ndarray, config: DepthCompletionConfig,
                   show_progress: bool = False) -> tuple[np.ndarray, dict]:
    """Fill the holes of `depth` (H, W) metres (0 = missing) with the regressor of the module docstring.
    rgb: (H, W, 3) uint8 of the same frame; prior: (H, W) metres (0 where it has none: those holes are filled from
    the nearest known pixel). Returns (completed depth (H, W) float32, {"validation_mae_m", "validation_rmse_m",
    "prior_validation_mae_m": the prior's own error on the held-out known pixels, "fitted_pixels"})."""
    config.validate()
    usable = (depth > 0) & (prior > 0)
    rows, cols = np.nonzero(usable)
    if len(rows) < 10:  # nothing to fit the prior to: the prior where it has depth, then the nearest pixel's
        return nearest_fill(np.where(depth > 0, depth, prior).astype(np.float32)), {"fitted_pixels": int(len(rows))}
    rng = np.random.default_rng(config.seed)
    pick = rng.permutation(len(rows))[:config.max_pixels]
    rows, cols = rows[pick], cols[pick]
    n_val = max(1, int(round(len(rows) * config.validation_fraction)))
    x = _features(prior, rgb, rows, cols)
    y = torch.from_numpy(np.log(depth[rows, cols] / prior[rows, cols]).astype(np.float32))
    mean, std = x[n_val:].mean(0), x[n_val:].std(0).clamp(min=1e-6)
    x = (x - mean) / std
    torch.manual_seed(config.seed)
    sizes = [x.shape[1], *config.hidden]
    layers: list[torch.nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [torch.nn.Linear(a, b), torch.nn.ReLU()]
    net = torch.nn.Sequential(*layers, torch.nn.Linear(sizes[-1], 1))
    torch.nn.init.zeros_(net[-1].weight)  # starts as the prior itself (log ratio 0)
    torch.nn.init.zeros_(net[-1].bias)
    train_x, train_y = x[n_val:], y[n_val:]
    generator = torch.Generator().manual_seed(config.seed)

    def batch_loss(_: float) -> tuple[torch.Tensor, dict]:
        rows_ = torch.randint(len(train_x), (min(config.batch_size, len(train_x)),), generator=generator)
        return torch.nn.functional.l1_loss(net(train_x[rows_])[:, 0], train_y[rows_]), {}

    with make_progress(show_progress) as progress:
        train_one_cycle([{"params": list(net.parameters())}], 0.0, config.steps,
                        (config.lr_max / 25, config.lr_max, config.lr_max / 1e3), batch_loss, lambda t: 0.0,
                        progress, "fitting depth", lambda loss, stats, _: f"L1 {loss:.4f}")
    with torch.no_grad():
        truth = depth[rows[:n_val], cols[:n_val]]
        val = prior[rows[:n_val], cols[:n_val]] * np.exp(net(x[:n_val])[:, 0].numpy())
        holes_r, holes_c = np.nonzero((depth <= 0) & (prior > 0))
        filled = depth.astype(np.float32).copy()
        if len(holes_r):
            xh = (_features(prior, rgb, holes_r, holes_c) - mean) / std
            filled[holes_r, holes_c] = prior[holes_r, holes_c] * np.exp(net(xh)[:, 0].numpy())
    stats = {"validation_mae_m": float(np.mean(np.abs(val - truth))),
             "validation_rmse_m": float(np.sqrt(np.mean((val - truth) ** 2))),
             "prior_validation_mae_m": float(np.mean(np.abs(prior[rows[:n_val], cols[:n_val]] - truth))),
             "fitted_pixels": int(len(rows) - n_val)}
    return nearest_fill(filled), stats


def punch_holes(depth: np.ndarray, fraction: float, rng: np.random.Generator, radius_range: tuple[float, float]
                ) -> np.ndarray:
    """(H, W) bool mask of known pixels (depth > 0) to remove for an evaluation: random discs of radius in
    radius_range (a fraction of the image's height) until `fraction` of the known pixels is covered, as holes of
    a sensor or a reconstruction are blobs rather than scattered pixels."""
    h, w = depth.shape
    known = depth > 0
    removed = np.zeros_like(known)
    v, u = np.mgrid[:h, :w]
    target = fraction * known.sum()
    while (removed & known).sum() < target:
        r = rng.uniform(*radius_range) * h
        cu, cv = rng.uniform(0, w), rng.uniform(0, h)
        removed |= (u - cu) ** 2 + (v - cv) ** 2 <= r * r
    return removed & known


def depth_errors(estimate: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> dict:
    """Errors of `estimate` against `truth` (both (H, W) metres) on the pixels of `mask`: MAE and RMSE in metres,
    absolute relative error, and the share within 1.25 of the truth (delta < 1.25)."""
    e, t = estimate[mask].astype(np.float64), truth[mask].astype(np.float64)
    ratio = np.maximum(e / t, t / np.maximum(e, 1e-9))
    return {"mae_m": float(np.mean(np.abs(e - t))), "rmse_m": float(np.sqrt(np.mean((e - t) ** 2))),
            "abs_rel": float(np.mean(np.abs(e - t) / t)), "delta_1.25": float(np.mean(ratio < 1.25)),
            "pixels": int(mask.sum())}


COMPLETION_METHODS = ("nearest", "prior", "regressor")
"""What evaluate_completion compares: nearest-neighbour filling, the map's depth as it is, the fitted regressor."""


def evaluate_completion(scene_map: SceneMap, frames: list[Frame], config: DepthCompletionConfig, fraction: float,
                        device: torch.device, seed: int = 0, show_progress: bool = True) -> dict:
    """The paper's protocol on frames with depth: remove `fraction` of each frame's known depth (punch_holes, discs
    of 3-12 % of the image height), fill the holes by each of COMPLETION_METHODS and score the removed pixels
    (depth_errors). Returns {"frames": per-frame rows, "mean": per method the mean of each error over frames}."""
    rng = np.random.default_rng(seed)
    rows = []
    with make_progress(show_progress) as progress:
        task = progress.add_task("depth completion", total=len(frames), info="")
        for frame in frames:
            truth, rgb = frame.load_depth(), frame.load_rgb()
            if not (truth > 0).any():
                progress.update(task, advance=1, info="no depth: skipped")
                continue
            removed = punch_holes(truth, fraction, rng, (0.03, 0.12))
            holed = np.where(removed, 0.0, truth).astype(np.float32)
            prior = map_depth(scene_map, rgb, frame.camera, frame.cam_from_world, device)
            completed, stats = complete_depth(holed, rgb, prior, config)
            estimates = {"nearest": nearest_fill(holed), "prior": np.where(prior > 0, prior, nearest_fill(holed)),
                         "regressor": completed}
            rows.append({"frame": frame.name, **{m: depth_errors(estimates[m], truth, removed)
                                                 for m in COMPLETION_METHODS}, "fit": stats})
            progress.update(task, advance=1, info=f"MAE {rows[-1]['regressor']['mae_m'] * 100:.1f} cm")
    if not rows:
        raise InputError(frames[0].depth_path if frames else None, "no frame has any valid depth to evaluate")
    keys = ("mae_m", "rmse_m", "abs_rel", "delta_1.25")
    mean = {m: {k: float(np.mean([r[m][k] for r in rows])) for k in keys} for m in COMPLETION_METHODS}
    return {"fraction_removed": fraction, "frames": rows, "mean": mean}


def completion_markdown(result: dict, title: str) -> str:
    """evaluate_completion's means as a markdown table."""
    lines = [f"# Depth completion: {title}", "",
             f"{len(result['frames'])} frames, {result['fraction_removed']:.0%} of each frame's known depth removed "
             "in discs and filled again; errors on the removed pixels (means over frames).", "",
             "| method | MAE (cm) | RMSE (cm) | Abs Rel | delta < 1.25 |", "|---|--:|--:|--:|--:|"]
    for method, m in result["mean"].items():
        lines.append(f"| {method} | {m['mae_m'] * 100:.2f} | {m['rmse_m'] * 100:.2f} | {m['abs_rel']:.4f} | "
                     f"{m['delta_1.25']:.3f} |")
    return "\n".join(lines) + "\n"
