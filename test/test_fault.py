"""Fault test: the localizer process dies mid-run and comes back; the filter carries on.

Real processes over DDS: the localizer (``imposing-ros run --use-filter false``, a tiny random
model) and the motion filter (its own executable); this test plays a robot: 20 Hz odometry and
5 Hz camera images. While the localizer is gone the filter keeps publishing from odometry and
says in /diagnostics that no pose has been fused; when it is back, its poses are fused again.
"""

import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

rclpy = pytest.importorskip('rclpy')

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus  # noqa: E402
from geometry_msgs.msg import PoseWithCovarianceStamped  # noqa: E402
from nav_msgs.msg import Odometry  # noqa: E402
from node_harness import build_tiny_checkpoint, write_params  # noqa: E402
from rclpy.qos import qos_profile_sensor_data  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402

DOMAIN = '86'
FILTER = 'imposing_motion_filter'


class Robot:
    """Odometry and images of a vehicle driving along the synthetic road; records outputs."""

    def __init__(self, road):
        self.road = road
        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=int(DOMAIN))
        self.node = rclpy.create_node('robot', context=self.context)
        self.odom_pub = self.node.create_publisher(Odometry, '/odom', 10)
        self.image_pub = self.node.create_publisher(Image, '/camera/image_raw',
                                                    qos_profile_sensor_data)
        self.lock = threading.Lock()
        self.filter_poses, self.localizer_poses, self.status = [], [], None
        self.node.create_subscription(PoseWithCovarianceStamped, f'/{FILTER}/pose',
                                      lambda m: self._add(self.filter_poses, m), 100)
        self.node.create_subscription(PoseWithCovarianceStamped, '/imposing_localizer/pose',
                                      lambda m: self._add(self.localizer_poses, m), 100)
        self.node.create_subscription(DiagnosticArray, '/diagnostics', self._on_diag, 10)
        self.executor = rclpy.executors.SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.x, self.tick = 20.0, 0
        self.node.create_timer(0.05, self._drive)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def _add(self, store, msg):
        with self.lock:
            store.append(msg)

    def _on_diag(self, msg):
        for status in msg.status:
            if status.name.startswith(FILTER):
                with self.lock:
                    self.status = (status.level, status.message,
                                   {kv.key: kv.value for kv in status.values})

    def _drive(self):
        """20 Hz: odometry of base_link moving 0.25 m a tick; every 4th tick an image."""
        self.tick += 1
        self.x = 20.0 + (0.25 * self.tick) % 60.0
        stamp = self.node.get_clock().now().to_msg()
        odom = Odometry(child_frame_id='base_link')
        odom.header.frame_id, odom.header.stamp = 'odom', stamp
        odom.pose.pose.position.x, odom.pose.pose.orientation.w = 0.25 * self.tick, 1.0
        odom.twist.twist.linear.x = 5.0
        self.odom_pub.publish(odom)
        if self.tick % 4 == 0:
            rgb = self.road.image(self.x, True)
            msg = Image(height=rgb.shape[0], width=rgb.shape[1], encoding='rgb8',
                        step=rgb.shape[1] * 3, data=rgb.tobytes())
            msg.header.stamp, msg.header.frame_id = stamp, 'camera_link'
            self.image_pub.publish(msg)

    def snapshot(self):
        with self.lock:
            return len(self.filter_poses), len(self.localizer_poses), self.status

    def wait(self, predicate, timeout, what):
        deadline = time.monotonic() + timeout
        while not predicate(*self.snapshot()):
            assert time.monotonic() < deadline, f'{what}: {self.snapshot()}'
            time.sleep(0.1)

    def close(self):
        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)


def start_localizer(params, env):
    return subprocess.Popen([sys.executable, '-m', 'imposing_ros.cli', 'run', '--params',
                             str(params), '--use-filter', 'false'], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@pytest.mark.ros
@pytest.mark.slow
def test_filter_rides_out_a_localizer_crash(tmp_path):
    model, road = build_tiny_checkpoint(tmp_path / 'tiny.pt')
    params = write_params(
        tmp_path / 'params.yaml',
        {'model_path': str(model), 'image_topic': '/camera/image_raw', 'tracking.enabled': False,
         'camera_extrinsic.xyz': [1.0, 0.0, 1.5]},
        **{FILTER: {'odom_topic': '/odom', 'pose_topic': '/imposing_localizer/pose',
                    'stale_after': 1.0, 'diagnostic_period': 0.25}})
    env = dict(os.environ, ROS_DOMAIN_ID=DOMAIN, ROS_AUTOMATIC_DISCOVERY_RANGE='LOCALHOST',
               OMP_NUM_THREADS='1')
    filt = subprocess.Popen([sys.executable, '-m', 'imposing_ros.nodes.motion_filter_node',
                             '--ros-args', '--params-file', str(params)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    localizer = start_localizer(params, env)
    robot = Robot(road)
    try:
        # Running: the filter fuses the localizer's poses.
        robot.wait(lambda f, n, s: n >= 3 and s and s[0] == DiagnosticStatus.OK and
                   int(s[2]['accepted']) >= 2, 120, 'filter never fused a pose')
        localizer.send_signal(signal.SIGKILL)  # a crash: no clean shutdown
        localizer.wait(timeout=10)
        # Gone: /diagnostics flags the gap, odometry alone moves the output, nothing is fused.
        robot.wait(lambda f, n, s: s[0] == DiagnosticStatus.WARN and
                   s[1].startswith('no pose fused for'), 10, 'no stale warning')
        filter_before, localizer_before, status = robot.snapshot()
        accepted = int(status[2]['accepted'])
        time.sleep(1.5)
        filter_now, localizer_now, status = robot.snapshot()
        assert localizer_now == localizer_before
        assert filter_now - filter_before >= 20  # 20 Hz odometry for 1.5 s
        assert int(status[2]['accepted']) == accepted and status[0] == DiagnosticStatus.WARN
        # Back: its poses are fused again and the warning clears.
        localizer = start_localizer(params, env)
        robot.wait(lambda f, n, s: n > localizer_now and s[0] == DiagnosticStatus.OK and
                   int(s[2]['accepted']) > accepted, 120, 'localizer not taken back')
        assert filt.poll() is None
        assert np.isfinite(robot.filter_poses[-1].pose.pose.position.x)
    finally:
        robot.close()
        for proc in (localizer, filt):
            if proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=20)
