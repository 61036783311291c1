"""config/motion_filter.yaml against the node's parameter table (no DDS)."""

import dataclasses
from pathlib import Path

import pytest
import yaml

pytest.importorskip('rclpy')
from imposing_ros.filtering.ekf import FilterConfig  # noqa: E402
from imposing_ros.nodes.motion_filter_node import (  # noqa: E402
    filter_config,
    filter_cross_check,
    PARAMETERS,
)
from imposing_ros.nodes.params import check_values, key  # noqa: E402

YAML = Path(__file__).resolve().parents[1] / 'config' / 'motion_filter.yaml'


def test_yaml_has_every_parameter_with_its_default_and_a_comment():
    text = YAML.read_text()
    block = yaml.safe_load(text)['/**/imposing_motion_filter']['ros__parameters']
    table = {name: default for name, default, _, _ in PARAMETERS}
    assert list(block) == list(table)
    for name, default in table.items():
        # Same value and same type: ROS refuses an integer for a double parameter.
        assert block[name] == default and type(block[name]) is type(default), name
    lines = text.splitlines()
    for i, line in enumerate(lines):
        stripped = line.strip()
        if stripped and not stripped.startswith('#') and line.startswith('    '):
            name = stripped.split(':')[0]
            comment = []
            j = i - 1
            while lines[j].strip().startswith('#'):
                comment.insert(0, lines[j].strip('# '))
                j -= 1
            text = ' '.join(comment)
            assert 'Default: ' in text, name
            # The comment states the same default (read as YAML reads the value).
            assert yaml.safe_load(text.rsplit('Default: ', 1)[1].rstrip('.')) == table[name], name


def test_filter_defaults_come_from_the_config_dataclass():
    values = {key(name): default for name, default, _, _ in PARAMETERS}
    assert filter_config(values) == FilterConfig()
    assert {name for name, *_ in PARAMETERS if name.startswith('filter.')} == \
        {f'filter.{f.name}' for f in dataclasses.fields(FilterConfig)}
    assert check_values(values, PARAMETERS, filter_cross_check) is None
    values['filter_history_s'] = 0.0  # >= 0 per row, refused by FilterConfig
    assert 'history_s' in check_values(values, PARAMETERS, filter_cross_check)
    values['filter_history_s'], values['prior_rate'] = 10.0, 0.0
    assert 'prior_rate' in check_values(values, PARAMETERS, filter_cross_check)
