"""Benchmark scenes made from real data sets under the data root ($SCENELOC_DATA or --data-root): the 7-Scenes
stairs slice (read in place), the Strecha fountain-P11 and Herz-Jesu-P8 facades and the slambook RGB-D frames
(both leave-one-out: one fold per image, mapped from all the others).

Leave-one-out cache: <cache>/scenes/<name>[-<W>x<H>]-<key>/ holds frames/ (an ACE folder with every image, written
once: resized PNG, 3x3 K, camera-to-world pose, depth when the set has it) and one ACE root per image,
fold-<frame>/ with train/ = the other frames and test/ = that frame, whose files are hard links into frames/
(copies where the file system has no links). <key> hashes the spec's settings, the names and sizes of the input
files, and the source of this module and of the ACE writer.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import cv2
import numpy as np

from sceneloc.bench.scenes import PreparedScene, cache_key, cached_folder
from sceneloc.data import ace_folder, read_scene
from sceneloc.data.ace_folder import WRITTEN_FILES, read_numbers, write_ace_frame
from sceneloc.runtime.errors import InputError
from sceneloc.geometry import Camera, Rigid3
from sceneloc.runtime.progress import make_progress

SourceFrame = tuple[str, np.ndarray, Camera, Rigid3, np.ndarray | None]
"""(name, rgb (H, W, 3) uint8, camera, cam_from_world, depth (H, W) metres or None): one frame to write."""



def link_or_copy(source: Path, target: Path) -> None:
    """Hard-link source at target (creating its folder), or copy it where links fail (another file system, links
    not permitted)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def require_data(data_root: Path | None, subdir: str, files: tuple[str, ...]) -> Path:
    """data_root / subdir, after checking that it holds `files` (relative paths). Raises InputError telling how
    to point sceneloc at the data when data_root is None or a file is missing."""
    hint = f"set SCENELOC_DATA (or pass --data-root) to the folder holding {subdir}/"
    if data_root is None:
        raise InputError(None, hint)
    folder = Path(data_root) / subdir
    for name in files:
        if not (folder / name).exists():
            raise InputError(folder / name, f"missing; {hint}")
    return folder


def _cache_key(spec: object, inputs: list[Path]) -> str:
    """12 hex digits of the spec's settings, the input files' names and sizes (not their contents: the Strecha
    photos are tens of MB, read on every prepare) and the writing code."""
    sizes = [(path.name, path.stat().st_size) for path in inputs]
    return cache_key((spec, sizes), [Path(__file__), Path(ace_folder.__file__)])


def _read_rgb(path: Path) -> np.ndarray:
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise InputError(path, "cannot read image (missing, empty or not an image)")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def write_leave_one_out(frames: Iterator[SourceFrame], count: int, out: Path, show_progress: bool,
                        description: str) -> None:
    """Writes the `count` frames into out/frames/ (one at a time, so only one image is in memory) and one
    fold-<name>/ ACE root per frame (module docstring)."""
    names = []
    with make_progress(show_progress) as progress:
        task = progress.add_task(description, total=count, info="")
        for name, rgb, camera, cam_from_world, depth in frames:
            write_ace_frame(out / "frames", name, rgb, camera, cam_from_world, depth)
            names.append(name)
            progress.advance(task)
    for held_out in names:
        for name in names:
            split = out / f"fold-{held_out}" / ("test" if name == held_out else "train")
            for sub, suffix in WRITTEN_FILES.items():
                source = out / "frames" / sub / f"{name}{suffix}"
                if source.is_file():
                    link_or_copy(source, split / sub / source.name)


def _prepare_leave_one_out(name: str, cache_dir: Path, folder_name: str, build: Callable[[Path], object],
                           resolution: tuple[int, int], t0: float) -> PreparedScene:
    root, from_cache = cached_folder(cache_dir, folder_name, build)
    folds = tuple(sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("fold-")))
    return PreparedScene(name, root, 0, resolution, from_cache, time.perf_counter() - t0, folds=folds)


