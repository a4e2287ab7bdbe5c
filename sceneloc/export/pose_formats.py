"""Poses files of other tools beside our own: ACE's and hloc's result files and COLMAP's images.txt. Reading detects
the format from the content (or takes it given); writing is atomic (sceneloc.runtime.atomic), one function for all four.

Every format holds cam_from_world, x_cam = R(q) x_world + t, quaternion w first, OpenCV camera axes, the scene's
units (metres):

- `sceneloc`: `name qw qx qy qz tx ty tz num_inliers` with a '#' header (sceneloc/export/poses.py).
- `ace`: `name qw qx qy qz tx ty tz r_err t_err inliers`, the poses_<scene>_<session>.txt of ACE's test_ace.py.
  ACE's RANSAC returns camera-to-world; test_ace.py inverts it before writing ("Write estimated pose to pose file
  (inverse)"), and ACE's eval_poses.py inverts the read pose back to compare it with the camera-to-world ground truth
  ("We saved the inverse pose"): the file holds cam_from_world. r_err is in degrees and t_err in metres (errors
  against the ground truth, computed at test time); the name is the image's file name (`Path(frame_path).name`,
  which eval_poses.py asserts). No header, no comments. On reading, r_err/t_err go to details["ace_r_err_deg"] /
  details["ace_t_err_m"]; on writing they come from there, else `nan` (localize has no ground truth), and names
  are the image file names when the caller gives them and they are unique, else the frame names.
- `hloc`: `name qw qx qy qz tx ty tz` (hloc's localize_sfm results: pycolmap cam_from_world, quaternion w first).
  No header; no inlier count (read back as 0).
- `colmap`: COLMAP's images.txt, two lines per image: `IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME` and a POINTS2D
  line (`X Y POINT3D_ID ...`, may be empty). NAME is the rest of the line (COLMAP writes names with spaces but
  its reader stops them at the first space; this one keeps them). Written with
  IMAGE_ID 1, 2, ... in the given order, CAMERA_ID 1 (no cameras.txt is written) and empty POINTS2D lines. COLMAP
  lists registered images only: images that were not localised are written as comment lines `# not localised:
  NAME` in the header, which this reader reads back as failed images (COLMAP ignores them).

Failed images: `nan` for the seven pose numbers in the sceneloc, ace and hloc formats (0 inliers).
Names: the sceneloc, ace and hloc lines are split from the right, so names may hold single interior spaces (other
tools split on every space: a name with spaces is ours to read only).

Detection (`detect_format`): a sceneloc header line -> sceneloc; COLMAP's images.txt header (`IMAGE_ID, QW, ...,
CAMERA_ID, NAME`) -> colmap. Otherwise every pose line is tried as each right-split format: the column count,
numbers, an integer inlier count where the format has one, and the seven pose numbers all `nan` or a unit
quaternion (tolerance 1e-2, as Rigid3) and a finite translation. The formats the lines fit remain (up to the first
line that fits none of them: that format's reader then reports that line); where several do (a file of failed images
only) the one with the most columns wins. A first line that fits none but is a COLMAP image line means colmap; a
broken first line goes by its column count alone when that names one format, so that its reader names the problem.
Otherwise: InputError naming the file and the line.
"""

from __future__ import annotations

import math
import re
from pathlib import Path, PurePosixPath

import numpy as np

from sceneloc.runtime.atomic import write_text_atomic
from sceneloc.runtime.errors import InputError, read_text_file
from sceneloc.export import poses as sceneloc_poses
from sceneloc.geometry import Rigid3
from sceneloc.localize.estimate import PoseEstimate

FORMATS = ("sceneloc", "ace", "hloc", "colmap")
LAYOUTS = {
    "sceneloc": "name qw qx qy qz tx ty tz num_inliers",
    "ace": "name qw qx qy qz tx ty tz r_err t_err inliers",
    "hloc": "name qw qx qy qz tx ty tz",
    "colmap": "IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME, then a POINTS2D line",
}
_NUMBERS = {"ace": 10, "sceneloc": 8, "hloc": 7}
"""Right-split formats -> the count of number columns after the name (the last is the inlier count except hloc's)."""
_INT = re.compile(r"[+-]?\d+")
_QUAT_TOL = 1e-2
COLMAP_HEADER = ("# Image list with two lines of data per image:\n"
                 "#   IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME\n"
                 "#   POINTS2D[] as (X, Y, POINT3D_ID)\n")
