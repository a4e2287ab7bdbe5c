"""The original Microsoft 7-Scenes layout (and 12-Scenes-like folders that share it).

Nested layout (the downloaded dataset)::

    <scene>/TrainSplit.txt, TestSplit.txt     lines "sequence1" meaning seq-01
    <scene>/seq-XX/frame-NNNNNN.color.png|jpg
    <scene>/seq-XX/frame-NNNNNN.pose.txt      4x4 camera-to-world, OpenCV axes, metres
    <scene>/seq-XX/frame-NNNNNN.depth.png     uint16 mm, raw Kinect depth

A flat folder (the `frame-*` files directly in the scene folder, no sequences) is read too.
Frame names are "seq-01-frame-000000" (nested) or "frame-000000" (flat).

Colour intrinsics are the dataset's nominal ones: fx = fy = 525, principal point (320, 240) for 640x480, scaled
for other image sizes.

Depth is deliberately not attached: 7-Scenes depth maps come from the Kinect's depth camera (fx = fy = 585),
which is neither registered nor synchronised to the colour camera, so pairing a depth pixel with the colour pixel
of the same index would give wrong scene coordinates. Use rendered/registered depth (e.g. an ACE folder with a
`depth/` sub-folder) when depth is needed.
"""

from __future__ import annotations

import re
from pathlib import Path

from sceneloc.data.ace_folder import IMAGE_EXTENSIONS, read_pose_file
from sceneloc.data.scene import Frame, Scene, image_size
from sceneloc.runtime.errors import InputError
from sceneloc.geometry import Camera

NOMINAL_CAMERA = Camera(640, 480, 525.0, 525.0, 320.0, 240.0)
SPLIT_FILES = {"train": "TrainSplit.txt", "test": "TestSplit.txt"}
_SEQUENCE_LINE = re.compile(r"^sequence(\d+)$", re.IGNORECASE)


def _color_images(folder: Path) -> list[Path]:
    return sorted(p for ext in IMAGE_EXTENSIONS for p in folder.glob(f"frame-*.color{ext}"))


def _sequences(root: Path) -> list[Path]:
    return sorted(p for p in root.glob("seq-*") if p.is_dir())


def is_sevenscenes(root: Path) -> bool:
    """True when `root` holds seq-XX folders or frame-*.color.* images directly."""
    if any(_color_images(root)):
        return True
    return any(_color_images(seq) for seq in _sequences(root))


def _split_sequences(root: Path, split: str) -> list[Path]:
    split_file = root / SPLIT_FILES[split]
    if not split_file.is_file():
        raise InputError(split_file, f"split file missing: cannot select the '{split}' sequences")
    sequences = []
    for line in split_file.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        match = _SEQUENCE_LINE.match(line)
        if match is None:
            raise InputError(split_file, f"expected lines like 'sequence1', found {line!r}")
        folder = root / f"seq-{int(match.group(1)):02d}"
        if not folder.is_dir():
            raise InputError(split_file, f"lists {line} but {folder} does not exist")
        sequences.append(folder)
    if not sequences:
        raise InputError(split_file, "lists no sequences")
    return sequences


def _read_folder(folder: Path, prefix: str) -> list[Frame]:
    frames = []
    images = _color_images(folder)
    image_stems = {p.name.split(".", 1)[0] for p in images}
    for pose in sorted(folder.glob("frame-*.pose.txt")):
        if pose.name.split(".", 1)[0] not in image_stems:
            raise InputError(pose, "pose file has no matching frame-*.color image")
    for image in images:
        stem = image.name.split(".", 1)[0]
        pose = folder / f"{stem}.pose.txt"
        if not pose.is_file():
            raise InputError(image, f"image has no pose file ({pose.name})")
        width, height = image_size(image)
        frames.append(Frame(
            name=prefix + stem,
            rgb_path=image,
            camera=NOMINAL_CAMERA if (width, height) == (640, 480) else NOMINAL_CAMERA.scaled(width, height),
            cam_from_world=read_pose_file(pose),
        ))
    return frames


def read_sevenscenes(root: str | Path, split: str | None = None) -> Scene:
    """Read a 7-Scenes scene folder. split: "train"/"test" selects the sequences of TrainSplit.txt/TestSplit.txt,
    None reads every sequence. A flat folder has no sequences, so `split` does not apply to it."""
    root = Path(root)
    sequences = _sequences(root)
    if not sequences:
        frames = _read_folder(root, "")
    else:
        if split is not None:
            sequences = _split_sequences(root, split)
        frames = [f for seq in sequences for f in _read_folder(seq, f"{seq.name}-")]
    if not frames:
        raise InputError(root, "no frame-*.color.png|jpg images found")
    return Scene(root.name, root, frames)