@dataclass(frozen=True)
class SevenScenesSpec:
    """A 7-Scenes scene (or slice of one) used in place: root is the data folder itself, read by the 7-Scenes
    reader (TrainSplit.txt sequences map, TestSplit.txt sequences query; nominal colour intrinsics, no depth)."""

    name: str
    """Scene name in the results."""
    subdir: str
    """The scene folder, relative to the data root."""
    seed: ClassVar[int] = 0
    """Real data: no generator."""

    def prepare(self, cache_dir: Path, show_progress: bool = True, data_root: Path | None = None) -> PreparedScene:
        """The data folder, checked by reading both splits. Nothing is cached (from_cache is True: nothing is
        rendered). Raises InputError when data_root is None or the folder is missing or unreadable."""
        t0 = time.perf_counter()
        folder = require_data(data_root, self.subdir, ("TrainSplit.txt", "TestSplit.txt"))
        read_scene(folder, split="train")
        camera = read_scene(folder, split="test").frames[0].camera
        return PreparedScene(self.name, folder, self.seed, (camera.width, camera.height), True,
                             time.perf_counter() - t0)


def read_strecha_camera(path: Path) -> tuple[Camera, Rigid3]:
    """A Strecha `<image>.camera` file -> (Camera, cam_from_world). The file holds K (3 rows, OpenCV pixel
    centres), the distortion (1 row, must be zero), R = camera-to-world rotation (3 rows), C = camera centre in
    the world (1 row) and `width height`. Raises InputError when malformed."""
    values = read_numbers(path)
    if values.size != 26:
        raise InputError(path, f"expected 26 numbers (K, distortion, R, C, width height), found {values.size}")
    k, distortion, rotation, centre = values[:9].reshape(3, 3), values[9:12], values[12:21].reshape(3, 3), \
        values[21:24]
    width, height = values[24:26]
    if np.any(distortion != 0):
        raise InputError(path, f"non-zero distortion {distortion.tolist()} is not supported")
    if not (np.allclose(k[2], [0, 0, 1]) and k[0, 1] == 0 and k[1, 0] == 0 and k[0, 0] > 0 and k[1, 1] > 0):
        raise InputError(path, f"expected K = [[fx 0 cx] [0 fy cy] [0 0 1]], got {k.tolist()}")
    try:
        # The files' 6-digit rotations are orthonormal to ~1e-6 only; from_matrix takes the nearest rotation.
        world_from_cam = Rigid3.from_matrix(np.c_[rotation, centre])
    except ValueError as error:
        raise InputError(path, f"invalid camera pose: {error}") from None
    camera = Camera(int(width), int(height), float(k[0, 0]), float(k[1, 1]), float(k[0, 2]), float(k[1, 2]))
    return camera, world_from_cam.inverse()


@dataclass(frozen=True)
class StrechaSpec:
    """A Strecha multi-view stereo set (images/NNNN.jpg, gt_dense_cameras/NNNN.jpg.camera), leave-one-out: one
    fold per image. Images are resized to (width, height) when cached, the intrinsics scaled to match; no depth."""

    name: str
    """Scene name in the results."""
    subdir: str
    """The set's folder, relative to the data root (e.g. "strecha/fountain-P11")."""
    width: int = 1536
    """Width of the cached images (the originals are 3072x2048; the methods downscale further as each needs)."""
    height: int = 1024
    """Height of the cached images."""
    seed: ClassVar[int] = 0
    """Real data: no generator."""

    def prepare(self, cache_dir: Path, show_progress: bool = True, data_root: Path | None = None) -> PreparedScene:
        """The cached folds (module docstring), written first when missing. Raises InputError when data_root is
        None, the set's files are missing or malformed, or the cache is not writable."""
        t0 = time.perf_counter()
        folder = require_data(data_root, self.subdir, ("images", "gt_dense_cameras"))
        images = sorted((folder / "images").glob("*.jpg"))
        if not images:
            raise InputError(folder / "images", "no *.jpg images")
        cameras = [folder / "gt_dense_cameras" / f"{image.name}.camera" for image in images]
        for path in cameras:
            if not path.is_file():
                raise InputError(path, "missing: every image needs its ground-truth camera")

        def frames() -> Iterator[SourceFrame]:
            for image, camera_file in zip(images, cameras):
                camera, cam_from_world = read_strecha_camera(camera_file)
                rgb = _read_rgb(image)
                if rgb.shape[:2] != (camera.height, camera.width):
                    raise InputError(image, f"image is {rgb.shape[1]}x{rgb.shape[0]} but {camera_file.name} is for "
                                            f"{camera.width}x{camera.height}")
                small = cv2.resize(rgb, (self.width, self.height), interpolation=cv2.INTER_AREA)
                yield image.stem, small, camera.scaled(self.width, self.height), cam_from_world, None

        key = _cache_key(self, images + cameras)
        return _prepare_leave_one_out(
            self.name, cache_dir, f"{self.name}-{self.width}x{self.height}-{key}",
            lambda out: write_leave_one_out(frames(), len(images), out, show_progress, f"caching {self.name}"),
            (self.width, self.height), t0)


