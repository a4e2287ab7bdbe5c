"""Render a synthetic room along its mapping and query paths into an ACE-style folder, and named presets.

Layout (frame names "frame-000000", numbered from 0 in each split):
    out_dir/train|test/rgb/<name>.color.png                 8-bit RGB PNG
    out_dir/train|test/poses/<name>.pose.txt                4x4 camera-to-world matrix, 4 lines of numbers
    out_dir/train|test/calibration/<name>.calibration.txt   3x3 K, 3 lines of numbers
    out_dir/train|test/depth/<name>.depth.png               uint16 millimetres, 0 = invalid
train/ holds the mapping path, test/ the query path."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from rich.progress import track

from sceneloc.data.synthetic.render import RenderedView, render_view
from sceneloc.data.synthetic.room import Room, RoomConfig, generate_room
from sceneloc.data.synthetic.trajectory import TrajectoryConfig, mapping_trajectory, query_trajectory
from sceneloc.data.ace_folder import write_ace_frame
from sceneloc.errors import InputError
from sceneloc.geometry import Camera, Rigid3

SPLITS = ("train", "test")
SUBFOLDERS = {"rgb": ".color.png", "poses": ".pose.txt", "calibration": ".calibration.txt", "depth": ".depth.png"}
"""Sub-folder of each split -> file suffix after the frame name."""


@dataclass(frozen=True)
class SyntheticSceneConfig:
    """Everything that defines a rendered synthetic scene. The one seed is room.seed (room, textures, lights and
    both camera paths)."""

    room: RoomConfig = field(default_factory=RoomConfig)
    """The room generator's parameters, including the seed."""
    trajectory: TrajectoryConfig = field(default_factory=TrajectoryConfig)
    """Shape of the mapping and query paths."""
    width: int = 320
    """Image width in pixels."""
    height: int = 240
    """Image height in pixels."""
    hfov_deg: float = 60.0
    """Horizontal field of view, which sets fx."""
    fy_over_fx: float = 1.01
    """fy / fx: slightly off 1 so that code assuming square pixels is caught."""
    principal_offset_px: tuple[float, float] = (3.0, -2.0)
    """(cx, cy) minus the image centre ((width - 1) / 2, (height - 1) / 2), in pixels."""
    n_map: int = 200
    """Frames rendered along the mapping path (train/)."""
    n_query: int = 50
    """Frames rendered along the query path (test/)."""
    supersampling: int = 2
    """Colour rays per pixel along each axis (anti-aliasing)."""

    def __post_init__(self):
        if self.width < 8 or self.height < 8:
            raise InputError(None, f"image size {self.width}x{self.height} is too small (at least 8x8)")
        if not 1.0 <= self.hfov_deg <= 170.0:
            raise InputError(None, f"hfov_deg must be in [1, 170], got {self.hfov_deg}")
        if self.n_map < 1 or self.n_query < 1:
            raise InputError(None, f"n_map and n_query must be >= 1, got {self.n_map} and {self.n_query}")

    def camera(self) -> Camera:
        """The pinhole camera of every frame."""
        fx = self.width / 2 / np.tan(np.radians(self.hfov_deg) / 2)
        return Camera(self.width, self.height, float(fx), float(fx * self.fy_over_fx),
                      (self.width - 1) / 2 + self.principal_offset_px[0],
                      (self.height - 1) / 2 + self.principal_offset_px[1])

    def with_seed(self, seed: int) -> "SyntheticSceneConfig":
        """The same configuration for another room and paths."""
        return replace(self, room=replace(self.room, seed=seed))


PRESETS: dict[str, SyntheticSceneConfig] = {
    "tiny-room": SyntheticSceneConfig(width=160, height=120, principal_offset_px=(1.5, -1.0), n_map=60, n_query=20),
    "quick-room": SyntheticSceneConfig(width=320, height=240, principal_offset_px=(3.0, -2.0), n_map=300, n_query=50),
    "bench-room": SyntheticSceneConfig(width=640, height=480, principal_offset_px=(6.0, -4.0), n_map=1000,
                                       n_query=200),
}
"""Named scenes: tiny-room for unit tests, quick-room for `make demo` and the quick benchmark suite, bench-room
for the 1,000-frame speed benchmark. All share the
default room (seed 0) and paths, a 60-degree horizontal field of view and fy = 1.01 fx."""


@dataclass
class SyntheticScene:
    """What render_scene_to_folder wrote: the folder, the camera, the room (its mesh is the ground-truth
    geometry) and the cam_from_world pose of each train and test frame, in frame order."""

    root: Path
    camera: Camera
    room: Room
    mapping: list[Rigid3]
    query: list[Rigid3]


def frame_name(index: int) -> str:
    """"frame-000042" for index 42."""
    return f"frame-{index:06d}"


def write_frame(split_dir: Path, name: str, camera: Camera, cam_from_world: Rigid3, view: RenderedView) -> None:
    """Write one rendered frame's four files (rgb, pose, calibration, depth) into the ACE folder split_dir."""
    write_ace_frame(split_dir, name, view.rgb, camera, cam_from_world, view.depth)


def _prepare(out_dir: Path, overwrite: bool) -> None:
    """Create the split folders. Existing frame files are an error unless `overwrite`, which deletes them (only
    files named like ours, in our sub-folders) so that a smaller scene leaves no stale frames behind."""
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(out_dir, "exists and is not a folder")
    for split in SPLITS:
        for sub, suffix in SUBFOLDERS.items():
            folder = out_dir / split / sub
            old = sorted(folder.glob(f"frame-*{suffix}")) if folder.is_dir() else []
            if old and not overwrite:
                raise InputError(folder, f"already holds {len(old)} frames (pass overwrite to replace them)")
            for path in old:
                path.unlink()
            folder.mkdir(parents=True, exist_ok=True)


def render_scene_to_folder(config: SyntheticSceneConfig, out_dir: str | Path, overwrite: bool = False,
                           progress: bool = True) -> SyntheticScene:
    """Generate the room of `config`, render config.n_map mapping frames into out_dir/train and config.n_query
    query frames into out_dir/test (layout in the module docstring), with a progress bar unless progress=False."""
    out_dir = Path(out_dir)
    _prepare(out_dir, overwrite)
    camera = config.camera()
    room = generate_room(config.room)
    mapping = mapping_trajectory(room, config.n_map, config.room.seed, config.trajectory)
    query = query_trajectory(room, config.n_query, config.room.seed, config.trajectory)
    jobs = [(split, i, pose) for split, poses in zip(SPLITS, (mapping, query)) for i, pose in enumerate(poses)]
    for split, i, pose in track(jobs, description=f"Rendering {out_dir.name}", disable=not progress):
        view = render_view(room, camera, pose, config.supersampling)
        write_frame(out_dir / split, frame_name(i), camera, pose, view)
    return SyntheticScene(root=out_dir, camera=camera, room=room, mapping=mapping, query=query)
