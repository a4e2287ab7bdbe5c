"""ACE / DSAC*-style scene folders: reading them into a Scene and writing frames into them.

Layout (one folder per split, e.g. `<scene>/train`, `<scene>/test`)::

    rgb/<stem>.color.png|.jpg          (also plain <stem>.png|.jpg)
    poses/<stem>.pose.txt              (or <stem>.txt)  4x4 camera-to-world matrix, 16 plain numbers
    calibration/<stem>.calibration.txt (or <stem>.txt)  either one number, the focal length (fx = fy, principal
                                                        point at (w/2, h/2) as ACE does), or a 3x3 K matrix
    depth/<stem>.depth.png             optional, uint16 millimetres, 0 = invalid

Files are matched by their stem with the `.color/.pose/.calibration/.depth` suffix removed; that stem is the frame
name. A folder without `poses/` gives unposed frames (queries without ground truth). Pose files hold numbers only
(ACE's reader takes no comments): the matrix is camera-to-world in OpenCV axes (x right, y down, z forward), metres.

Also home of `read_pose_file` (camera-to-world text matrix -> validated cam_from_world), which the 7-Scenes reader
shares.
"""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from sceneloc.data.scene import Frame, Scene, check_camera, image_size
from sceneloc.runtime.atomic import write_bytes_atomic
from sceneloc.runtime.errors import InputError
from sceneloc.geometry import Camera, Rigid3

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
_SUFFIXES = {"rgb": ".color", "poses": ".pose", "calibration": ".calibration", "depth": ".depth"}
_EXTENSIONS = {"rgb": IMAGE_EXTENSIONS, "poses": (".txt",), "calibration": (".txt",), "depth": (".png",)}
_MAX_DEPTH_MM = np.iinfo(np.uint16).max


def is_ace_folder(folder: Path) -> bool:
    """True when `folder` has the ACE layout (an `rgb/` folder next to `poses/` or `calibration/`)."""
    return (folder / "rgb").is_dir() and ((folder / "poses").is_dir() or (folder / "calibration").is_dir())


def read_numbers(path: Path) -> np.ndarray:
    """All whitespace-separated numbers of a text file, (N,) float64. Raises InputError on non-numbers."""
    try:
        return np.array(path.read_text().split(), dtype=np.float64)
    except ValueError as error:
        raise InputError(path, f"expected only numbers: {error}") from None
    except OSError as error:
        raise InputError(path, f"cannot read file ({error.strerror})") from None


def read_pose_file(path: Path) -> Rigid3:
    """A text 4x4 camera-to-world matrix -> validated cam_from_world. Raises InputError when malformed (a 3x4 matrix
    included: ACE and 7-Scenes pose files hold all four rows, so 12 numbers are a file of another layout, e.g. a
    world-to-camera [R|t]), NaN/inf or not a rigid transform."""
    values = read_numbers(path)
    if values.size != 16:
        layout = " (a 3x4 matrix: pose files here hold the full 4x4 matrix)" if values.size == 12 else ""
        raise InputError(path, f"expected a 4x4 camera-to-world matrix (16 numbers), found {values.size} "
                               f"numbers{layout}")
    try:
        return Rigid3.from_matrix(values.reshape(4, 4)).inverse()
    except ValueError as error:
        raise InputError(path, f"invalid pose: {error}") from None


def _read_camera(path: Path, width: int, height: int) -> Camera:
    values = read_numbers(path)
    if values.size == 1:
        f = float(values[0])
        camera = Camera(width, height, f, f, width / 2.0, height / 2.0)
    elif values.size == 9:
        k = values.reshape(3, 3)
        if not np.allclose(k[2], [0, 0, 1]) or k[0, 1] != 0 or k[1, 0] != 0:
            raise InputError(path, f"expected a 3x3 K matrix [[fx 0 cx] [0 fy cy] [0 0 1]], got {k.tolist()}")
        camera = Camera(width, height, float(k[0, 0]), float(k[1, 1]), float(k[0, 2]), float(k[1, 2]))
    else:
        raise InputError(path, f"expected a focal length (1 number) or a 3x3 K matrix (9 numbers), "
                               f"found {values.size} numbers")
    return check_camera(path, camera)


def _check_depth_size(depth: Path, image: Path, width: int, height: int) -> None:
    """InputError unless the depth image has the colour image's size (its header only): depth pixels are paired
    with colour pixels by index, so another size would give every 3D target of the frame at the wrong place."""
    depth_width, depth_height = image_size(depth)
    if (depth_width, depth_height) != (width, height):
        raise InputError(depth, f"depth image is {depth_width}x{depth_height} but its colour image {image.name} is "
                                f"{width}x{height}")


def _stem(name: str, suffix: str) -> str:
    stem = name.rsplit(".", 1)[0]
    return stem[: -len(suffix)] if stem.endswith(suffix) else stem


def _index(folder: Path, kind: str) -> dict[str, Path]:
    """stem -> file for the files of one sub-folder; hidden files and other extensions are ignored."""
    files: dict[str, Path] = {}
    if not folder.is_dir():
        return files
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.name.startswith(".") or not entry.name.lower().endswith(_EXTENSIONS[kind]):
                continue
            stem = _stem(entry.name, _SUFFIXES[kind])
            if stem in files:
                raise InputError(folder / entry.name, f"two files have the frame name '{stem}' "
                                                      f"(the other is {files[stem].name})")
            files[stem] = folder / entry.name
    return files