SLAMBOOK_CAMERA = Camera(640, 480, 518.0, 519.0, 325.5, 253.5)
"""The Kinect colour camera of the slambook RGB-D frames (depth is registered to it)."""


@dataclass(frozen=True)
class SlambookSpec:
    """The slambook RGB-D frames (color/<i>.png, depth/<i>.pgm uint16 millimetres, pose.txt line i = `tx ty tz qx
    qy qz qw` camera-to-world), leave-one-out: one fold per frame, with depth."""

    name: str = "slambook"
    """Scene name in the results."""
    subdir: str = "slambook_rgbd"
    """The set's folder, relative to the data root."""
    camera: Camera = SLAMBOOK_CAMERA
    """Intrinsics of every frame."""
    seed: ClassVar[int] = 0
    """Real data: no generator."""

    def _frames(self, folder: Path, poses: list[Rigid3]) -> Iterator[SourceFrame]:
        for i, cam_from_world in enumerate(poses, start=1):
            rgb = _read_rgb(folder / "color" / f"{i}.png")
            depth_path = folder / "depth" / f"{i}.pgm"
            raw = cv2.imread(str(depth_path), cv2.IMREAD_ANYDEPTH)
            if raw is None or raw.dtype != np.uint16:
                raise InputError(depth_path, "cannot read as a 16-bit depth image")
            size = (self.camera.height, self.camera.width)
            for path, shape in ((folder / "color" / f"{i}.png", rgb.shape[:2]), (depth_path, raw.shape)):
                if shape != size:
                    raise InputError(path, f"image is {shape[1]}x{shape[0]}, the intrinsics are for "
                                           f"{size[1]}x{size[0]}")
            yield str(i), rgb, self.camera, cam_from_world, raw.astype(np.float64) / 1000.0

    def prepare(self, cache_dir: Path, show_progress: bool = True, data_root: Path | None = None) -> PreparedScene:
        """The cached folds (module docstring), written first when missing. Raises InputError when data_root is
        None, the set's files are missing or malformed, or the cache is not writable."""
        t0 = time.perf_counter()
        folder = require_data(data_root, self.subdir, ("pose.txt", "color", "depth"))
        lines = [line for line in (folder / "pose.txt").read_text().splitlines() if line.strip()]
        poses = []
        for number, line in enumerate(lines, start=1):
            try:
                tx, ty, tz, qx, qy, qz, qw = map(float, line.split())
                poses.append(Rigid3.from_qvec_tvec(np.array([qw, qx, qy, qz]), np.array([tx, ty, tz])).inverse())
            except ValueError as error:
                raise InputError(folder / "pose.txt", f"line {number}: expected 'tx ty tz qx qy qz qw' "
                                                      f"({error})") from None
        if not poses:
            raise InputError(folder / "pose.txt", "holds no poses")
        inputs = [folder / "pose.txt"]
        for i in range(1, len(poses) + 1):
            inputs += [folder / "color" / f"{i}.png", folder / "depth" / f"{i}.pgm"]
        for path in inputs:
            if not path.is_file():
                raise InputError(path, f"missing: pose.txt has {len(poses)} poses, one per colour and depth image")
        key = _cache_key(self, inputs)
        return _prepare_leave_one_out(
            self.name, cache_dir, f"{self.name}-{key}",
            lambda out: write_leave_one_out(self._frames(folder, poses), len(poses), out, show_progress,
                                            f"caching {self.name}"),
            (self.camera.width, self.camera.height), t0)


STAIRS_7SCENES = SevenScenesSpec("stairs-7scenes", "sevenscenes_stairs_slice")
FOUNTAIN_P11 = StrechaSpec("fountain-P11", "strecha/fountain-P11")
HERZJESU_P8 = StrechaSpec("herzjesu-P8", "strecha/Herz-Jesus-P8")
SLAMBOOK = SlambookSpec()
REAL_SCENES = (STAIRS_7SCENES, FOUNTAIN_P11, HERZJESU_P8, SLAMBOOK)
"""The real-data scene specs, for the suites."""
