"""Render a synthetic room along its mapping and query paths into an ACE-style folder, and named presets.

Layout (frame names "frame-000000", numbered from 0 in each split):
    out_dir/train|test/rgb/<name>.color.png                 8-bit RGB PNG
    out_dir/train|test/poses/<name>.pose.txt                4x4 camera-to-world matrix, 4 lines of numbers
    out_dir/train|test/calibration/<name>.calibration.txt   3x3 K, 3 lines of numbers
    out_dir/train|test/depth/<name>.depth.png               uint16 millimetres, 0 = invalid
    out_dir/mesh.ply                                        the scene's ground-truth geometry
train/ holds the mapping path, test/ the query path. mesh.ply is the room's triangle mesh (Room.mesh as binary PLY:
vertex positions in metres in the world frame of the poses, four vertices and two triangles per planar face, no
colours; a "label" property per vertex, the index of its face's class in room.SEMANTIC_CLASSES): the reference for
evaluating reconstructed point clouds and meshes, and their semantic labels."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from rich.progress import track

from sceneloc.data.mesh_file import write_mesh as write_mesh_file
from sceneloc.data.synthetic.render import RenderedView, render_view
from sceneloc.data.synthetic.room import Room, RoomConfig, StaircaseConfig, generate_room
from sceneloc.data.synthetic.trajectory import TrajectoryConfig, mapping_trajectory, query_trajectory
from sceneloc.runtime.atomic import check_writable
from sceneloc.data.ace_folder import WRITTEN_FILES, folders_removed_on_failure, write_ace_frame
from sceneloc.runtime.errors import InputError
from sceneloc.geometry import Camera, Rigid3

SPLITS = ("train", "test")
MESH_FILE = "mesh.ply"


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


_STANDARD = dict(width=640, height=480, principal_offset_px=(6.0, -4.0), n_map=400, n_query=100)
"""What the four standard benchmark scenes share: VGA images and modest frame counts (a benchmark on 2 cores)."""

PRESETS: dict[str, SyntheticSceneConfig] = {
    "tiny-room": SyntheticSceneConfig(width=160, height=120, principal_offset_px=(1.5, -1.0), n_map=60, n_query=20),
    "quick-room": SyntheticSceneConfig(width=320, height=240, principal_offset_px=(3.0, -2.0), n_map=300, n_query=200),
    "bench-room": SyntheticSceneConfig(width=640, height=480, principal_offset_px=(6.0, -4.0), n_map=1000,
                                       n_query=200),
    "office": SyntheticSceneConfig(
        room=RoomConfig(seed=1, size_min=(5.0, 6.0, 2.6), size_max=(6.0, 7.0, 3.0), n_wall_blocks=10,
                        n_island_blocks=3, tile_size_range=(0.5, 0.9)),
        **_STANDARD),
    "stairs": SyntheticSceneConfig(
        room=RoomConfig(seed=2, size_min=(5.0, 7.0, 3.6), size_max=(5.6, 7.6, 4.0), n_wall_blocks=3,
                        n_island_blocks=0, staircase=StaircaseConfig()),
        trajectory=TrajectoryConfig(focus_weight=0.9, yaw_swing_deg=45.0), **_STANDARD),
    "lowtex": SyntheticSceneConfig(room=RoomConfig(seed=3, texture_contrast=0.12, n_textured_spots=5), **_STANDARD),
    "hall": SyntheticSceneConfig(
        room=RoomConfig(seed=4, size_min=(13.0, 8.5, 3.8), size_max=(14.5, 9.5, 4.2), n_wall_blocks=14,
                        n_island_blocks=4, n_lights=6, ambient=0.55),
        trajectory=TrajectoryConfig(wall_margin_m=1.8, yaw_swing_deg=150.0), **{**_STANDARD, "n_map": 500}),
}
"""Named scenes, all with a 60-degree horizontal field of view and fy = 1.01 fx.
- tiny-room: unit tests; quick-room: `make demo` and the quick benchmark suite; bench-room: the 1,000-frame speed
  benchmark. They share the default room (seed 0) and paths.
