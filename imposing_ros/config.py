"""Strict configuration dataclasses: defaults live in one place, unknown keys are errors."""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

import yaml

T = TypeVar('T')


def config_from_dict(cls: type[T], data: dict[str, Any] | None, where: str = '') -> T:
    """Build dataclass ``cls`` from ``data``, refusing keys it does not declare.

    Lists are turned into tuples where the default is a tuple, so a config read from YAML or a
    checkpoint compares equal to one built in code. ``where`` names the source in errors.
    """
    data = dict(data or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        source = f' in {where}' if where else ''
        raise ValueError(f'unknown {cls.__name__} key(s){source}: {", ".join(unknown)}; '
                         f'known keys: {", ".join(fields)}')
    for name, value in data.items():
        if isinstance(value, list):
            data[name] = tuple(value)
    try:
        return cls(**data)
    except (TypeError, ValueError) as exc:
        source = f' ({where})' if where else ''
        raise ValueError(f'invalid {cls.__name__}{source}: {exc}') from exc


def config_to_dict(config: Any) -> dict[str, Any]:
    """Plain dict (tuples as lists) for checkpoints, JSON and YAML."""
    out = {}
    for key, value in dataclasses.asdict(config).items():
        out[key] = list(value) if isinstance(value, tuple) else value
    return out


def parse_override(text: str) -> tuple[str, str, Any]:
    """``'section.key=value'`` (the value in YAML) -> ``(section, key, value)``.

    The command lines' ``--set``. A number YAML 1.1 leaves a string (``1e-4``) is read as a float.
    """
    name, sep, value = text.partition('=')
    section, dot, key = name.partition('.')
    if not sep or not dot or not section or not key:
        raise ValueError(f'--set {text!r}: expected SECTION.KEY=VALUE, e.g. train.lr=1e-4')
    parsed = yaml.safe_load(value)
    if isinstance(parsed, str):
        try:
            parsed = float(parsed)
        except ValueError:
            pass
    return section, key, parsed
