"""The ``main`` of the node executables: build, spin until shutdown, clean up."""

from __future__ import annotations

from typing import Callable

import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.logging import get_logger

from imposing_ros.nodes.params import ParameterFileError


def spin(make_node: Callable[[], object], node_name: str, args=None) -> None:
    """Run one node under a SingleThreadedExecutor; a bad parameter file exits with status 2.

    Single-threaded: every callback is short (the localizer infers on its own thread); rclpy
    9.1's MultiThreadedExecutor loops without waiting while a callback waits for a pool thread
    (docs/design.md, "One inference thread").
    """
    rclpy.init(args=args)
    node = None
    try:
        node = make_node()
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        try:
            executor.spin()
        finally:
            executor.shutdown()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except ParameterFileError as exc:
        get_logger(node_name).fatal(str(exc))
        raise SystemExit(2) from exc
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