- The standard suite's procedural scenes, 640x480, 400 mapping + 100 query frames (hall: 500 + 100), each hard in
  its own way:
  office: a richly textured office (5-6 x 6-7 x 2.6-3 m) crowded with furniture (10 wall blocks and 3 tables
    asked for; 11 fit in seed 1) and small distinct texture tiles (0.5-0.9 m): the well-textured reference, but
    cluttered, with many occlusions and close-ups.
  stairs: a 3.6-4 m high stairwell with a 10-step staircase whose risers all show one texture and treads another,
    the cameras turned towards it (it fills over a tenth of most frames): genuinely repeated structure, as in
    7-Scenes' Stairs, where one step looks like the next and only the ends, sides and surroundings of the stairs
    tell the steps apart.
  lowtex: a default-sized room whose textures keep 12% of their contrast (grey-level gradients of about 1 to 4)
    with five full-contrast posters and rugs: few features, most of each image barely textured.
  hall: a 13-14.5 x 8.5-9.5 x 3.8-4.2 m hall, its loop 1.8 m from the walls so that the camera crosses about 11 x
    6 m, headings swinging up to 150 degrees from facing the nearest wall: depths from 1 to 14 m (little texture
    detail per pixel far away), large viewpoint and scale changes along the loop."""


def parse_scene_name(name: str) -> tuple[str, int]:
    """"office:30" -> ("office", 30): a preset of PRESETS and a seed, as the trained models' --scenes name their
    generated rooms. ValueError for anything else."""
    preset, _, seed = name.partition(":")
    if preset not in PRESETS or not seed.isdigit():
        raise ValueError(f"scene {name!r} is not preset:seed with a preset of {', '.join(PRESETS)}")
    return preset, int(seed)


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


def write_mesh(path: Path, room: Room) -> None:
    """Write the room's triangle mesh (Room.mesh) to the PLY file `path`, atomically, with the semantic class of
    each vertex (every face has four vertices of its own, so a vertex's label is its face's)."""
    write_mesh_file(path, room.mesh(), np.repeat(room.face_labels, 4))


def _folders(out_dir: Path) -> list[Path]:
    """The sub-folders render_scene_to_folder writes frames into."""
    return [out_dir / split / sub for split in SPLITS for sub in WRITTEN_FILES]


def _prepare(out_dir: Path, overwrite: bool) -> None:
    """Check, before any rendering, that out_dir can be written. Existing frame files are an error unless
    `overwrite`, which deletes them (only files named like ours, in our sub-folders) so that a smaller scene leaves
    no stale frames behind."""
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(out_dir, "exists and is not a folder")
    check_writable(out_dir / MESH_FILE)
    for split in SPLITS:
        for sub, suffix in WRITTEN_FILES.items():
            folder = out_dir / split / sub
            old = sorted(folder.glob(f"frame-*{suffix}")) if folder.is_dir() else []
            if old and not overwrite:
                raise InputError(folder, f"already holds {len(old)} frames (pass overwrite to replace them)")
            for path in old:
                path.unlink()


def render_scene_to_folder(config: SyntheticSceneConfig, out_dir: str | Path, overwrite: bool = False,
                           progress: bool = True) -> SyntheticScene:
    """Generate the room of `config`, render config.n_map mapping frames into out_dir/train and config.n_query query
    frames into out_dir/test, then write its mesh to out_dir/mesh.ply (layout in the module docstring), with a
    progress bar unless progress=False. Every file is written atomically; on a failure the folders this call
    created are removed again, and the mesh, written last, is only there for a whole scene. Raises InputError
    when out_dir cannot be written or holds frames (unless overwrite)."""
    out_dir = Path(out_dir)
    _prepare(out_dir, overwrite)
    camera = config.camera()
    with folders_removed_on_failure(_folders(out_dir)):
        room = generate_room(config.room)
        mapping = mapping_trajectory(room, config.n_map, config.room.seed, config.trajectory)
        query = query_trajectory(room, config.n_query, config.room.seed, config.trajectory)
        jobs = [(split, i, pose) for split, poses in zip(SPLITS, (mapping, query)) for i, pose in enumerate(poses)]
        for split, i, pose in track(jobs, description=f"Rendering {out_dir.name}", disable=not progress):
            view = render_view(room, camera, pose, config.supersampling)
            write_frame(out_dir / split, frame_name(i), camera, pose, view)
        write_mesh(out_dir / MESH_FILE, room)
    return SyntheticScene(root=out_dir, camera=camera, room=room, mapping=mapping, query=query)