_NOT_LOCALISED = "# not localised: "


def _floats(tokens: list[str]) -> list[float] | None:
    try:
        return [float(t) for t in tokens]
    except ValueError:
        return None


def _pose_fits(values: list[float], allow_nan: bool = True) -> bool:
    """Seven numbers qw qx qy qz tx ty tz: all nan (a failed image) or a unit quaternion and a finite translation."""
    if allow_nan and all(math.isnan(v) for v in values):
        return True
    return all(math.isfinite(v) for v in values) and abs(math.hypot(*values[:4]) - 1.0) <= _QUAT_TOL


def _fits_right(tokens: list[str], fmt: str) -> bool:
    count = _NUMBERS[fmt]
    if len(tokens) < count + 1:
        return False
    values = _floats(tokens[-count:])
    if values is None or (fmt != "hloc" and not _INT.fullmatch(tokens[-1])):
        return False
    return _pose_fits(values[:7])


def _fits_colmap(tokens: list[str]) -> bool:
    if len(tokens) < 10 or not _INT.fullmatch(tokens[0]) or not _INT.fullmatch(tokens[8]):
        return False
    values = _floats(tokens[1:8])
    return values is not None and _pose_fits(values, allow_nan=False)


def detect_format(path: str | Path, text: str | None = None) -> str:
    """The format of the poses file at `path` (its `text` if given): one of FORMATS. Rules in the module docstring.
    Raises InputError naming the file (and the line) when no format fits."""
    path = Path(path)
    text = read_text_file(path, "poses file") if text is None else text
    data = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if line.startswith("#"):
            if line.startswith("# sceneloc poses file"):
                return "sceneloc"
            if "IMAGE_ID" in line and "CAMERA_ID" in line:
                return "colmap"
        elif line:
            data.append((lineno, line))
    if not data:
        raise InputError(path, "holds no pose lines, so its format cannot be told: pass --format "
                               f"{'|'.join(FORMATS)}")
    first_lineno, first = data[0]
    tokens = first.split()
    candidates = {fmt for fmt in _NUMBERS if _fits_right(tokens, fmt)}
    if not candidates:
        if _fits_colmap(tokens):
            return "colmap"
        # A broken first line: its column count alone, so that the format's reader names the problem.
        loose = {fmt for fmt, count in _NUMBERS.items()
                 if len(tokens) == count + 1 and (fmt == "hloc" or _INT.fullmatch(tokens[-1]))}
        if len(tokens) >= 10 and _INT.fullmatch(tokens[0]) and _INT.fullmatch(tokens[8]):
            loose.add("colmap")
        if len(loose) == 1:
            return loose.pop()
        known = "; ".join(f"{fmt}: '{layout}'" for fmt, layout in LAYOUTS.items())
        raise InputError(path, f"line {first_lineno}: not a line of a known poses format ({known}): {first!r}")
    for _, line in data[1:]:
        fits = {fmt for fmt in candidates if _fits_right(line.split(), fmt)}
        if not fits:
            break  # a line no candidate reads: the reader of the format chosen so far names its problem
        candidates = fits
    return max(candidates, key=_NUMBERS.get)


def _pose(path: Path, lineno: int, name: str, values: np.ndarray) -> Rigid3 | None:
    if np.isnan(values).all():
        return None
    try:
        return Rigid3.from_qvec_tvec(values[:4], values[4:])
    except ValueError as e:
        raise InputError(path, f"line {lineno}: invalid pose for {name!r}: {e}") from None


def _inliers(path: Path, lineno: int, token: str) -> int:
    if not _INT.fullmatch(token):
        raise InputError(path, f"line {lineno}: inlier count {token!r} is not an integer")
    count = int(token)
    if count < 0:
        raise InputError(path, f"line {lineno}: negative inlier count {count}")
    return count


