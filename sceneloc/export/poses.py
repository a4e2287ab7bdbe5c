"""The poses file (one estimated cam_from_world per query image), its per-image JSON companion, and the atomic
file writing every writer in sceneloc/export and sceneloc/evaluate uses.

Poses file format (text, UTF-8): lines starting with '#' are comments; every other non-empty line is
`name qw qx qy qz tx ty tz num_inliers`, the pose in COLMAP's cam_from_world convention (x_cam = R(q) x_world + t,
quaternion w first, OpenCV camera axes, metres). An image that was attempted but not localised has `nan` for the
seven pose numbers and 0 inliers. Names may contain single interior spaces (the line is split from the right) but
no leading/trailing whitespace, tabs or line breaks.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from sceneloc.runtime.atomic import write_text_atomic
from sceneloc.runtime.errors import InputError, read_text_file
from sceneloc.geometry import Rigid3
from sceneloc.localize.estimate import PoseEstimate  # re-exported: the poses file's record

POSES_HEADER = (
    "# sceneloc poses file, one line per query image: name qw qx qy qz tx ty tz num_inliers\n"
    "# pose = cam_from_world as in COLMAP: x_cam = R(qw, qx, qy, qz) @ x_world + (tx, ty, tz)\n"
    "# camera axes: OpenCV (x right, y down, z forward); units: metres\n"
    "# images that were not localised: nan for the 7 pose numbers and 0 inliers\n"
)


def check_image_name(path: str | Path, name: str) -> None:
    """InputError naming the poses file `path` when the image name `name` cannot be stored in it: `localize` calls
    it on every query name before localizing, so that a bad name fails in a second, not after the whole run."""
    if not name or name != name.strip() or any(c.isspace() and c != " " for c in name) or name.startswith("#"):
        raise InputError(path, f"image name {name!r} cannot be stored in a poses file (empty, leading/trailing "
                               "whitespace, tab/line break, or starting with '#')")


_check_name = check_image_name


def write_poses(path: str | Path, estimates: list[PoseEstimate]) -> None:
    """Writes the poses file (format in the module docstring) atomically, in the order given."""
    path = Path(path)
    lines = [POSES_HEADER]
    for est in estimates:
        _check_name(path, est.name)
        if est.cam_from_world is None:
            numbers, inliers = ["nan"] * 7, 0
        else:
            # repr() gives the shortest string that parses back to the same float: exact round trip.
            values = np.concatenate([est.cam_from_world.qvec_wxyz, est.cam_from_world.translation])
            numbers, inliers = [repr(float(v)) for v in values], int(est.num_inliers)
        lines.append(f"{est.name} {' '.join(numbers)} {inliers}\n")
    write_text_atomic(path, "".join(lines))


def read_poses(path: str | Path) -> list[PoseEstimate]:
    """Reads a poses file. Failed images come back with cam_from_world None. Raises InputError (with the line
    number) on a malformed line, a non-unit quaternion, partial nans, or a name listed twice."""
    path = Path(path)
    text = read_text_file(path, "poses file")
    estimates, seen = [], set()
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.rsplit(None, 8)
        if len(fields) != 9:
            raise InputError(path, f"line {lineno}: expected 'name qw qx qy qz tx ty tz num_inliers', got {raw!r}")
        name = fields[0]
        try:
            values = np.array([float(v) for v in fields[1:8]])
            num_inliers = int(fields[8])
        except ValueError:
            raise InputError(path, f"line {lineno}: pose numbers or inlier count are not numbers: {raw!r}") from None
        if num_inliers < 0:
            raise InputError(path, f"line {lineno}: negative inlier count {num_inliers}")
        if name in seen:
            raise InputError(path, f"line {lineno}: image {name!r} is listed twice")
        seen.add(name)
        if np.isnan(values).all():
            cam_from_world = None
        else:
            try:
                cam_from_world = Rigid3.from_qvec_tvec(values[:4], values[4:])
            except ValueError as e:
                raise InputError(path, f"line {lineno}: invalid pose for {name!r}: {e}") from None
        # The poses file has no inlier ratio: NaN (null in JSON) rather than a made-up 0.
        estimates.append(PoseEstimate(name, cam_from_world, num_inliers, inlier_ratio=float("nan")))
    return estimates


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


def _finite_or_none(x: float) -> float | None:
    return x if math.isfinite(x) else None


def estimate_json(est: PoseEstimate) -> dict:
    """One estimate as strict JSON: {name, cam_from_world: {qvec_wxyz, tvec} | null, world_from_cam_center:
    [x, y, z] | null, num_inliers, inlier_ratio, details}; non-finite floats become null. The details file and the
    service's replies hold it."""
    pose = est.cam_from_world
    return {
        "name": est.name,
        "cam_from_world": None if pose is None else {"qvec_wxyz": pose.qvec_wxyz.tolist(),
                                                     "tvec": pose.translation.tolist()},
        "world_from_cam_center": None if pose is None else pose.center.tolist(),
        "num_inliers": int(est.num_inliers),
        "inlier_ratio": _finite_or_none(float(est.inlier_ratio)),
        "details": json.loads(json.dumps(est.details, default=_json_default), parse_constant=lambda _: None),
    }


POSE_CONVENTION = ("cam_from_world (COLMAP: x_cam = R(q) x_world + t, quaternion w first), OpenCV camera axes, "
                   "metres; world_from_cam_center = camera centre in world; null = not localised")


def write_pose_details_json(path: str | Path, estimates: list[PoseEstimate]) -> None:
    """Writes the per-image details as JSON, atomically: {"convention": ..., "images": [estimate_json of each]}."""
    doc = {"convention": POSE_CONVENTION, "images": [estimate_json(est) for est in estimates]}
    write_text_atomic(path, json.dumps(doc, indent=1) + "\n")
