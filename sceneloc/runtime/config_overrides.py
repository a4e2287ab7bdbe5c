"""`--set key=value` overrides for config dataclasses, so every config field is reachable from the CLI."""

from __future__ import annotations

import dataclasses
import typing


def apply_overrides(config, assignments: list[str]):
    """Set fields of a (nested) dataclass from strings like "iterations=4000" or "head.num_blocks=6". Values are parsed
    with the field's type. Raises ValueError naming the key on an unknown field or a bad value."""
    for item in assignments:
        if "=" not in item:
            raise ValueError(f"--set {item!r}: expected key=value")
        key, value = item.split("=", 1)
        target = config
        *parents, leaf = key.strip().split(".")
        for p in parents:
            if not dataclasses.is_dataclass(target) or not hasattr(target, p):
                raise ValueError(f"--set {key}: unknown field {p!r}")
            target = getattr(target, p)
        fields = {f.name: f for f in dataclasses.fields(target)}
        if leaf not in fields:
            raise ValueError(f"--set {key}: unknown field {leaf!r} (fields: {', '.join(fields)})")
        hints = typing.get_type_hints(type(target))
        setattr(target, leaf, _parse(key, value.strip(), hints[leaf]))
    return config


def _parse(key: str, text: str, kind):
    options = typing.get_args(kind)
    if type(None) in options and len(options) == 2:  # X | None: "none" / "null" or an X
        if text.lower() in ("none", "null"):
            return None
        kind = next(option for option in options if option is not type(None))
    try:
        if kind is bool:
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(text)
        if kind in (int, float, str):
            return kind(text)
    except ValueError:
        raise ValueError(f"--set {key}: cannot read {text!r} as {kind.__name__}") from None
    raise ValueError(f"--set {key}: field type {kind} cannot be set from the command line")


def configure(config, options: dict, assignments: list[str] | None = None):
    """`config` with every option that is not None set (a command's named options), then the `--set` assignments
    applied, then validated; returns it. ValueError names the field on any bad value."""
    for name, value in options.items():
        if value is not None:
            setattr(config, name, value)
    apply_overrides(config, assignments or [])
    config.validate()
    return config