def _read_right(path: Path, text: str, fmt: str) -> list[PoseEstimate]:
    """The ace and hloc formats: name + _NUMBERS[fmt] numbers, split from the right."""
    count = _NUMBERS[fmt]
    estimates, seen = [], set()
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.rsplit(None, count)
        if len(fields) != count + 1:
            raise InputError(path, f"line {lineno}: expected '{LAYOUTS[fmt]}' ({fmt} poses), got {raw!r}")
        name = fields[0]
        values = _floats(fields[1:8] if fmt == "hloc" else fields[1:-1])
        if values is None:
            raise InputError(path, f"line {lineno}: pose numbers are not numbers: {raw!r}")
        if name in seen:
            raise InputError(path, f"line {lineno}: image {name!r} is listed twice")
        seen.add(name)
        pose = _pose(path, lineno, name, np.array(values[:7]))
        if fmt == "hloc":
            estimates.append(PoseEstimate(name, pose, 0, inlier_ratio=float("nan")))
        else:
            details = {"ace_r_err_deg": values[7], "ace_t_err_m": values[8]}
            estimates.append(PoseEstimate(name, pose, _inliers(path, lineno, fields[-1]), float("nan"), details))
    return estimates


def _read_colmap(path: Path, text: str) -> list[PoseEstimate]:
    """COLMAP's images.txt, read as COLMAP does: skip blank and comment lines before an image line, then take the
    next line as its POINTS2D line. `# not localised: NAME` comments give failed images."""
    lines = text.splitlines()
    estimates, seen, ids = [], set(), set()
    i = 0
    while i < len(lines):
        lineno, line = i + 1, lines[i].strip()
        i += 1
        if not line:
            continue
        if line.startswith("#"):
            if line.startswith(_NOT_LOCALISED.rstrip()) and line[len(_NOT_LOCALISED):].strip():
                name = line[len(_NOT_LOCALISED):].strip()
                if name in seen:
                    raise InputError(path, f"line {lineno}: image {name!r} is listed twice")
                seen.add(name)
                estimates.append(PoseEstimate(name, None, 0, inlier_ratio=float("nan")))
            continue
        fields = line.split(None, 9)
        if len(fields) != 10 or not _fits_colmap(fields):
            raise InputError(path, f"line {lineno}: expected '{LAYOUTS['colmap'].split(',')[0]}' (COLMAP "
                                   f"images.txt) with a unit quaternion, got {lines[lineno - 1]!r}")
        image_id, name = int(fields[0]), fields[9].strip()
        if image_id in ids:
            raise InputError(path, f"line {lineno}: IMAGE_ID {image_id} is listed twice")
        if name in seen:
            raise InputError(path, f"line {lineno}: image {name!r} is listed twice")
        ids.add(image_id)
        seen.add(name)
        pose = _pose(path, lineno, name, np.array([float(v) for v in fields[1:8]]))
        if i < len(lines):  # the POINTS2D line (COLMAP stops at the end of the file without one)
            points = lines[i].split()
            i += 1
            if len(points) % 3 or _floats(points) is None:
                raise InputError(path, f"line {i}: expected the POINTS2D line (X Y POINT3D_ID ...) of image "
                                       f"{name!r} (line {lineno}), got {lines[i - 1]!r}")
        estimates.append(PoseEstimate(name, pose, 0, inlier_ratio=float("nan")))
    return estimates


def read_pose_file(path: str | Path, fmt: str | None = None) -> tuple[str, list[PoseEstimate]]:
    """Reads a poses file of any of FORMATS -> (format, estimates in file order). fmt None: detected from the
    content (detect_format). Failed images come back with cam_from_world None; the formats without an inlier count
    give 0 inliers, none has an inlier ratio (nan). Raises InputError with the line number on a malformed line,
    an invalid pose, an image listed twice, or a file that fits no format."""
    path = Path(path)
    if fmt is not None and fmt not in FORMATS:
        raise InputError(path, f"unknown poses format {fmt!r} (expected {', '.join(FORMATS)})")
    text = read_text_file(path, "poses file")
    fmt = fmt or detect_format(path, text)
    if fmt == "sceneloc":
        return fmt, sceneloc_poses.read_poses(path)
    if fmt == "colmap":
        return fmt, _read_colmap(path, text)
    return fmt, _read_right(path, text, fmt)


def _numbers(pose: Rigid3 | None) -> str:
    if pose is None:
        return " ".join(["nan"] * 7)
    # repr(): the shortest string that parses back to the same float, for an exact round trip.
    return " ".join(repr(float(v)) for v in np.concatenate([pose.qvec_wxyz, pose.translation]))


def _ace_error(details: dict, key: str) -> str:
    value = details.get(key)
    return "nan" if value is None else repr(float(value))


