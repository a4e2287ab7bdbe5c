"""The BundleFusion "copyroom" scan rendered along its real hand-held trajectory into an ACE root.

Input folder (data_dir): copyroom_c2000_opt_1024.obj (+ .mtl + texture atlas .jpg) and copyroom_gt_poses.zip,
which holds one `frame-XXXXXX.pose.txt` per captured frame (4x4 camera-to-world, OpenCV axes, metres, in the
mesh's world frame) and the sensor's info.txt (colour image size and intrinsics).

Split: the mapping part is the frames before map_fraction of the capture, the query part the frames from
gap_frames after it to the end (the operator walks on, so no query frame is a neighbour of a mapping frame; the
path circles the room twice, so the query part sees what the mapping part mapped). Each part is subsampled evenly
in frame order; frames whose pose is not a rigid transform are skipped.

Output (out_dir, an ACE root): train/ (mapping) and test/ (query), each rgb/, poses/, calibration/, depth/ as
written by write_ace_frame, frames named by their capture index (frame-000123), and mesh.ply: the scan's
untextured surface in the world frame of the poses.
"""

from __future__ import annotations

import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import open3d as o3d

from sceneloc.runtime.atomic import atomic_output, check_writable
from sceneloc.data.ace_folder import folders_removed_on_failure, write_ace_frame
from sceneloc.data.scan_render import load_textured_mesh, render_scan
from sceneloc.data.synthetic.folder import MESH_FILE, frame_name
from sceneloc.runtime.errors import InputError
from sceneloc.geometry import Camera, Rigid3
from sceneloc.runtime.progress import make_progress

SCAN_FILE = "copyroom_c2000_opt_1024.obj"
"""The textured scan; its .mtl names the atlas image."""
POSES_ZIP = "copyroom_gt_poses.zip"
INPUT_FILES = (SCAN_FILE, "copyroom_c2000_opt_1024.mtl", "copyroom_c2000_opt_0_1024.jpg", POSES_ZIP)
"""Every file of data_dir the scene is made from."""
_POSE_NAME = re.compile(r"(?:^|/)frame-(\d+)\.pose\.txt$")


@dataclass(frozen=True)
class CopyroomConfig:
    """How the scan is split and rendered."""

    n_map: int = 500
    """Mapping frames (train/), evenly spaced over the mapping part of the trajectory."""
    n_query: int = 100
    """Query frames (test/), evenly spaced over the query part."""
    map_fraction: float = 0.75
    """Fraction of the capture (by frame index) that forms the mapping part."""
    gap_frames: int = 150
    """Captured frames between the mapping and the query part that neither uses (5 s at 30 Hz)."""
    width: int = 640
    """Image width; the sensor's intrinsics are scaled from its 640x480."""
    height: int = 480
    """Image height."""
    supersampling: int = 2
    """Colour rays per pixel along each axis (anti-aliasing)."""

    def __post_init__(self):
        if self.n_map < 1 or self.n_query < 1:
            raise InputError(None, f"n_map and n_query must be >= 1, got {self.n_map} and {self.n_query}")
        if not 0.0 < self.map_fraction < 1.0 or self.gap_frames < 0:
            raise InputError(None, f"map_fraction must be in (0, 1) and gap_frames >= 0, got {self.map_fraction} "
                                   f"and {self.gap_frames}")
        if self.width < 8 or self.height < 8 or self.supersampling < 1:
            raise InputError(None, f"image size {self.width}x{self.height} must be at least 8x8 and supersampling "
                                   f">= 1, got {self.supersampling}")


@dataclass
class Trajectory:
    """The captured trajectory: the sensor's camera and the valid pose of each frame."""

    camera: Camera
    """The colour camera of info.txt, at its native size."""
    poses: dict[int, Rigid3]
    """Frame index -> cam_from_world, for the frames whose pose is a rigid transform."""
    invalid: list[int]
    """Frame indices whose pose file is not a rigid transform (NaN / '-1.#IND' rows, non-orthonormal), sorted."""

    @property
    def n_frames(self) -> int:
        """Frames with a pose file, valid or not."""
        return len(self.poses) + len(self.invalid)


@dataclass
class CopyroomScene:
    """What write_copyroom_scene wrote."""

    root: Path
    camera: Camera
    """The camera of every rendered frame."""
    mapping: list[int]
    """Capture indices of the train/ frames, ascending."""
    query: list[int]
    """Capture indices of the test/ frames, ascending."""
    skipped: list[int]
    """Capture indices whose pose was invalid (never rendered)."""


def _read_info(text: str, path: Path) -> Camera:
    """The colour camera of a BundleFusion info.txt ("key = values" lines)."""
    fields = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
    fields = {key.strip(): value.split() for key, value in fields.items()}
    try:
        width, height = int(fields["m_colorWidth"][0]), int(fields["m_colorHeight"][0])
        k = np.array(fields["m_calibrationColorIntrinsic"], dtype=np.float64).reshape(4, 4)
    except (KeyError, IndexError, ValueError) as error:
        raise InputError(path, f"info.txt lacks a readable m_colorWidth, m_colorHeight or 4x4 "
                               f"m_calibrationColorIntrinsic ({error.__class__.__name__}: {error})") from None
    if not (width > 0 and height > 0 and k[0, 0] > 0 and k[1, 1] > 0):
        raise InputError(path, f"info.txt gives an invalid colour camera {width}x{height}, K = {k[:3, :3].tolist()}")
    return Camera(width, height, float(k[0, 0]), float(k[1, 1]), float(k[0, 2]), float(k[1, 2]))


