"""Map-file container shared by every map kind: safetensors tensors plus a versioned JSON metadata entry, written
atomically and read back with one-line InputErrors for missing, unreadable, foreign or other-version files."""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from pathlib import Path

from safetensors import SafetensorError, safe_open

from sceneloc import __version__
from sceneloc.runtime.atomic import atomic_output
from sceneloc.runtime.errors import InputError

METADATA_KEY = "sceneloc"
"""The safetensors metadata entry holding the JSON metadata."""
KNOWN_FORMATS = {"sceneloc-map": "a single-scene sceneloc map (from `sceneloc map`)",
                 "sceneloc-multimap": "a multi-scene sceneloc map (from `sceneloc map --multi`)",
                 "sceneloc-structure-map": "a compressed structure-based map (from `sceneloc map --type structure`)",
                 "sceneloc-hybrid-map": "a hybrid map (from `sceneloc map --type hybrid`)",
                 "sceneloc-landmark-map": "a scene landmark map (from `sceneloc map --type landmarks`)",
                 "sceneloc-colmap-sift": "a colmap-sift peer map (from `sceneloc bench`)",
                 "sceneloc-cdem": "an EBCF-CDEM DEM super-resolution model (from `sceneloc dem train`)",
                 "sceneloc-dem-cnn": "a fixed-scale CNN DEM super-resolution model (from `sceneloc dem train`)",
                 "sceneloc-sdf": "a signed-distance shape model (from `sceneloc sdf fit`)",
                 "sceneloc-distinctiveness": "a structure map point scorer (from `sceneloc train-scores`)"}
"""The "format" of every map kind, in words: a map of one kind given where another is needed is named for what it
is, not "not a sceneloc map"."""


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
        meta = json.loads(raw)
    except json.JSONDecodeError:
        raise InputError(path, "map metadata is not valid JSON") from None
    if not isinstance(meta, dict):
        raise InputError(path, f"map metadata is a JSON {type(meta).__name__}, not an object")
    return meta


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
    if meta.get("format") != format_name:
        if meta.get("format") in KNOWN_FORMATS:
            raise InputError(path, f"is {KNOWN_FORMATS[meta['format']]}, not {KNOWN_FORMATS[format_name]}")
        raise InputError(path, f"not a {kind} map (format {meta.get('format')!r})")
    if meta.get("format_version") != format_version:
        raise InputError(path, f"{kind} map format version {meta.get('format_version')} is not supported "
                               f"(this sceneloc {__version__} reads version {format_version})")
    return tensors, meta


def metadata_field(path: str | Path, meta: dict, key: str, kind: type | tuple[type, ...]):
    """meta[key] (a dotted key reaches into nested objects: "encoder.name") when it is of `kind`; InputError naming
    the map file and the key when it is missing or of another type (bool is not an int here)."""
    value = meta
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            raise InputError(path, f"map metadata has no {key!r}")
        value = value[part]
    if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _types(kind)):
        raise InputError(path, f"map metadata {key!r} is {_short(value)}, not {_type_names(kind)}")
    return value


def config_from_metadata(path: str | Path, cls, value, key: str):
    """The config dataclass `cls` from its to_dict() form `value` stored as map metadata `key`: every key a field,
    every value of its field's type (nested dataclasses too); a missing key takes the field's default (maps made
    before the field existed). InputError naming the map file and the key otherwise: a foreign, damaged or
    hand-edited map must not fail later with a KeyError or TypeError deep in the network code."""
    if not isinstance(value, dict):
        raise InputError(path, f"map metadata {key!r} is {_short(value)}, not an object")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(value) - set(fields))
    if unknown:
        raise InputError(path, f"map metadata {key + '.' + unknown[0]!r} is not a setting of this sceneloc (a "
                               f"map of another version, or damaged)")
    hints = typing.get_type_hints(cls)
    kwargs = {name: _typed_value(path, hints[name], item, f"{key}.{name}") for name, item in value.items()}
    return cls(**kwargs)


def _typed_value(path: str | Path, hint, value, key: str):
    """`value` as the type `hint` (int, float, bool, str, a dataclass, list[X], X | None) or InputError."""
    options = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    if value is None and type(None) in options:
        return None
    for option in options:
        if dataclasses.is_dataclass(option):
            return config_from_metadata(path, option, value, key)
        if option is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                break
            return float(value)
        if option in (int, bool, str) and type(value) is option:
            return value
        if typing.get_origin(option) is list and isinstance(value, list):
            (item,) = typing.get_args(option)
            return [_typed_value(path, item, v, f"{key}[{i}]") for i, v in enumerate(value)]
    raise InputError(path, f"map metadata {key!r} is {_short(value)}, not {_type_names(options)}")


def _types(kind) -> tuple:
    return kind if isinstance(kind, tuple) else (kind,)


def _type_names(kind) -> str:
    names = {int: "an integer", float: "a finite number", bool: "true or false", str: "a string", dict: "an object",
             list: "a list", type(None): "null"}
    return " or ".join(names.get(k, getattr(k, "__name__", str(k))) for k in _types(kind))


def _short(value) -> str:
    """`value` as JSON, cut to 40 characters: error messages stay one short line."""
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."
