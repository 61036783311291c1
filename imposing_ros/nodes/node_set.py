"""The node set of a localization run, described once for ``launch`` and ``imposing-ros run``.

``launch/localize.launch.py`` (a ROS install) and :mod:`imposing_ros.nodes.runner` (no ROS
install: one process) both read this module, so they start the same nodes, with the same
executables, parameter files, remappings and launch-argument defaults. Pure Python: importing
it needs neither rclpy nor launch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
import os
from pathlib import Path
import sys

PACKAGE = 'imposing_ros'


@dataclass(frozen=True)
class NodeSpec:
    """One node of the set.

    ``executable`` is the console script (``setup.py`` entry point, what ``launch_ros`` runs);
    ``module`` + ``class_name`` build the same node in process; ``params_file`` is its default
    parameter file in ``config/``; ``enabled_by`` names the launch argument that starts it
    (``None``: always started).
    """

    name: str
    executable: str
    module: str
    class_name: str
    lifecycle: bool
    params_file: str
    remappings: tuple[tuple[str, str], ...] = ()
    enabled_by: str | None = None


@dataclass(frozen=True)
class LaunchArgument:
    """A launch argument: name, default (a string, as ``launch`` wants) and description."""

    name: str
    default: str
    description: str
    choices: tuple[str, ...] = field(default=())


LOCALIZER = NodeSpec(
    name='imposing_localizer', executable='localizer_node',
    module='imposing_ros.nodes.localizer_node', class_name='LocalizerNode', lifecycle=True,
    params_file='localizer.yaml')

MOTION_FILTER = NodeSpec(
    name='imposing_motion_filter', executable='motion_filter_node',
    module='imposing_ros.nodes.motion_filter_node', class_name='MotionFilterNode',
    lifecycle=False, params_file='motion_filter.yaml', enabled_by='use_filter')

NODES = (LOCALIZER, MOTION_FILTER)

RVIZ_CONFIG = 'imposing.rviz'

# Defaults shared by the launch file and the runner. '' for params_file means "the package's
# config/localizer.yaml"; '' for model and image_topic means "keep the value of the params file".
LAUNCH_ARGUMENTS = (
    LaunchArgument('params_file', '',
                   'YAML parameter file (one block per node) loaded after the packaged defaults '
                   '(empty: config/localizer.yaml of the package)'),
    LaunchArgument('model', '',
                   'ImPosing checkpoint (.pt) for the localizer; empty keeps model_path of the '
                   'parameter file'),
    LaunchArgument('image_topic', '',
                   'camera image topic (raw; with image_transport "compressed" the node '
                   'subscribes to <topic>/compressed); empty keeps the parameter file value'),
    LaunchArgument('use_filter', 'true',
                   'also start the motion filter (odometry + localizer fusion, tracking prior)',
                   ('true', 'false')),
    LaunchArgument('rviz', 'false', 'start RViz with config/imposing.rviz', ('true', 'false')),
    LaunchArgument('use_sim_time', 'false', 'use /clock (bag replay, simulation)',
                   ('true', 'false')),
    LaunchArgument('log_level', 'info', 'log level of the started nodes',
                   ('debug', 'info', 'warn', 'error', 'fatal')),
    LaunchArgument('namespace', '', 'namespace of the started nodes (empty: root)'),
)


def argument(name: str) -> LaunchArgument:
    """The launch argument called ``name``."""
    for arg in LAUNCH_ARGUMENTS:
        if arg.name == name:
            return arg
    raise KeyError(f'no launch argument {name!r}')


def package_root() -> Path:
    """Where ``config/`` lies: the source tree, the ament share directory, or <prefix>/share.

    ``IMPOSING_ROS_SHARE`` overrides all (tests, relocated installs).
    """
    override = os.environ.get('IMPOSING_ROS_SHARE')
    if override:
        return Path(override)
    source = Path(__file__).resolve().parents[2]
    if (source / 'config').is_dir() and (source / 'setup.py').is_file():
        return source
    try:
        from ament_index_python.packages import get_package_share_directory

        return Path(get_package_share_directory(PACKAGE))
    except Exception:  # not an ament install (LookupError, ImportError)
        pass
    # A plain (non-editable) pip install puts setup.py's data_files under <prefix>/share.
    prefix_share = Path(sys.prefix) / 'share' / PACKAGE
    return prefix_share if (prefix_share / 'config').is_dir() else source


def config_file(name: str) -> Path:
    """Path of ``config/<name>`` of the package."""
    return package_root() / 'config' / name


def node_param_files(spec: NodeSpec, params_file: str | os.PathLike | None) -> list[Path]:
    """Parameter files of a node in load order: its packaged defaults, then the user's file.

    A later file overrides an earlier one key by key; blocks of other nodes are ignored by ROS.
    """
    files = [config_file(spec.params_file)]
    if params_file and Path(params_file).resolve() != files[0].resolve():
        files.append(Path(params_file))
    return files


DEFAULT_MODEL = 'models/helsinki_demo.pt'


def default_model() -> Path:
    """The packaged demo model (used when ``model_path`` is empty)."""
    return package_root() / DEFAULT_MODEL


def is_true(value: str | bool) -> bool:
    """Launch-style boolean: 'true'/'1'/'yes' (any case) or a bool."""
    if isinstance(value, bool):
        return value
    return str(value).strip().lower() in ('true', '1', 'yes', 'on')


@dataclass(frozen=True)
class NodeLaunch:
    """A node to start, fully resolved: what both the launch file and the runner execute."""

    spec: NodeSpec
    param_files: tuple[Path, ...]
    overrides: dict
    namespace: str
    log_level: str


# Fast DDS profile for raw camera images on one host (see the file); FASTDDS_DEFAULT_PROFILES_FILE
# set by the user wins.
DDS_PROFILE = 'fastdds_large_images.xml'
DDS_PROFILE_VARIABLE = 'FASTDDS_DEFAULT_PROFILES_FILE'


def dds_environment(environ: dict | None = None) -> dict:
    """Environment variables a run adds: the packaged Fast DDS profile unless one is set.

    Only for Fast DDS (the default RMW); other RMWs have their own settings.
    """
    environ = os.environ if environ is None else environ
    rmw = environ.get('RMW_IMPLEMENTATION', 'rmw_fastrtps_cpp')
    if environ.get(DDS_PROFILE_VARIABLE) or not rmw.startswith('rmw_fastrtps'):
        return {}
    return {DDS_PROFILE_VARIABLE: str(config_file(DDS_PROFILE))}


def plan(params_file: str = '', model: str = '', image_topic: str = '',
         use_filter: str | bool = 'true', use_sim_time: str | bool = 'false',
         log_level: str = 'info', namespace: str = '') -> list[NodeLaunch]:
    """The nodes a run starts for these launch-argument values (strings, as ``launch`` has them).

    Each node loads its packaged defaults, then ``params_file``; ``model`` and ``image_topic``
    override the localizer's parameters when not empty; ``use_sim_time`` goes to every node.
    """
    checked = {'use_filter': use_filter, 'use_sim_time': use_sim_time, 'log_level': log_level}
    for name, value in checked.items():
        allowed = argument(name).choices
        if not isinstance(value, bool) and str(value).lower() not in allowed:
            raise ValueError(f'{name} must be one of {", ".join(allowed)}, got {value!r}')
    if params_file and not Path(params_file).is_file():
        raise FileNotFoundError(f'params_file {params_file} not found')
    out = []
    for spec in NODES:
        if spec.enabled_by == 'use_filter' and not is_true(use_filter):
            continue
        overrides = {'use_sim_time': is_true(use_sim_time)}
        if spec is LOCALIZER:
            if model:
                overrides['model_path'] = str(Path(model).expanduser().resolve())
            if image_topic:
                overrides['image_topic'] = image_topic
        out.append(NodeLaunch(spec, tuple(node_param_files(spec, params_file or None)),
                              overrides, namespace.strip('/'), log_level.lower()))
    return out
