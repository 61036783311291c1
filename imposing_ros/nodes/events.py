"""Subscriptions without QoS event handlers: keeps rclpy's MultiThreadedExecutor from spinning.

rclpy gives every subscription default QoS event handlers (incompatible QoS, incompatible type)
unless told otherwise. With rmw_fastrtps_cpp (the only rmw the PyPI wheels ship) and rclpy's
MultiThreadedExecutor, such a handler wakes the executor again and again, with nothing ready,
from the moment a message arrives until a pool thread has taken it. That busy Python loop holds
the GIL, which slows every other Python thread of the process, including inference, which in
turn delays the pool thread that would take the message: the loop feeds itself.

Measured here (2 cores; executor wait-set wake-ups counted, process CPU time):

* one node, one 40 Hz topic from another process: 80 wake-ups/s without handlers, 210-330/s
  with the default ones (any single subscription handler does it: incompatible QoS, incompatible
  type or message lost); publisher event handlers change nothing (86 vs 93/s).
* ``use_sim_time`` and 40 Hz ``/clock``: rclpy's TimeSource subscribes to ``/clock`` with the
  default handlers: 945 wake-ups/s and 14 % of a core for a node doing nothing, against 78/s
  and 3 % for the same ``/clock`` subscription without handlers.
* ``imposing-ros demo`` on the 30-frame test bag (10 Hz images, ``/clock`` and ``/odom``),
  localizer + motion filter in one process: 1,700-3,400 wake-ups/s and 90-98 % of a core, and
  in 7 of 11 runs the feedback took over (``Localizer.localize`` 0.5-5.8 s instead of
  12-25 ms; 1 to 4 of 30 frames localized). Part of it was the localizer dropping rclpy's
  ``/clock`` subscription from the executor (see ``_active_subscriptions`` there); with that
  fixed alone: 270-1,350 wake-ups/s, 2 of 3 runs still degraded (23 and 11 of 30 frames).
  Without subscription handlers: 79-90 wake-ups/s, 21-30 % of a core, all 30 frames localized
  in 6 of 6 runs, ``localize`` median 12-17 ms.

So every subscription our nodes make has no event handler, including the ones that rclpy
(TimeSource's ``/clock``) or tf2_ros (``/tf``, ``/tf_static``) create through the node, which
:class:`QuietSubscriptions` covers by overriding ``create_subscription``. What is lost: the
warning when a publisher with incompatible QoS appears (``ros2 topic info -v`` shows both
sides' QoS). A handler passed explicitly is kept.
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
