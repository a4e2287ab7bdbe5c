"""Hand-held-like camera paths through a synthetic room: one mapping loop and a query path that stays close to it.

The mapping path is a closed loop around the middle of the room's path area (the floor, less a staircase's strip:
an ellipse kept `wall_margin_m` from the area's edges, its radius wobbling smoothly); the heading swings smoothly
around "facing the nearest wall" (optionally turned towards the room's focus, its staircase), pitch and roll drift,
and a small fast shake is added. The query path follows the same loop with a different phase and its own smooth
offsets in position, height, heading and pitch, so it sees what the mapping frames saw from nearby but different
viewpoints. Every pose is checked (inside the room, outside furniture, clear of surfaces, the image centre not too
close); a path that fails is drawn again."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import open3d as o3d
from scipy.interpolate import CubicSpline

from sceneloc.data.synthetic.room import Room
from sceneloc.runtime.errors import InputError
from sceneloc.geometry import Rigid3

LOOP_CHECK_SAMPLES = 720
"""Poses at which a mapping loop is checked before use."""


@dataclass(frozen=True)
class TrajectoryConfig:
    """Shape of the mapping and query paths (metres, degrees)."""

    wall_margin_m: float = 1.1
    """Distance of the mapping loop from the walls (before its radius wobble)."""
    radius_wobble: float = 0.1
    """Relative smooth variation of the loop's radius."""
    height_range_m: tuple[float, float] = (1.2, 1.8)
    """Camera height above the floor."""
    yaw_swing_deg: float = 110.0
    """The heading swings up to this far either side of facing away from the room's centre."""
    pitch_range_deg: tuple[float, float] = (-30.0, 5.0)
    """Camera pitch (negative looks down)."""
    roll_max_deg: float = 5.0
    """Largest camera roll either way."""
    n_control: int = 8
    """Control points per loop of the smooth splines (more = livelier motion)."""
    shake_m: float = 0.01
    """Amplitude of the fast hand-held shake in position."""
    shake_deg: float = 0.8
    """Amplitude of the fast hand-held shake in orientation."""
    query_offset_m: float = 0.25
    """Largest sideways (radial) offset of the query path from the mapping loop."""
    query_height_m: float = 0.15
    """Largest height offset of the query path from the mapping path (kept within height_range_m)."""
    query_yaw_deg: float = 30.0
    """Largest heading offset of the query path from the mapping heading at the same place."""
    query_pitch_deg: float = 8.0
    """Largest pitch offset of the query path from the mapping pitch."""
    min_clearance_m: float = 0.3
    """Smallest distance from a camera centre to any surface."""
    min_centre_depth_m: float = 0.5
    """Smallest distance along the optical axis to the surface seen at the image centre."""
    max_attempts: int = 50
    """Paths drawn before giving up (the room is then too small or cluttered for this configuration)."""
    focus_weight: float = 0.0
    """How far the heading the yaw swings around turns from facing away from the path area's centre (0) towards
    the room's focus (1, see Room.focus_xy): the unit directions are blended with this weight. Values within 0.1
    of 0.5 are refused: where the two directions are opposite they would cancel."""

    def __post_init__(self):
        if not 0.0 <= self.focus_weight <= 1.0 or abs(self.focus_weight - 0.5) < 0.1:
            raise InputError(None, f"focus_weight must be in [0, 0.4] or [0.6, 1], got {self.focus_weight}")


def _periodic_spline(rng: np.random.Generator, n: int, low: float, high: float) -> CubicSpline:
    """A smooth periodic function on [0, 1) through n random values in [low, high]."""
    values = rng.uniform(low, high, n)
    return CubicSpline(np.linspace(0.0, 1.0, n + 1), np.append(values, values[0]), bc_type="periodic")


def _poses(centres: np.ndarray, yaw: np.ndarray, pitch: np.ndarray, roll: np.ndarray) -> list[Rigid3]:
    """cam_from_world poses from world camera centres (N, 3) and yaw/pitch/roll (N,) radians, world z up: yaw turns
    the optical axis about z from +x, pitch raises it, roll turns the image about it."""
    forward = np.stack([np.cos(pitch) * np.cos(yaw), np.cos(pitch) * np.sin(yaw), np.sin(pitch)], 1)
    right = np.cross(forward, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right, axis=1, keepdims=True)
    down = np.cross(forward, right)
    c, s = np.cos(roll)[:, None], np.sin(roll)[:, None]
    world_from_cam = np.stack([c * right + s * down, c * down - s * right, forward], 2)
    return [Rigid3(r.T, -r.T @ t) for r, t in zip(world_from_cam, centres)]


