"""Run the localizer (and filter) nodes in one process, without ``ros2 launch``.

``imposing-ros run --params FILE`` starts the node set of ``launch/localize.launch.py`` (both
read :mod:`imposing_ros.nodes.node_set`) with the same parameter files, brings the lifecycle
localizer to active and spins everything in one SingleThreadedExecutor until Ctrl-C (every
callback is short: the localizer infers on its own thread, docs/design.md). RViz is
not started (it needs a ROS install). DDS settings come from the environment as for any ROS
program (``ROS_DOMAIN_ID``, ``ROS_AUTOMATIC_DISCOVERY_RANGE``).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import time

from imposing_ros.nodes import node_set

LOGGER = logging.getLogger('imposing_ros.run')


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The launch file's arguments as options (same names and defaults)."""
    default = {arg.name: arg for arg in node_set.LAUNCH_ARGUMENTS}
    parser.add_argument('--params', dest='params_file', default='',
                        help=default['params_file'].description)
    parser.add_argument('--model', default='', help=default['model'].description)
    parser.add_argument('--image-topic', default='', help=default['image_topic'].description)
    parser.add_argument('--use-filter', default=default['use_filter'].default,
                        choices=default['use_filter'].choices,
                        help=default['use_filter'].description)
    parser.add_argument('--use-sim-time', default=default['use_sim_time'].default,
                        choices=default['use_sim_time'].choices,
                        help=default['use_sim_time'].description)
    parser.add_argument('--log-level', default=default['log_level'].default,
                        choices=default['log_level'].choices,
                        help=default['log_level'].description)
    parser.add_argument('--namespace', default='', help=default['namespace'].description)
    parser.add_argument('--duration', type=float, default=0.0,
                        help='stop after this many seconds (0: run until Ctrl-C)')
    # 8765: imposing_ros.nodes.live_view.DEFAULT_PORT (not imported here: it loads rclpy).
    parser.add_argument('--foxglove', nargs='?', type=int, const=8765, default=None,
                        metavar='PORT',
                        help='also serve a live view of the localizer to Foxglove on '
                             'ws://127.0.0.1:PORT (default 8765; needs foxglove-sdk)')


def create_nodes(launches: list[node_set.NodeLaunch], context=None) -> list:
    """Instantiate the planned nodes in this process (rclpy must be initialised)."""
    from rclpy.parameter import Parameter

    from imposing_ros.nodes import params

    nodes = []
    for launch in launches:
        spec = launch.spec
        try:
            module = importlib.import_module(spec.module)
        except ImportError as exc:
            raise RuntimeError(f'node {spec.name}: cannot import {spec.module}: {exc}') from exc
        cls = getattr(module, spec.class_name)
        params.check_files(spec.name, launch.param_files, module.PARAMETERS)
        overrides = [Parameter(name, value=value) for name, value in launch.overrides.items()]
        try:
            node = cls(spec.name, namespace=launch.namespace or None, context=context,
                       parameter_overrides=overrides)
        except params.ParameterFileError as exc:  # say which files were read
            files = ', '.join(str(p) for p in launch.param_files)
            raise params.ParameterFileError(f'{exc} (parameter files, later ones win: '
                                            f'{files})') from exc
        nodes.append(node)
    return nodes


def ros_arguments(launches: list[node_set.NodeLaunch]) -> list[str]:
    """Process-wide ``--ros-args``: every node's parameter files, in order, and the log level.

    ROS gives each node the blocks of these files that match its name, later files overriding
    earlier ones, as ``ros2 launch`` does with a node's ``parameters`` list.
    """
    # A file several nodes share (the user's, after each node's packaged defaults) goes where it
    # last appears: after every packaged file, so its block for any node wins.
    paths = [path for launch in launches for path in launch.param_files]
    ordered = [path for i, path in enumerate(paths) if path not in paths[i + 1:]]
    args = ['--ros-args']
    for path in ordered:
        args += ['--params-file', str(path)]
    if launches:
        args += ['--log-level', launches[0].log_level]
    return args


def activate(node) -> None:
    """Configure and activate a lifecycle node, or RuntimeError naming what failed."""
    from rclpy.lifecycle import TransitionCallbackReturn

    for name in ('configure', 'activate'):
        result = getattr(node, f'trigger_{name}')()
        if result != TransitionCallbackReturn.SUCCESS:
            raise RuntimeError(f'{node.get_name()}: {name} failed (see the error above)')


def run(args: argparse.Namespace) -> int:
    """Start the node set, spin until Ctrl-C (or --duration), shut down cleanly."""
    launches = node_set.plan(args.params_file, args.model, args.image_topic, args.use_filter,
                             args.use_sim_time, args.log_level, args.namespace)
    import rclpy
    from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor

    for name, value in node_set.dds_environment().items():  # before DDS starts in this process
        LOGGER.info('%s=%s', name, value)
        os.environ[name] = value
    context = rclpy.Context()
    rclpy.init(args=ros_arguments(launches), context=context)
    executor = SingleThreadedExecutor(context=context)
    nodes = []
    try:
        nodes = create_nodes(launches, context)
        if args.foxglove is not None:  # before activation: a busy port fails before the model
            from imposing_ros.nodes import live_view

            localizer = nodes[[launch.spec for launch in launches].index(node_set.LOCALIZER)]
            nodes.append(live_view.beside(localizer, args.foxglove, context))
        for node in nodes:
            executor.add_node(node)
        for launch, node in zip(launches, nodes):
            if launch.spec.lifecycle:
                activate(node)
        LOGGER.info('running %s', ', '.join(node.get_fully_qualified_name() for node in nodes))
        deadline = time.monotonic() + args.duration if args.duration > 0 else None
        while context.ok() and (deadline is None or time.monotonic() < deadline):
            executor.spin_once(timeout_sec=0.1)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        executor.shutdown(timeout_sec=10.0)
        for node in nodes:
            executor.remove_node(node)
            node.destroy_node()
        rclpy.try_shutdown(context=context)
    return 0
