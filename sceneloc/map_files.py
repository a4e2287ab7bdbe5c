"""Map-file container shared by every map kind: safetensors tensors plus a versioned JSON metadata entry, written
atomically and read back with one-line InputErrors for missing, unreadable, foreign or other-version files."""

from __future__ import annotations

import json
from pathlib import Path

from safetensors import SafetensorError, safe_open

from sceneloc import __version__
from sceneloc.atomic import atomic_output
from sceneloc.errors import InputError

METADATA_KEY = "sceneloc"
"""The safetensors metadata entry holding the JSON metadata."""


def save_map_file(path: str | Path, tensors: dict, metadata: dict, save_file) -> None:
    """Write `tensors` with `metadata` (JSON) atomically; `save_file` is safetensors' function for the tensors'
    framework (safetensors.torch.save_file or safetensors.numpy.save_file)."""
    with atomic_output(path) as tmp:
        save_file(tensors, str(tmp), metadata={METADATA_KEY: json.dumps(metadata)})


def read_map_metadata(path: str | Path, kind: str = "sceneloc"):
    """The JSON metadata of a map file without loading its tensors (e.g. to tell map kinds apart by "format").
    InputError for a missing or unreadable file, or one without sceneloc metadata."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "map file does not exist")
    try:
        with safe_open(str(path), framework="numpy") as f:
            raw = (f.metadata() or {}).get(METADATA_KEY)
    except (SafetensorError, OSError, ValueError) as e:
        raise InputError(path, f"not a {kind} map (unreadable safetensors: {str(e).splitlines()[0]})") from None
    if raw is None:
        raise InputError(path, f"not a {kind} map (safetensors file without sceneloc metadata)")
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        raise InputError(path, "map metadata is not valid JSON") from None


def load_map_file(path: str | Path, kind: str, format_name: str, format_version: int, load_file) -> tuple[dict, dict]:
    """(tensors, metadata) of a map file of `kind` (used in messages, e.g. "sceneloc", "colmap-sift"), whose
    metadata must name `format_name` at `format_version`. `load_file` is safetensors' loader for the framework
    wanted (safetensors.torch.load_file or safetensors.numpy.load_file)."""
    path = Path(path)
    meta = read_map_metadata(path, kind)
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise InputError(path, f"not a {kind} map (unreadable safetensors: {str(e).splitlines()[0]})") from None
    if not isinstance(meta, dict) or meta.get("format") != format_name:
        raise InputError(path, f"not a {kind} map (format {meta.get('format') if isinstance(meta, dict) else None!r})")
    if meta.get("format_version") != format_version:
        raise InputError(path, f"{kind} map format version {meta.get('format_version')} is not supported "
                               f"(this sceneloc {__version__} reads version {format_version})")
    return tensors, meta