def _all_valid(room: Room, poses: list[Rigid3], config: TrajectoryConfig) -> bool:
    """Every camera free, clear of surfaces by min_clearance_m, and seeing its image centre at least
    min_centre_depth_m away."""
    centres = np.array([p.center for p in poses])
    if not room.is_free(centres).all() or room.distance_to_surface(centres).min() < config.min_clearance_m:
        return False
    rays = np.concatenate([centres, np.array([p.rotation[2] for p in poses])], 1).astype(np.float32)
    depth = room.scene.cast_rays(o3d.core.Tensor(rays))["t_hit"].numpy()
    return bool(np.all(depth >= config.min_centre_depth_m))


@dataclass(frozen=True)
class _Loop:
    """The smooth mapping loop, as functions of the loop parameter s in [0, 1)."""

    room: Room
    config: TrajectoryConfig
    radius: CubicSpline
    height: CubicSpline
    yaw: CubicSpline
    pitch: CubicSpline
    roll: CubicSpline
    shake: list[CubicSpline]
    """Six fast splines: x, y, z shake (metres) and yaw, pitch, roll shake (radians)."""

    @staticmethod
    def draw(room: Room, config: TrajectoryConfig, rng: np.random.Generator) -> "_Loop":
        n = config.n_control
        swing, roll = np.radians(config.yaw_swing_deg), np.radians(config.roll_max_deg)
        shake = ([_periodic_spline(rng, 6 * n, -config.shake_m, config.shake_m) for _ in range(3)] +
                 [_periodic_spline(rng, 6 * n, -np.radians(config.shake_deg), np.radians(config.shake_deg))
                  for _ in range(3)])
        return _Loop(room, config, _periodic_spline(rng, n, 1 - config.radius_wobble, 1 + config.radius_wobble),
                     _periodic_spline(rng, n, *config.height_range_m), _periodic_spline(rng, n, -swing, swing),
                     _periodic_spline(rng, n, *np.radians(config.pitch_range_deg)),
                     _periodic_spline(rng, n, -roll, roll), shake)

    def centres(self, s: np.ndarray) -> np.ndarray:
        """(N,) loop parameters -> (N, 3) camera centres without shake."""
        middle, half = _path_middle(self.room)
        axes = half - self.config.wall_margin_m
        angle = 2 * np.pi * s
        xy = middle + np.stack([np.cos(angle), np.sin(angle)], 1) * axes * self.radius(s % 1.0)[:, None]
        z = np.clip(self.height(s % 1.0), *self.config.height_range_m)
        return np.column_stack([xy, z])

    def outward_yaw(self, s: np.ndarray) -> np.ndarray:
        """(N,) heading that faces away from the path area's centre."""
        d = self.centres(s)[:, :2] - _path_middle(self.room)[0]
        return np.arctan2(d[:, 1], d[:, 0])

    def heading(self, s: np.ndarray) -> np.ndarray:
        """(N,) heading the yaw swings around: outward_yaw turned focus_weight of the way towards the room's
        focus (exactly outward_yaw for weight 0)."""
        outward = self.outward_yaw(s)
        w = self.config.focus_weight
        if w == 0:
            return outward
        out = np.stack([np.cos(outward), np.sin(outward)], 1)
        to_focus = self.room.focus_xy - self.centres(s)[:, :2]
        blend = (1 - w) * out + w * to_focus / np.linalg.norm(to_focus, axis=1, keepdims=True)
        # The signed angle from outward to the blend (within +-180 degrees, the blend never vanishes), added to
        # outward: continuous wherever outward_yaw is.
        turn = np.arctan2(out[:, 0] * blend[:, 1] - out[:, 1] * blend[:, 0], np.einsum("ij,ij->i", out, blend))
        return outward + turn

    def shaken(self, s: np.ndarray, centres: np.ndarray, yaw: np.ndarray, pitch: np.ndarray,
               roll: np.ndarray) -> list[Rigid3]:
        """Add the fast shake and build the poses."""
        u = s % 1.0
        centres = centres + np.stack([f(u) for f in self.shake[:3]], 1)
        return _poses(centres, yaw + self.shake[3](u), pitch + self.shake[4](u), roll + self.shake[5](u))


