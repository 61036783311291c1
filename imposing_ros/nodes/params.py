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

import difflib
import math
import sys
from typing import Any, Callable, Iterable, Optional

from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
from rclpy.parameter import Parameter

Check = Optional[Callable[[Any], Optional[str]]]
Row = tuple  # (name, default, description, check)
# Parameters any rclpy node accepts besides its own table.
STANDARD = ('use_sim_time', 'start_type_description_service')
STANDARD_PREFIXES = ('qos_overrides.',)


class ParameterFileError(ValueError):
    """Start-up parameters (files, overrides) name an unknown key or a value of the wrong type."""


def _kind(default) -> str:
    if isinstance(default, bool):
        return 'bool'
    if isinstance(default, int):
        return 'integer'
    if isinstance(default, float):
        return 'double'
    if isinstance(default, str):
        return 'string'
    inner = _kind(default[0]) if len(default) else 'double'
    return f'{inner} array'


def _coerce(value, default):
    """``value`` as the type of ``default`` (an int is taken for a double), or raise TypeError."""
    kind = _kind(default)
    if kind.endswith(' array'):
        if isinstance(value, (str, bytes)) or not hasattr(value, '__len__'):
            raise TypeError
        return [_coerce(v, default[0] if len(default) else 0.0) for v in value]
    if kind == 'bool' and isinstance(value, bool):
        return value
    if kind == 'integer' and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind == 'double' and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if kind == 'string' and isinstance(value, str):
        return value
    raise TypeError


def parameter_files(argv: list[str] | None = None) -> list[str]:
    """The ``--params-file`` arguments of this process (for error messages)."""
    argv = sys.argv if argv is None else argv
    return [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == '--params-file']


def _problems(values: dict, defaults: dict) -> tuple[list[str], dict]:
    """(problems, coerced values) of start-up ``values`` against the table ``defaults``."""
    problems, coerced = [], {}
    for name, value in values.items():
        if name not in defaults:
            if name in STANDARD or name.startswith(STANDARD_PREFIXES):
                continue
            close = difflib.get_close_matches(name, defaults, n=1)
            problems.append(f'unknown parameter {name!r}' +
                            (f' (did you mean {close[0]!r}?)' if close else ''))
            continue
        try:
            coerced[name] = _coerce(value, defaults[name])
        except TypeError:
            problems.append(f'{name} must be a {_kind(defaults[name])}, got {value!r}')
    return problems, coerced


def _flatten(block: dict, prefix: str = '') -> dict:
    out = {}
    for key, value in block.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f'{prefix}{key}.'))
        else:
            out[f'{prefix}{key}'] = value
    return out


def check_files(node_name: str, files: Iterable, rows: Iterable[Row]) -> None:
    """Check the blocks of parameter ``files`` that apply to ``node_name`` (see below).

    rcl merges files before a node sees them, and where a later file gives a value of another
    type than an earlier one it silently keeps the earlier: each file is therefore read here.
    A block applies when the last part of its key is the node name, ``*`` or ``**``.
    """
    import yaml

    defaults = {name: default for name, default, *_ in rows}
    for path in files:
        try:
            data = yaml.safe_load(open(path).read()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ParameterFileError(f'parameter file {path}: cannot read it: {exc}') from exc
        for key, block in (data.items() if isinstance(data, dict) else ()):
            if str(key).rstrip('/').split('/')[-1] not in (node_name, '*', '**'):
                continue
            values = (block or {}).get('ros__parameters') if isinstance(block, dict) else None
            if not isinstance(values, dict):
                raise ParameterFileError(f'parameter file {path}: block {key!r} has no '
                                         'ros__parameters mapping')
            problems, _ = _problems(_flatten(values), defaults)
            if problems:
                raise ParameterFileError(f'{node_name}: bad parameters in {path} (block '
                                         f'{key!r}): ' + '; '.join(problems))


def check_overrides(node, rows: Iterable[Row]) -> None:
    """Refuse unknown keys and mistyped values among ``node``'s start-up parameters.

    The parameter files of this process's command line are read first (:func:`check_files`).
    Then the start-up values rclpy keeps in the node's ``_parameter_overrides`` (no public
    accessor exists) are checked; an integer given for a double is replaced there by that
    double, as nav2 users write ``1`` for ``1.0``. Raises :class:`ParameterFileError` listing
    every problem, with close names for typos.
    """
    rows = tuple(rows)
    check_files(node.get_name(), parameter_files(), rows)
    overrides = node._parameter_overrides
    defaults = {name: default for name, default, *_ in rows}
    problems, coerced = _problems({n: p.value for n, p in overrides.items()}, defaults)
    if problems:
        raise ParameterFileError(f'{node.get_name()}: bad start-up parameters: ' +
                                 '; '.join(problems))
    for name, value in coerced.items():
        old = overrides[name].value
        if type(value) is not type(old) or value != old:
            overrides[name] = Parameter(name, value=value)


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


def nonblank_or_empty(value) -> Optional[str]:
    """A string that is empty or has no surrounding blanks."""
    return None if str(value) == str(value).strip() else 'must not start or end with blanks'


def key(name: str) -> str:
    """Attribute-style key of a parameter name (dots become underscores)."""
    return name.replace('.', '_')


def declare(node, rows: Iterable[Row],
            cross_check: Callable[[dict], Optional[str]] | None = None,
            describe: Callable[[str, str], str] | None = None,
            on_change: Callable[[dict], None] | None = None) -> None:
    """Declare every row on ``node`` and refuse bad values when they are set later.

    Start-up values are checked first (:func:`check_overrides`).

    ``cross_check(values)`` (values keyed by :func:`key`) checks combinations; ``describe(name,
    description)`` may extend a description (e.g. with when the value takes effect);
    ``on_change(values)`` is called with all current values after a set that touched one of
    the rows was accepted (it runs in the parameter service's callback: lock what it shares).
    """
    rows = tuple(rows)
    check_overrides(node, rows)
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
