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
from rclpy.qos import QoSDurabilityPolicy, QoSProfile, QoSReliabilityPolicy  # noqa: E402
from rosgraph_msgs.msg import Clock  # noqa: E402

from imposing_ros.nodes.conversions import ns_to_stamp  # noqa: E402
from imposing_ros.nodes.motion_filter_node import MotionFilterNode  # noqa: E402

pytestmark = pytest.mark.ros
RELIABLE = QoSProfile(depth=50, reliability=QoSReliabilityPolicy.RELIABLE)


class Harness:
    """The filter node and a test node in one context, spun in a background thread."""

    def __init__(self, *overrides):
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.filter = MotionFilterNode(context=self.context, parameter_overrides=[
            Parameter('prior_rate', value=20.0), Parameter('diagnostic_period', value=0.2),
            *overrides])
        self.node = rclpy.create_node('filter_test_driver', context=self.context)
        self.clock_pub = self.node.create_publisher(Clock, '/clock', RELIABLE)
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

    def diagnostic(self, key, value):
        """Whether a /diagnostics message reported ``key == value``."""
        return any(kv.key == key and kv.value == value for d in self.received['diagnostics']
                   for s in d.status for kv in s.values)

    def latest(self, key):
        """The value of ``key`` in the latest /diagnostics message, or None."""
        for d in self.received['diagnostics'][-1:]:
            return next((kv.value for s in d.status for kv in s.values if kv.key == key), None)
        return None

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
def harness(request):
    h = Harness(*getattr(request, 'param', ()))
    h.wait_for_subscribers()
    yield h
    h.close()


def assert_sane(h):
    """Every output so far: map frame, finite values, positive definite covariance."""
    for msg in h.received['pose'] + h.received['prior'] + h.received['odometry']:
        assert msg.header.frame_id == 'map'
        p, q = msg.pose.pose.position, msg.pose.pose.orientation
        assert np.isfinite([p.x, p.y, p.z, q.x, q.y, q.z, q.w]).all()
        cov = np.array(msg.pose.covariance).reshape(6, 6)
        assert np.isfinite(cov).all() and np.linalg.eigvalsh(cov).min() > 0
    for msg in h.received['odometry']:
        t = msg.twist.twist
        assert np.isfinite([t.linear.x, t.linear.y, t.angular.z]).all()


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
    nan_twist = odometry(t0 + 3 * 10**8, 1.0)
    nan_twist.twist.twist.angular.z = float('nan')
    h.odom_pub.publish(nan_twist)
    assert h.wait(lambda: h.diagnostic('refused_pose', '2') and
                  h.diagnostic('refused_odometry', '2'))
    assert not h.received['pose'] and not h.received['prior']  # never initialised by bad poses
    # A good pose still works afterwards; then time goes backwards (a bag loop): reset.
    h.pose_pub.publish(measurement(t0 + 2 * 10**8, 5.0, 5.0, 0.0))
    drive(h, t0 + 3 * 10**8, 3, x0=1.5)
    # Fix x = 5 where odometry said x = 1.0; the last odometry (x = 2.5) is at t0 + 0.5 s.
    end = ns_to_stamp(t0 + 5 * 10**8)
    assert h.wait(lambda: h.received['pose'] and h.received['pose'][-1].header.stamp == end)
    assert h.received['pose'][-1].pose.pose.position.x == pytest.approx(5.0 + 1.5, abs=1e-3)
    drive(h, t0 - 10**9, 2)
    assert h.wait(lambda: h.diagnostic('resets', '1'))
    count = len(h.received['pose'])
    # After the reset no pose comes out of the old state: every output is built on the next
    # measurement (x = -20 where odometry says x = 1.0), whichever topic arrives first.
    t1 = t0 - 10**9
    drive(h, t1 + 2 * 10**8, 3)  # odometry x 0, 0.5, 1.0
    h.pose_pub.publish(measurement(t1 + 4 * 10**8, -20.0, 0.0, 0.0))
    drive(h, t1 + 5 * 10**8, 2, x0=2.5)  # odometry x 2.5, 3.0
    odom_x = {t1 + k * 10**8: x for k, x in ((4, 1.0), (5, 2.5), (6, 3.0))}
    assert h.wait(lambda: len(h.received['pose']) > count)
    for msg in h.received['pose'][count:]:
        stamp = msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec
        assert msg.pose.pose.position.x == pytest.approx(-20.0 + odom_x[stamp] - 1.0, abs=1e-3)
    assert h.wait(lambda: h.diagnostic('accepted', '1'))  # counted in the new run only
    assert_sane(h)


@pytest.mark.parametrize('harness', [(Parameter('use_sim_time', value=True),)], indirect=True)
def test_clock_jump_back_resets(harness):
    h = harness
    assert h.wait(lambda: h.clock_pub.get_subscription_count() > 0)
    # A bag player: /clock at 100 Hz from 200 s; later the bag loops back to 100 s.
    clock = {'ns': 200 * 10**9}

    def tick():
        clock['ns'] += 10**7
        h.clock_pub.publish(Clock(clock=ns_to_stamp(clock['ns'])))

    h.node.create_timer(0.01, tick)
    t0 = clock['ns'] + 10**8
    h.pose_pub.publish(measurement(t0, 1.0, 2.0, 0.0))
    drive(h, t0, 3)
    assert h.wait(lambda: h.received['pose'] and h.latest('initialized') == 'True')
    assert h.latest('resets') == '0'
    stamp = h.received['diagnostics'][-1].header.stamp.sec
    assert 200 <= stamp < 300  # sim time, not wall time
    clock['ns'] = 100 * 10**9  # the bag loops
    assert h.wait(lambda: h.latest('resets') == '1' and h.latest('initialized') == 'False')
    assert_sane(h)


