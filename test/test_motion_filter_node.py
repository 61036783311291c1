"""The motion filter node over real DDS.

Odometry and poses in; fused pose, prior and diagnostics out; bad input refused without harm.
"""

import math
import threading
import time

import numpy as np
import pytest

rclpy = pytest.importorskip('rclpy')
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from geometry_msgs.msg import PoseWithCovarianceStamped  # noqa: E402
from nav_msgs.msg import Odometry  # noqa: E402
from rclpy.executors import MultiThreadedExecutor  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.qos import QoSProfile, QoSReliabilityPolicy  # noqa: E402

from imposing_ros.nodes.conversions import ns_to_stamp  # noqa: E402
from imposing_ros.nodes.motion_filter_node import MotionFilterNode  # noqa: E402

pytestmark = pytest.mark.ros
RELIABLE = QoSProfile(depth=50, reliability=QoSReliabilityPolicy.RELIABLE)


class Harness:
    """The filter node and a test node in one context, spun in a background thread."""

    def __init__(self):
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.filter = MotionFilterNode(context=self.context, parameter_overrides=[
            Parameter('prior_rate', value=20.0), Parameter('diagnostic_period', value=0.2)])
        self.node = rclpy.create_node('filter_test_driver', context=self.context)
        self.odom_pub = self.node.create_publisher(Odometry, '/odom', RELIABLE)
        self.pose_pub = self.node.create_publisher(PoseWithCovarianceStamped,
                                                   '/imposing_localizer/pose', RELIABLE)
        self.received = {'odometry': [], 'pose': [], 'prior': [], 'diagnostics': []}
        for name, kind in (('odometry', Odometry), ('pose', PoseWithCovarianceStamped),
                           ('prior', PoseWithCovarianceStamped)):
            self.node.create_subscription(kind, f'/imposing_motion_filter/{name}',
                                          self.received[name].append, RELIABLE)
        self.node.create_subscription(DiagnosticArray, '/diagnostics',
                                      self.received['diagnostics'].append, RELIABLE)
        self.executor = MultiThreadedExecutor(context=self.context)
        self.executor.add_node(self.filter)
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def wait(self, predicate, timeout=10.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(0.02)
        return False

    def wait_for_subscribers(self):
        assert self.wait(lambda: self.odom_pub.get_subscription_count() > 0 and
                         self.pose_pub.get_subscription_count() > 0)

    def close(self):
        self.executor.shutdown()
        self.filter.destroy_node()
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)
        self.thread.join(timeout=5)


@pytest.fixture
def harness():
    h = Harness()
    h.wait_for_subscribers()
    yield h
    h.close()


def odometry(t_ns, x, frame='odom', child='base_link'):
    msg = Odometry(child_frame_id=child)
    msg.header.frame_id, msg.header.stamp = frame, ns_to_stamp(t_ns)
    msg.pose.pose.position.x = float(x)
    msg.pose.pose.orientation.w = 1.0
    msg.twist.twist.linear.x = 5.0
    return msg


def measurement(t_ns, x, y, yaw, frame='map', var=0.04):
    msg = PoseWithCovarianceStamped()
    msg.header.frame_id, msg.header.stamp = frame, ns_to_stamp(t_ns)
    p, q = msg.pose.pose.position, msg.pose.pose.orientation
    p.x, p.y, q.z, q.w = float(x), float(y), math.sin(yaw / 2), math.cos(yaw / 2)
    msg.pose.covariance = list(np.diag([var, var, var, 1e-3, 1e-3, 1e-3]).ravel())
    return msg


def drive(h, start_ns, steps, x0=0.0):
    """10 Hz odometry, 0.5 m per step along odom x."""
    for k in range(steps):
        h.odom_pub.publish(odometry(start_ns + k * 10**8, x0 + 0.5 * k))
        time.sleep(0.005)


def test_fuses_odometry_and_late_poses(harness):
    h = harness
    t0 = 1_700_000_000 * 10**9
    # The map frame is the odom frame moved by (100, 50) and turned by 90 degrees.
    drive(h, t0, 5)
    h.pose_pub.publish(measurement(t0 + 2 * 10**8, 100.0, 50.0 + 1.0, math.pi / 2))  # late
    drive(h, t0 + 5 * 10**8, 20, x0=2.5)
    assert h.wait(lambda: h.received['pose'] and
                  h.received['pose'][-1].header.stamp.sec == (t0 + 24 * 10**8) // 10**9 and
                  h.received['pose'][-1].header.stamp.nanosec == (t0 + 24 * 10**8) % 10**9)
    last = h.received['pose'][-1]
    # 0.5 m per 0.1 s along odom x, i.e. along map +y, from y = 51 at t0 + 0.2 s
    assert last.header.frame_id == 'map'
    assert last.pose.pose.position.x == pytest.approx(100.0, abs=1e-6)
    assert last.pose.pose.position.y == pytest.approx(51.0 + 0.5 * 22, abs=1e-6)
    cov = np.array(last.pose.covariance).reshape(6, 6)
    assert np.isfinite(cov).all() and np.linalg.eigvalsh(cov).min() > 0
    odom_out = h.received['odometry'][-1]
    assert odom_out.header.frame_id == 'map' and odom_out.child_frame_id == 'base_link'
    assert odom_out.twist.twist.linear.x == 5.0
    assert h.wait(lambda: len(h.received['prior']) > 0)
    assert h.received['prior'][-1].header.frame_id == 'map'
    assert h.wait(lambda: any(
        kv.key == 'accepted' and kv.value == '1'
        for d in h.received['diagnostics'] for s in d.status for kv in s.values))


def test_bad_input_keeps_the_node_alive_and_publishes_nothing_wrong(harness):
    h = harness
    t0 = 1_700_000_100 * 10**9
    drive(h, t0, 3)
    bad = measurement(t0 + 10**8, 0.0, 0.0, 0.0)
    bad.pose.covariance[0] = float('nan')
    h.pose_pub.publish(bad)
    h.pose_pub.publish(measurement(t0 + 10**8, 0.0, 0.0, 0.0, frame='odom'))  # wrong frame
    h.odom_pub.publish(odometry(t0 + 3 * 10**8, 1.0, child='camera'))  # wrong child frame
    assert h.wait(lambda: any(
        kv.key == 'refused_pose' and kv.value == '2'
        for d in h.received['diagnostics'] for s in d.status for kv in s.values))
    assert not h.received['pose']  # never initialised by the bad poses
    # A good pose still works afterwards; then time goes backwards (a bag loop): reset.
    h.pose_pub.publish(measurement(t0 + 2 * 10**8, 5.0, 5.0, 0.0))
    drive(h, t0 + 3 * 10**8, 3, x0=1.5)
    assert h.wait(lambda: len(h.received['pose']) > 0)
    drive(h, t0 - 10**9, 2)
    assert h.wait(lambda: any(
        kv.key == 'resets' and kv.value == '1'
        for d in h.received['diagnostics'] for s in d.status for kv in s.values))
    count = len(h.received['pose'])
    drive(h, t0 - 10**9 + 2 * 10**8, 3)  # after the reset: no pose until a new measurement
    time.sleep(0.3)
    assert len(h.received['pose']) == count
