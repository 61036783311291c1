"""Subscriptions without QoS event handlers, which keep rclpy's MultiThreadedExecutor spinning.

With rmw_fastrtps_cpp, rclpy's default subscription event handlers wake the executor in a loop
while messages arrive; the loop holds the GIL and starves inference (measurements:
docs/design.md, "Subscriptions without event handlers"). :class:`QuietSubscriptions` makes every
subscription of a node, rclpy's ``/clock`` and tf2_ros's included, without them; lost: the
warning about a publisher with incompatible QoS (``ros2 topic info -v`` shows both sides).
"""

from __future__ import annotations

from rclpy.event_handler import SubscriptionEventCallbacks


def no_event_callbacks() -> SubscriptionEventCallbacks:
    """Event callbacks that create no QoS event handler (see the module docstring)."""
    return SubscriptionEventCallbacks(use_default_callbacks=False)


class QuietSubscriptions:
    """Node mixin: subscriptions get no QoS event handlers unless some are passed.

    Put it before ``Node``/``LifecycleNode`` in the bases. It applies from the node's
    construction on, so it also covers the ``/clock`` subscription that rclpy's TimeSource makes
    in ``Node.__init__`` when ``use_sim_time`` is true, and later ``use_sim_time`` changes.
    """

    def create_subscription(self, *args, event_callbacks=None, **kwargs):
        """``Node.create_subscription`` with :func:`no_event_callbacks` as the default."""
        if event_callbacks is None:
            event_callbacks = no_event_callbacks()
        return super().create_subscription(*args, event_callbacks=event_callbacks, **kwargs)