@pytest.mark.parametrize('harness', [(Parameter('use_sim_time', value=True),)], indirect=True)
def test_future_stamps_are_refused_and_output_goes_on(harness):
    h = harness
    assert h.wait(lambda: h.clock_pub.get_subscription_count() > 0)
    clock = {'ns': 500 * 10**9}

    def tick():
        clock['ns'] += 10**7
        h.clock_pub.publish(Clock(clock=ns_to_stamp(clock['ns'])))

    h.node.create_timer(0.01, tick)
    assert h.wait(lambda: h.latest('resets') is not None)
    t0 = clock['ns']
    h.pose_pub.publish(measurement(t0, 1.0, 2.0, 0.0))
    drive(h, t0, 3)
    assert h.wait(lambda: h.received['pose'] and h.latest('initialized') == 'True')
    h.pose_pub.publish(measurement(t0 + 60 * 10**9, 9.0, 9.0, 0.0))  # a minute ahead
    h.odom_pub.publish(odometry(t0 + 86400 * 10**9, 1.0))  # a day ahead
    assert h.wait(lambda: h.diagnostic('refused_pose', '1') and
                  h.diagnostic('refused_odometry', '1'))
    # Nothing was reset, odometry still moves the output and the next real fix is fused.
    count = len(h.received['pose'])
    drive(h, t0 + 3 * 10**8, 3, x0=1.5)
    h.pose_pub.publish(measurement(t0 + 5 * 10**8, 1.0 + 2.5, 2.0, 0.0))
    drive(h, t0 + 6 * 10**8, 2, x0=3.0)
    assert h.wait(lambda: len(h.received['pose']) > count and h.latest('accepted') == '2')
    assert h.latest('resets') == '0'
    assert_sane(h)


@pytest.mark.parametrize('harness', [(Parameter('use_sim_time', value=True),)], indirect=True)
def test_no_subscription_has_qos_event_handlers(harness):
    """Not even rclpy's /clock one (use_sim_time); the clock still follows /clock.

    With rmw_fastrtps, a subscription's QoS event handlers wake the MultiThreadedExecutor in a
    loop while messages arrive (imposing_ros.nodes.events: this node under 40 Hz /clock and
    50 Hz /odom, 290-1,180 wake-ups/s with rclpy's default handlers, 130-145/s without), which
    starved inference in the demo's node process.
    """
    h = harness
    handlers = {sub.topic_name: len(sub.event_handlers) for sub in h.filter.subscriptions}
    assert {'/clock', '/odom'} <= set(handlers)
    assert not any(handlers.values()), handlers
    assert h.wait(lambda: h.clock_pub.get_subscription_count() > 0)
    h.clock_pub.publish(Clock(clock=ns_to_stamp(500 * 10**9)))
    assert h.wait(lambda: h.filter.get_clock().now().nanoseconds == 500 * 10**9)


@pytest.mark.parametrize('harness', [(Parameter('prior_rate', value=0.4),)], indirect=True)
def test_prior_is_latched_for_a_late_subscriber(harness):
    h = harness
    t0 = 1_700_000_200 * 10**9
    h.pose_pub.publish(measurement(t0, 3.0, 4.0, 0.5))
    drive(h, t0, 2)
    last = ns_to_stamp(t0 + 10**8)
    assert h.wait(lambda: h.received['prior'] and h.received['prior'][-1].header.stamp == last)
    late = []
    h.node.create_subscription(
        PoseWithCovarianceStamped, '/imposing_motion_filter/prior', late.append,
        QoSProfile(depth=1, reliability=QoSReliabilityPolicy.RELIABLE,
                   durability=QoSDurabilityPolicy.TRANSIENT_LOCAL))
    # Within 1 s, while the next publication is 2.5 s away: the late subscriber got the
    # latched one.
    assert h.wait(lambda: len(late) > 0, timeout=1.0)
    # One 0.5 m odometry step along the heading of 0.5 rad.
    assert late[0].header.stamp == last
    assert late[0].pose.pose.position.x == pytest.approx(3.0 + 0.5 * math.cos(0.5), abs=1e-6)
    assert late[0].pose.pose.position.y == pytest.approx(4.0 + 0.5 * math.sin(0.5), abs=1e-6)


def test_parameters_are_checked_and_filter_ones_apply_live(harness):
    f = harness.filter
    for name, value, why in (('filter.mahalanobis_threshold', -1.0, '>= 0'),
                             ('filter.history_s', 0.0, 'history_s'),  # FilterConfig refuses
                             ('prior_rate', 0.0, '> 0'),
                             ('odom_topic', ' ', 'empty')):
        result = f.set_parameters([Parameter(name, value=value)])[0]
        assert not result.successful and why in result.reason, (name, result.reason)
    result = f.set_parameters([Parameter('filter.mahalanobis_threshold', value=9.0)])[0]
    assert result.successful
    assert f.get_parameter('filter.mahalanobis_threshold').value == 9.0
    assert f._filter.config.mahalanobis_threshold == 9.0  # applied to the running filter
    descriptor = f.describe_parameter('filter.history_s')
    assert 'seconds' in descriptor.description and 'applied when set' in descriptor.description
    with pytest.raises(ValueError, match='reinit_after_rejections'):
        MotionFilterNode('bad_filter', context=harness.context, parameter_overrides=[
            Parameter('filter.reinit_after_rejections', value=-2)])