def write_pose_file(path: str | Path, estimates: list[PoseEstimate], fmt: str = "sceneloc",
                    image_names: dict[str, str] | None = None) -> None:
    """Writes `estimates` in format `fmt` (one of FORMATS; layouts in the module docstring), atomically, in the
    given order. image_names: estimate name -> image file name, used for the ace format (ACE names images by file
    name) when the file names are unique; the other formats use the estimate names. Raises InputError for a name a
    poses file cannot hold, or an unknown format."""
    path = Path(path)
    if fmt not in FORMATS:
        raise InputError(path, f"unknown poses format {fmt!r} (expected {', '.join(FORMATS)})")
    if fmt == "sceneloc":
        sceneloc_poses.write_poses(path, estimates)
        return
    names = [est.name for est in estimates]
    if fmt == "ace" and image_names:
        mapped = [image_names.get(name, name) for name in names]
        if len(set(mapped)) == len(mapped):
            names = mapped
    for name in names:
        sceneloc_poses._check_name(path, name)
    if len(set(names)) != len(names):
        twice = next(n for n in names if names.count(n) > 1)
        raise InputError(path, f"image {twice!r} is given twice")
    if fmt == "hloc":
        text = "".join(f"{name} {_numbers(est.cam_from_world)}\n" for name, est in zip(names, estimates))
    elif fmt == "ace":
        text = "".join(f"{name} {_numbers(est.cam_from_world)} {_ace_error(est.details, 'ace_r_err_deg')} "
                       f"{_ace_error(est.details, 'ace_t_err_m')} "
                       f"{int(est.num_inliers) if est.cam_from_world is not None else 0}\n"
                       for name, est in zip(names, estimates))
    else:
        localised = [(name, est) for name, est in zip(names, estimates) if est.cam_from_world is not None]
        failed = [name for name, est in zip(names, estimates) if est.cam_from_world is None]
        lines = [COLMAP_HEADER, f"# Number of images: {len(localised)}, mean observations per image: 0\n",
                 "# written by sceneloc: CAMERA_ID is 1 for every image (no cameras.txt), POINTS2D lines are empty\n"]
        lines += [f"{_NOT_LOCALISED}{name}\n" for name in failed]
        lines += [f"{k} {_numbers(est.cam_from_world)} 1 {name}\n\n" for k, (name, est) in enumerate(localised, 1)]
        text = "".join(lines)
    write_text_atomic(path, text)


def match_to_frames(estimates: list[PoseEstimate], frames: list, poses_path: str | Path,
                    gt_path: str | Path) -> list[PoseEstimate]:
    """Names each estimate after the ground-truth frame it means: the frame of that name, else the frame whose image
    path ends with the estimate's name, compared whole path components ('frame-000000.color.png' or
    'seq-01/frame-000000.color.png' for .../seq-01/frame-000000.color.png): ACE names images by file name, hloc
    and COLMAP by their path in the image folder, and our readers name frames by stems. frames: the posed frames of
    the ground truth. Raises InputError naming the poses file for a name that matches no frame or several, and for
    two estimates of one frame."""
    poses_path = Path(poses_path)
    by_name = {frame.name for frame in frames}
    by_suffix: dict[str, set[str]] = {}
    for frame in frames:
        parts = [p for p in PurePosixPath(Path(frame.rgb_path).as_posix()).parts if p != "/"]
        for k in range(1, len(parts) + 1):
            by_suffix.setdefault("/".join(parts[-k:]), set()).add(frame.name)
    matched, owner = [], {}
    for est in estimates:
        target = est.name
        if target not in by_name:
            hits = by_suffix.get(PurePosixPath(est.name.replace("\\", "/")).as_posix(), set())
            if len(hits) > 1:
                raise InputError(poses_path, f"image {est.name!r} matches {len(hits)} ground-truth images of "
                                             f"{gt_path} ({', '.join(sorted(hits)[:3])}, ...)")
            if not hits:
                raise InputError(poses_path, f"image {est.name!r} has no ground-truth pose in {gt_path} (compared "
                                             "with its frame names and image paths)")
            target = next(iter(hits))
        if target in owner:
            if owner[target] == est.name:
                raise InputError(poses_path, f"image {est.name!r} is listed twice")
            raise InputError(poses_path, f"images {owner[target]!r} and {est.name!r} are both the ground-truth "
                                         f"image {target!r}")
        owner[target] = est.name
        matched.append(est if target == est.name else PoseEstimate(target, est.cam_from_world, est.num_inliers,
                                                                   est.inlier_ratio, est.details))
    return matched