def _read_pose(text: str) -> Rigid3 | None:
    """cam_from_world of a camera-to-world pose file, None when it is not 16 numbers forming a rigid transform."""
    try:
        values = np.array(text.split(), dtype=np.float64)
        return Rigid3.from_matrix(values.reshape(4, 4)).inverse()
    except ValueError:
        return None


def read_trajectory(zip_path: str | Path) -> Trajectory:
    """The poses zip -> Trajectory. Invalid poses are listed, not raised. Raises InputError when the zip is missing
    or unreadable, lacks info.txt, or holds no valid pose."""
    zip_path = Path(zip_path)
    try:
        with zipfile.ZipFile(zip_path) as archive:
            names = archive.namelist()
            info = [n for n in names if n == "info.txt" or n.endswith("/info.txt")]
            if not info:
                raise InputError(zip_path, "holds no info.txt (the sensor's image size and intrinsics)")
            camera = _read_info(archive.read(info[0]).decode(errors="replace"), zip_path)
            poses, invalid = {}, []
            for name in names:
                match = _POSE_NAME.search(name)
                if match is None:
                    continue
                pose = _read_pose(archive.read(name).decode(errors="replace"))
                if pose is None:
                    invalid.append(int(match.group(1)))
                else:
                    poses[int(match.group(1))] = pose
    except (OSError, zipfile.BadZipFile, zipfile.LargeZipFile) as error:
        raise InputError(zip_path, f"cannot read the zip ({error.__class__.__name__}: {error})") from None
    if not poses:
        raise InputError(zip_path, f"holds no valid frame-XXXXXX.pose.txt ({len(invalid)} invalid)")
    return Trajectory(camera, dict(sorted(poses.items())), sorted(invalid))


def _evenly(indices: list[int], count: int) -> list[int]:
    """`count` of the sorted `indices`, evenly spaced, first and last included."""
    picks = np.round(np.linspace(0, len(indices) - 1, count)).astype(int)
    return [indices[i] for i in picks]


def split_trajectory(trajectory: Trajectory, config: CopyroomConfig, source: Path | None = None
                     ) -> tuple[list[int], list[int]]:
    """(mapping, query) capture indices, ascending, as the module docstring describes. Raises InputError (naming
    `source`) when a part has fewer valid poses than requested."""
    last = max(max(trajectory.poses), max(trajectory.invalid, default=0))
    cut = int(round(config.map_fraction * (last + 1)))
    parts = ([i for i in trajectory.poses if i < cut], [i for i in trajectory.poses if i >= cut + config.gap_frames])
    for what, part, count in (("mapping", parts[0], config.n_map), ("query", parts[1], config.n_query)):
        if len(part) < count:
            raise InputError(source, f"the {what} part has {len(part)} valid poses, fewer than the {count} asked for "
                                     f"(map_fraction={config.map_fraction}, gap_frames={config.gap_frames})")
    return _evenly(parts[0], config.n_map), _evenly(parts[1], config.n_query)


def _write_mesh(mesh: o3d.geometry.TriangleMesh, path: Path) -> None:
    with atomic_output(path) as tmp:
        if not o3d.io.write_triangle_mesh(str(tmp), mesh, write_ascii=False):
            raise InputError(path, "Open3D could not write the mesh")


def write_copyroom_scene(data_dir: str | Path, out_dir: str | Path, config: CopyroomConfig = CopyroomConfig(),
                         show_progress: bool = True) -> CopyroomScene:
    """Render the scan in data_dir along its trajectory into the ACE root out_dir (module docstring), which must be
    new or empty. Raises InputError for missing or unreadable inputs, a non-empty out_dir, or too few valid poses."""
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    for name in INPUT_FILES:
        if not (data_dir / name).is_file():
            raise InputError(data_dir / name, "missing (the copyroom scan's files)")
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise InputError(out_dir, "exists and is not an empty folder")
    check_writable(out_dir / MESH_FILE)  # before the scan is loaded and rendered
    trajectory = read_trajectory(data_dir / POSES_ZIP)
    mapping, query = split_trajectory(trajectory, config, data_dir / POSES_ZIP)
    mesh = load_textured_mesh(data_dir / SCAN_FILE)
    camera = trajectory.camera.scaled(config.width, config.height)
    jobs = [("train", i) for i in mapping] + [("test", i) for i in query]
    # A failure removes the folders made here; the mesh, written last, is only there for a whole scene.
    with folders_removed_on_failure([out_dir / "train", out_dir / "test"]), make_progress(show_progress) as progress:
        task = progress.add_task("rendering copyroom", total=len(jobs), info="")
        for split, index in jobs:
            pose = trajectory.poses[index]
            view = render_scan(mesh, camera, pose, config.supersampling)
            write_ace_frame(out_dir / split, frame_name(index), view.rgb, camera, pose, view.depth)
            progress.advance(task)
        _write_mesh(mesh.geometry(), out_dir / MESH_FILE)
    return CopyroomScene(out_dir, camera, mapping, query, trajectory.invalid)