def _path_middle(room: Room) -> tuple[np.ndarray, np.ndarray]:
    """(2,) centre and (2,) half extent of the room's path area."""
    low, high = room.path_area
    half = (high - low) / 2
    return low + half, half


def _check(room: Room, n_frames: int, config: TrajectoryConfig) -> None:
    if n_frames < 1:
        raise InputError(None, f"a trajectory needs at least one frame, got {n_frames}")
    if np.any(_path_middle(room)[1] - config.wall_margin_m < 0.2):
        width, length = room.path_area[1] - room.path_area[0]
        raise InputError(None, f"floor area {width:.2f} x {length:.2f} m of room {room.size.round(2).tolist()} m "
                               f"is too small for a camera loop {config.wall_margin_m} m from its edges")
    if config.focus_weight > 0 and room.focus_xy is None:
        raise InputError(None, "focus_weight > 0 needs a room with a focus (a staircase)")


def _give_up(room: Room, what: str, config: TrajectoryConfig) -> InputError:
    return InputError(None, f"no valid {what} path found in {config.max_attempts} attempts: room "
                            f"{room.size.round(2).tolist()} m (seed {room.config.seed}) is too small or cluttered")


def _mapping_loop(room: Room, seed: int, config: TrajectoryConfig) -> tuple[_Loop, float]:
    """The first drawn loop (and its start phase) that is valid all along (checked at LOOP_CHECK_SAMPLES poses,
    about a centimetre apart, so the frames drawn from it do not depend on how many there are)."""
    rng = np.random.default_rng([seed, 0])
    for _ in range(config.max_attempts):
        loop, phase = _Loop.draw(room, config, rng), rng.uniform()
        if _all_valid(room, _mapping_poses(loop, phase, LOOP_CHECK_SAMPLES), config):
            return loop, phase
    raise _give_up(room, "mapping", config)


def _mapping_poses(loop: _Loop, phase: float, n_frames: int) -> list[Rigid3]:
    s = phase + np.arange(n_frames) / n_frames
    u = s % 1.0
    return loop.shaken(s, loop.centres(s), loop.heading(s) + loop.yaw(u), loop.pitch(u), loop.roll(u))


def mapping_trajectory(room: Room, n_frames: int, seed: int,
                       config: TrajectoryConfig = TrajectoryConfig()) -> list[Rigid3]:
    """n_frames cam_from_world poses evenly along one mapping loop (deterministic in seed)."""
    _check(room, n_frames, config)
    loop, phase = _mapping_loop(room, seed, config)
    return _mapping_poses(loop, phase, n_frames)


def query_trajectory(room: Room, n_frames: int, seed: int,
                     config: TrajectoryConfig = TrajectoryConfig()) -> list[Rigid3]:
    """n_frames cam_from_world poses along a path near the mapping loop of the same seed, with its own phase and
    smooth offsets (up to query_offset_m sideways, query_height_m up/down, query_yaw_deg / query_pitch_deg in
    heading / pitch) and its own roll and shake."""
    _check(room, n_frames, config)
    loop, phase = _mapping_loop(room, seed, config)
    rng = np.random.default_rng([seed, 1])
    n = config.n_control
    yaw_off, pitch_off = np.radians(config.query_yaw_deg), np.radians(config.query_pitch_deg)
    roll = np.radians(config.roll_max_deg)
    for _ in range(config.max_attempts):
        radial = _periodic_spline(rng, n, -config.query_offset_m, config.query_offset_m)
        height = _periodic_spline(rng, n, -config.query_height_m, config.query_height_m)
        d_yaw, d_pitch = _periodic_spline(rng, n, -yaw_off, yaw_off), _periodic_spline(rng, n, -pitch_off, pitch_off)
        q_roll = _periodic_spline(rng, n, -roll, roll)
        s = phase + rng.uniform() + (np.arange(n_frames) + 0.5) / n_frames
        u = s % 1.0
        centres = loop.centres(s)
        outward = loop.outward_yaw(s)
        centres[:, :2] += radial(u)[:, None] * np.stack([np.cos(outward), np.sin(outward)], 1)
        centres[:, 2] = np.clip(centres[:, 2] + height(u), *config.height_range_m)
        # The shake splines are the mapping loop's; shifting their parameter decorrelates the query's shake.
        poses = loop.shaken(s + 0.5 / n, centres, loop.heading(s) + loop.yaw(u) + d_yaw(u),
                            loop.pitch(u) + d_pitch(u), q_roll(u))
        if _all_valid(room, poses, config):
            return poses
    raise _give_up(room, "query", config)
