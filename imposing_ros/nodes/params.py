"""Parameters declared from one table per node: name, default, description, check.

A table row is ``(name, default, description, check)`` where ``check(value)`` returns None when
the value is good and otherwise the reason it is not ("must be >= 0"). :func:`declare` declares
every row with a ``ParameterDescriptor(description=...)`` and installs a set-parameters callback
that refuses a bad value with ``SetParametersResult(successful=False, reason=...)``. Values given
in parameter files at start-up do not pass through that callback: nodes call :func:`check_values`
when they read their parameters (configure / start). ``on_change`` applies accepted values
(a post-set callback), for parameters that take effect while the node runs.

Example::

    ROWS = (('rate', 10.0, 'publishing rate (Hz)', params.at_least(0.0, strict=True)),
            ('frame', 'map', 'global frame', params.nonempty))
    params.declare(node, ROWS)
    values = params.read(node, ROWS)          # {'rate': 10.0, 'frame': 'map'}
    reason = params.check_values(values, ROWS)  # None, or why a start-up value is bad
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Optional

from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult

Check = Optional[Callable[[Any], Optional[str]]]
Row = tuple  # (name, default, description, check)


def finite_list(n: int, nonnegative: bool = False) -> Check:
    """A list of ``n`` finite numbers (all >= 0 if ``nonnegative``)."""
    def check(value):
        if len(value) != n or not all(math.isfinite(v) for v in value):
            return f'needs {n} finite values'
        if nonnegative and any(v < 0 for v in value):
            return f'needs {n} values >= 0'
        return None
    return check


def at_least(low: float, strict: bool = False) -> Check:
    """A finite number >= ``low`` (> with ``strict``)."""
    def check(value):
        ok = value > low if strict else value >= low
        return None if ok and math.isfinite(value) else f'must be {">" if strict else ">="} {low}'
    return check


def in_range(low: float, high: float) -> Check:
    """A number in [low, high]."""
    def check(value):
        return None if low <= value <= high else f'must be in [{low:g}, {high:g}]'
    return check


def one_of(choices: Iterable[str]) -> Check:
    """One of ``choices``."""
    choices = tuple(choices)

    def check(value):
        return None if value in choices else f'must be one of {", ".join(choices)}'
    return check


def nonempty(value) -> Optional[str]:
    """A string that is not blank."""
    return None if str(value).strip() else 'must not be empty'


def key(name: str) -> str:
    """Attribute-style key of a parameter name (dots become underscores)."""
    return name.replace('.', '_')


def declare(node, rows: Iterable[Row],
            cross_check: Callable[[dict], Optional[str]] | None = None,
            describe: Callable[[str, str], str] | None = None,
            on_change: Callable[[dict], None] | None = None) -> None:
    """Declare every row on ``node`` and refuse bad values when they are set later.

    ``cross_check(values)`` (values keyed by :func:`key`) checks combinations; ``describe(name,
    description)`` may extend a description (e.g. with when the value takes effect);
    ``on_change(values)`` is called with all current values after a set that touched one of
    the rows was accepted (it runs in the parameter service's callback: lock what it shares).
    """
    rows = tuple(rows)
    for name, default, description, _ in rows:
        text = describe(name, description) if describe else description
        node.declare_parameter(name, default, ParameterDescriptor(description=text))
    checks = {name: check for name, _, _, check in rows}

    def on_set(params) -> SetParametersResult:
        values = read(node, rows)
        for param in params:
            check = checks.get(param.name)
            reason = check(param.value) if check is not None else None
            if reason:
                return SetParametersResult(
                    successful=False, reason=f'{param.name} {reason} (got {param.value!r})')
            if param.name in checks:
                values[key(param.name)] = param.value
        reason = cross_check(values) if cross_check else None
        return SetParametersResult(successful=reason is None, reason=reason or '')

    node.add_on_set_parameters_callback(on_set)
    if on_change is not None:
        def on_set_done(params) -> None:
            if any(param.name in checks for param in params):
                on_change(read(node, rows))

        node.add_post_set_parameters_callback(on_set_done)


def read(node, rows: Iterable[Row]) -> dict:
    """Current values of the rows' parameters, keyed by :func:`key`."""
    return {key(name): node.get_parameter(name).value for name, *_ in rows}


def check_values(values: dict, rows: Iterable[Row],
                 cross_check: Callable[[dict], Optional[str]] | None = None) -> Optional[str]:
    """The first reason a set of values is bad, or None."""
    for name, _, _, check in rows:
        value = values[key(name)]
        reason = check(value) if check else None
        if reason:
            return f'parameter {name} {reason} (got {value!r})'
    return cross_check(values) if cross_check else None