def _check_matched(images: dict[str, Path], others: dict[str, Path], what: str, folder: Path) -> None:
    without = sorted(images.keys() - others.keys())
    if without:
        raise InputError(images[without[0]], f"image has no {what} file in {folder} "
                                             f"({len(without)} images lack one)")
    orphans = sorted(others.keys() - images.keys())
    if orphans:
        raise InputError(others[orphans[0]], f"{what} file has no matching image in {folder.parent / 'rgb'} "
                                             f"({len(orphans)} such files)")


def read_ace_folder(folder: str | Path, name: str | None = None) -> Scene:
    """Read one ACE split folder. Frames are sorted by name. `name` defaults to the folder name.

    Raises InputError for an image without pose/calibration (or without depth when depth/ holds files), a
    pose/calibration/depth file without image, a depth image of another size than its colour image, intrinsics
    that cannot describe the image (principal point outside it) and malformed, NaN or non-rigid poses."""
    folder = Path(folder)
    images = _index(folder / "rgb", "rgb")
    if not images:
        raise InputError(folder / "rgb", f"no images ({', '.join(IMAGE_EXTENSIONS)}) found")
    calibrations = _index(folder / "calibration", "calibration")
    _check_matched(images, calibrations, "calibration", folder / "calibration")
    poses = _index(folder / "poses", "poses")
    if (folder / "poses").is_dir():
        _check_matched(images, poses, "pose", folder / "poses")
    depths = _index(folder / "depth", "depth")
    if depths:
        _check_matched(images, depths, "depth", folder / "depth")
    frames = []
    for stem in sorted(images):
        width, height = image_size(images[stem])
        if stem in depths:
            _check_depth_size(depths[stem], images[stem], width, height)
        frames.append(Frame(
            name=stem,
            rgb_path=images[stem],
            camera=_read_camera(calibrations[stem], width, height),
            cam_from_world=read_pose_file(poses[stem]) if stem in poses else None,
            depth_path=depths.get(stem),
        ))
    return Scene(name or folder.name, folder, frames)


def _encode_png(image: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".png", image)
    if not ok:
        raise ValueError(f"OpenCV could not encode a {image.shape} {image.dtype} image as PNG")
    return data.tobytes()


@contextmanager
def folders_removed_on_failure(folders: list[Path]) -> Iterator[None]:
    """Create `folders` (InputError naming the first that cannot be made: a read-only place, a file in the way), run
    the block, and when it fails remove the folders this call created, with what was written into them, so that a
    failed run leaves no half-made scene. Folders that existed stay (each file in them was written atomically)."""
    created = []
    for folder in map(Path, folders):
        top = folder
        while not top.parent.exists() and top.parent != top:
            top = top.parent
        if not top.exists() and top not in created:
            created.append(top)
    try:
        for folder in folders:
            try:
                Path(folder).mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise InputError(folder, f"cannot create this folder ({error.strerror or error})") from None
        yield
    except BaseException:
        for top in created:
            shutil.rmtree(top, ignore_errors=True)
        raise


WRITTEN_FILES = {"rgb": ".color.png", "poses": ".pose.txt", "calibration": ".calibration.txt", "depth": ".depth.png"}
"""Sub-folder -> file suffix after the frame name, of the files write_ace_frame writes."""


def write_pose_file(path: str | Path, cam_from_world: Rigid3) -> None:
    """The ACE pose file of cam_from_world (4x4 camera-to-world, full float64 precision), atomically."""
    write_bytes_atomic(path, _matrix_text(cam_from_world.inverse().matrix()))


def _matrix_text(matrix: np.ndarray) -> bytes:
    # repr precision so that reading back gives the same float64 values.
    return ("\n".join(" ".join(repr(float(v)) for v in row) for row in matrix) + "\n").encode()


def write_ace_frame(out_dir: str | Path, name: str, rgb: np.ndarray, camera: Camera,
                    cam_from_world: Rigid3 | None, depth: np.ndarray | None = None) -> None:
    """Write one frame into the ACE folder `out_dir`, each file atomically.

    rgb: (H, W, 3) uint8 RGB -> rgb/<name>.color.png; camera -> calibration/<name>.calibration.txt (3x3 K);
    cam_from_world -> poses/<name>.pose.txt (4x4 camera-to-world; None writes no pose, for unposed queries);
    depth: (H, W) float metres, 0 or non-finite = invalid -> depth/<name>.depth.png, uint16 millimetres (depths
    beyond 65.535 m are stored as invalid)."""
    out_dir = Path(out_dir)
    if not name or "/" in name or "\\" in name or name.startswith("."):
        raise ValueError(f"frame name {name!r} must be a non-empty file stem without slashes or a leading dot")
    if rgb.dtype != np.uint8 or rgb.shape != (camera.height, camera.width, 3):
        raise ValueError(f"rgb is {rgb.shape} {rgb.dtype}, expected ({camera.height}, {camera.width}, 3) uint8")
    files = {sub: out_dir / sub / f"{name}{suffix}" for sub, suffix in WRITTEN_FILES.items()}
    write_bytes_atomic(files["rgb"], _encode_png(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)))
    write_bytes_atomic(files["calibration"], _matrix_text(camera.K))
    if cam_from_world is not None:
        write_pose_file(files["poses"], cam_from_world)
    if depth is not None:
        if depth.shape != (camera.height, camera.width):
            raise ValueError(f"depth is {depth.shape}, expected ({camera.height}, {camera.width})")
        mm = np.nan_to_num(np.asarray(depth, dtype=np.float64) * 1000.0, nan=0.0, posinf=0.0, neginf=0.0)
        mm = np.rint(mm)
        mm[(mm < 0) | (mm > _MAX_DEPTH_MM)] = 0
        write_bytes_atomic(files["depth"], _encode_png(mm.astype(np.uint16)))
