"""The config core shared by training (``training/config.py``) and text-to-3D (``threed/config.py``): YAML
mappings -> typed dataclass sections, with errors that name the key.

A config is a mapping of sections, each a dataclass whose field defaults give the types: an unknown key, a
non-boolean for a boolean, a non-integer for an integer or a non-number for a float is a
:class:`~mvdream3d.errors.ConfigError` naming ``section.key`` (``train.lr: must be > 0, got -1``).
``section.key=value`` strings (``--set``) override values before validation, parsed as YAML.
"""

from __future__ import annotations

import os
import re
from dataclasses import fields
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError

__all__ = ["ConfigError", "apply_overrides", "check", "parse_section", "read_yaml"]


def parse_section(cls: type, raw: Any, name: str) -> Any:
    """The dataclass ``cls`` filled from the mapping ``raw`` (None: all defaults), each value checked against
    the type of its field's default; ``name`` is the section's name in messages."""
    if raw is None:
        return cls()
    if not isinstance(raw, dict):
        raise ConfigError(f"{name}: must be a mapping, got {type(raw).__name__}")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise ConfigError(f"{name}: unknown key(s) {unknown}; known keys: {sorted(known)}")
    values = {}
    for k, v in raw.items():
        default = getattr(cls(), k)
        v = as_number(v)
        if isinstance(default, bool) and not isinstance(v, bool):
            raise ConfigError(f"{name}.{k}: must be true or false, got {v!r}")
        if isinstance(default, float) and isinstance(v, int | float) and not isinstance(v, bool):
            v = float(v)
        elif isinstance(default, int) and not isinstance(default, bool) and not (
                isinstance(v, int) and not isinstance(v, bool)):
            raise ConfigError(f"{name}.{k}: must be an integer, got {v!r}")
        elif isinstance(default, float) and not isinstance(v, float):
            raise ConfigError(f"{name}.{k}: must be a number, got {v!r}")
        values[k] = v
    return cls(**values)


def check(cond: bool, key: str, msg: str, value: Any) -> None:
    """Raise ``ConfigError("key: msg, got value")`` unless ``cond``."""
    if not cond:
        raise ConfigError(f"{key}: {msg}, got {value!r}")


def read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """The mapping of a YAML file (an empty file: {}); ConfigError for invalid YAML."""
    path = Path(path)
    try:
        return yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {e}") from e


_FLOAT_LITERAL = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def as_number(value: Any) -> Any:
    """``value``, with a string in exponent form (``"1e-4"``, which YAML 1.1 reads as a string: it wants
    ``1.0e-4``) turned into the float it spells."""
    if isinstance(value, str) and _FLOAT_LITERAL.fullmatch(value.strip()):
        return float(value)
    return value


def apply_overrides(raw: dict[str, Any], overrides: list[str] | None, top_level: tuple[str, ...] = ()) -> None:
    """Apply ``section.key=value`` strings (values parsed as YAML) to a raw config mapping in place;
    keys named in ``top_level`` may be set directly (``model=...``)."""
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if sep and key in top_level:
            raw[key] = as_number(yaml.safe_load(value))
            continue
        if not sep or "." not in key:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        section, name = key.split(".", 1)
        raw.setdefault(section, {})
        if not isinstance(raw[section], dict):
            raise ConfigError(f"override {item!r}: {section} is not a section")
        raw[section][name] = as_number(yaml.safe_load(value))
