"""`read_scene`: detect a scene folder's layout and hand it to the matching reader.

Layouts, tried in this order: an ACE folder (rgb/, poses/, calibration/), an ACE root holding train/ and test/
ACE folders, the original 7-Scenes layout (seq-XX/frame-*), a COLMAP model (cameras.bin|txt in the folder, in
sparse/0 or in sparse), a NeRF transforms.json (a folder or the JSON file itself) and, last, an image folder or
one image file (unposed queries, cameras from EXIF: sceneloc/data/query_images.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from sceneloc.data import ace_folder, colmap_model, nerf_transforms, query_images, sevenscenes
from sceneloc.data.scene import Scene
from sceneloc.runtime.errors import InputError

SPLITS = ("train", "test")
COLMAP = "COLMAP model"
LAYOUTS = ("ACE folder (rgb/ + poses/ or calibration/)", "ACE root (train/ and test/ ACE folders)",
           "7-Scenes (seq-XX/frame-*.color.png|jpg)", "COLMAP model (cameras.bin|txt, also in sparse/0 or sparse)",
           "NeRF transforms.json", "image folder or image file (unposed queries, intrinsics from EXIF)")


def _read_ace_root(root: Path, split: str | None) -> Scene:
    if split is not None:
        if not ace_folder.is_ace_folder(root / split):
            raise InputError(root / split, f"no ACE '{split}' folder (rgb/ + poses/ or calibration/)")
        return ace_folder.read_ace_folder(root / split, name=root.name)
    parts = [ace_folder.read_ace_folder(root / s) for s in SPLITS if ace_folder.is_ace_folder(root / s)]
    frames = [f for part in parts for f in part.frames]
    if len({f.name for f in frames}) != len(frames):
        raise InputError(root, "train/ and test/ share frame names: pass a split ('train' or 'test')")
    return Scene(root.name, root, frames)


def _reader(path: Path, split: str | None, images: str | Path | None) -> tuple[str, Callable[[], Scene]]:
    """(layout name, reader) for an existing, non-empty folder or a file."""
    if path.is_file():
        if query_images.is_image_file(path):
            return "image file", lambda: query_images.read_query_images(path)
        if path.suffix.lower() != ".json":
            raise InputError(path, "is a file: expected a scene folder or a NeRF transforms.json")
        return "NeRF transforms.json", lambda: nerf_transforms.read_nerf(path, split)
    if ace_folder.is_ace_folder(path):
        return "ACE folder", lambda: ace_folder.read_ace_folder(path)
    if any(ace_folder.is_ace_folder(path / s) for s in SPLITS):
        return "ACE root", lambda: _read_ace_root(path, split)
    if sevenscenes.is_sevenscenes(path):
        return "7-Scenes folder", lambda: sevenscenes.read_sevenscenes(path, split)
    model_dir = colmap_model.find_model(path)
    if model_dir is not None:
        return COLMAP, lambda: colmap_model.read_colmap(model_dir, images=images, root=path)
    if nerf_transforms.transforms_files(path, split):
        return "NeRF folder", lambda: nerf_transforms.read_nerf(path, split)
    if query_images.has_images(path):
        return "image folder", lambda: query_images.read_query_images(path)
    raise InputError(path, f"matches no known scene layout; looked for: {'; '.join(LAYOUTS)}")


def read_scene(path: str | Path, split: str | None = None, images: str | Path | None = None) -> Scene:
    """Read the scene at `path` (a folder, or a transforms.json file).

    split: "train" or "test" picks an ACE root's train/ or test/ folder, the 7-Scenes sequences of
    TrainSplit.txt / TestSplit.txt, or a NeRF transforms_<split>.json; None reads everything. Layouts without
    splits (one ACE folder, a COLMAP model, a transforms.json) ignore it.
    images: the image folder of a COLMAP model when it is not next to the model; rejected for other layouts so
    that a mistaken option is not silently ignored.
    Raises InputError when the path does not exist, is empty or matches no known layout."""
    path = Path(path)
    if split not in (None, *SPLITS):
        raise InputError(path, f"unknown split {split!r}: expected 'train', 'test' or none")
    if not path.exists():
        raise InputError(path, "does not exist")
    if path.is_dir() and not any(path.iterdir()):
        raise InputError(path, "folder is empty")
    layout, read = _reader(path, split, images)
    if images is not None and layout != COLMAP:
        raise InputError(path, f"is a {layout}: the images option only applies to COLMAP models")
    return read()
