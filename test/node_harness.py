"""Helpers of the node tests: a tiny checkpoint, a DDS harness and the node in a child process.

Imported by the test modules that drive the localizer over DDS (no test lives here).
"""

import math
import os
from pathlib import Path
import subprocess
import sys
import threading
import time

from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseWithCovarianceStamped
from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState, GetState
import numpy as np
from rcl_interfaces.srv import SetParameters
import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.parameter import Parameter
from rclpy.qos import (
    qos_profile_sensor_data,
    QoSDurabilityPolicy,
    QoSProfile,
    QoSReliabilityPolicy,
)
from sensor_msgs.msg import Image
from std_msgs.msg import Float32, String
from std_srvs.srv import Trigger
from visualization_msgs.msg import Marker, MarkerArray

NODE = 'imposing_localizer'
IMAGE_TOPIC = '/camera/image_raw'
PRIOR_TOPIC = '/imposing_motion_filter/prior'


# The search of the node tests: small enough for the tiny model on 2 cores. Eager: these tests
# check the node's ROS behaviour, and compiling the encoders and the search's steps costs about
# 8 s a node start on 2 cores; the compiled path is tested in test_backends.py, test_int8.py and
# by the demo tests (test_demo.py), whose node compiles as in production.
SMALL_SEARCH = {'search.num_candidates': 256, 'search.levels': 3, 'search.top_k': 16,
                'search.num_average': 32, 'min_score': 0.0, 'inductor': 'off'}


def write_params(path, localizer=None, **nodes):
    """Write a ROS 2 parameter file; return its path.

    The localizer gets ``SMALL_SEARCH`` updated with ``localizer``; ``nodes`` maps other node
    names to their parameters. Each node is keyed '/**/node' as in config/localizer.yaml (it
    matches in any namespace).
    """
    import yaml

    tree = {f'/**/{NODE}': {'ros__parameters': {**SMALL_SEARCH, **(localizer or {})}}}
    tree.update({f'/**/{name}': {'ros__parameters': p} for name, p in nodes.items()})
    path = Path(path)
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    return path


def build_tiny_checkpoint(path, length=100.0, scenes=('road',)):
    """A random tiny model over a SyntheticRoad map, saved as a real checkpoint.

    Every scene of ``scenes`` gets the same map (its own random pose encoder and head).
    """
    from imposing_ros.data.synthetic import SyntheticRoad
    from imposing_ros.model.checkpoint import save_checkpoint
    from imposing_ros.model.encoders import ModelConfig
    from imposing_ros.model.imposing import ImPosing
    from imposing_ros.training.trainer import build_scene_map

    road = SyntheticRoad(length=length)
    scene_map = build_scene_map(road.reference_poses(2.0), 256, seed=0)
    config = ModelConfig(backbone='resnet18', dim=32, image_size=(32, 64), pose_layers=2,
                         pose_width=64)
    return save_checkpoint(path, ImPosing(config, {name: scene_map for name in scenes}),
                           seed=0), road


def raw_image(array, encoding='rgb8', step=None):
    height, width = array.shape[:2]
    step = step or array.strides[0]
    return Image(height=height, width=width, encoding=encoding, step=step,
                 data=array.tobytes())


class Harness:
    """A test node in this process: publishers, recorders and service clients."""

    def __init__(self):
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node('localizer_test_harness', context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.cond = threading.Condition()
        self.poses, self.markers, self.scores, self.diagnostics = [], [], [], []
        self.scenes = []
        n = self.node
        n.create_subscription(PoseWithCovarianceStamped, f'/{NODE}/pose',
                              self._record(self.poses), 50)
        n.create_subscription(MarkerArray, f'/{NODE}/candidates', self._record(self.markers), 50)
        n.create_subscription(Float32, f'/{NODE}/score', self._record(self.scores), 50)
        n.create_subscription(DiagnosticArray, '/diagnostics', self._record(self.diagnostics), 50)
        n.create_subscription(String, f'/{NODE}/scene', self._record(self.scenes), QoSProfile(
            depth=1, reliability=QoSReliabilityPolicy.RELIABLE,
            durability=QoSDurabilityPolicy.TRANSIENT_LOCAL))
        self.image_pub = n.create_publisher(Image, IMAGE_TOPIC, qos_profile_sensor_data)
        self.prior_pub = n.create_publisher(PoseWithCovarianceStamped, PRIOR_TOPIC, 10)
        self.initial_pub = n.create_publisher(PoseWithCovarianceStamped, '/initialpose', 10)
        self.change = n.create_client(ChangeState, f'/{NODE}/change_state')
        self.get_state = n.create_client(GetState, f'/{NODE}/get_state')
        self.set_params = n.create_client(SetParameters, f'/{NODE}/set_parameters')
        self.relocalize = n.create_client(Trigger, f'/{NODE}/relocalize')
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def _record(self, store):
        def callback(msg):
            with self.cond:
                store.append((time.monotonic(), msg))
                self.cond.notify_all()
        return callback

    def wait_for(self, predicate, timeout=20.0, what='condition'):
        deadline = time.monotonic() + timeout
        with self.cond:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f'timed out after {timeout} s waiting for {what}')
                self.cond.wait(min(left, 0.1))

    def call(self, client, request, timeout=30.0):
        assert client.wait_for_service(timeout_sec=timeout), f'{client.srv_name} not available'
        future = client.call_async(request)
        deadline = time.monotonic() + timeout
        while not future.done():
            assert time.monotonic() < deadline, f'{client.srv_name} did not answer'
            time.sleep(0.01)
        return future.result()

    def wait_ready(self, timeout=30.0):
        """Ask get_state until the node answers.

        The DDS graph may still list a node of an earlier test (same name, same domain) until
        its participant lease runs out: wait_for_service then succeeds at once but the request
        goes nowhere. GetState is idempotent, so asking again is safe; transitions are not.
        """
        deadline = time.monotonic() + timeout
        while True:
            assert self.get_state.wait_for_service(timeout_sec=timeout), \
                f'{self.get_state.srv_name} not available'
            future = self.get_state.call_async(GetState.Request())
            answer_by = min(deadline, time.monotonic() + 2.0)
            while not future.done() and time.monotonic() < answer_by:
                time.sleep(0.01)
            if future.done():
                return future.result().current_state.id
            self.get_state.remove_pending_request(future)
            assert time.monotonic() < deadline, f'{self.get_state.srv_name} did not answer'

    def transition(self, transition_id):
        self.wait_ready()
        return self.call(self.change, ChangeState.Request(
            transition=Transition(id=transition_id))).success

    def state(self):
        return self.wait_ready()

    def set_param(self, name, value):
        msg = Parameter(name, value=value).to_parameter_msg()
        result = self.call(self.set_params, SetParameters.Request(parameters=[msg]))
        return result.results[0]

    def now(self):
        return self.node.get_clock().now()

    def publish_image(self, rgb, stamp=None, **override):
        msg = raw_image(rgb)
        for key, value in override.items():
            setattr(msg, key, value)
        msg.header.stamp = (stamp or self.now()).to_msg()
        msg.header.frame_id = 'camera_optical_frame'
        self.image_pub.publish(msg)
        return msg.header.stamp

    def pose_msg(self, xyz, yaw, frame='map', stamp=None,
                 var=(1.0, 1.0, 0.01, 0.001, 0.001, 0.05)):
        msg = PoseWithCovarianceStamped()
        msg.header.frame_id = frame
        msg.header.stamp = (stamp or self.now()).to_msg()
        p = msg.pose.pose
        p.position.x, p.position.y, p.position.z = (float(v) for v in xyz)
        p.orientation.z, p.orientation.w = math.sin(yaw / 2), math.cos(yaw / 2)
        msg.pose.covariance = np.diag(var).reshape(-1).tolist()
        return msg

    def poses_with_stamp(self, stamp):
        with self.cond:
            return [m for _, m in self.poses if m.header.stamp == stamp]

    def labels(self, since=0.0):
        """Mode labels ('global'/'tracking') of candidate arrays received after ``since``."""
        with self.cond:
            out = []
            for t, array in self.markers:
                if t < since:
                    continue
                for marker in array.markers:
                    if marker.type == Marker.TEXT_VIEW_FACING:
                        out.append(marker.text.split()[0])
            return out

    def diag_values(self):
        with self.cond:
            for _, array in reversed(self.diagnostics):
                for status in array.status:
                    if status.name.startswith(NODE):
                        return {kv.key: kv.value for kv in status.values}
        return {}

    def close(self):
        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)


class NodeProcess:
    """The localizer's real executable in a child process, its log kept in a file."""

    def __init__(self, params_file, log_path):
        self.log_path = Path(log_path)
        env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONUNBUFFERED='1')
        self.log = open(self.log_path, 'w')
        self.proc = subprocess.Popen(
            [sys.executable, '-m', 'imposing_ros.nodes.localizer_node', '--ros-args',
             '--params-file', str(params_file)],
            stdout=self.log, stderr=subprocess.STDOUT, env=env)

    def text(self):
        return self.log_path.read_text()

    def wait_log(self, needle, timeout=10.0):
        deadline = time.monotonic() + timeout
        while needle not in self.text():
            assert self.proc.poll() is None, f'node died:\n{self.text()[-3000:]}'
            assert time.monotonic() < deadline, f'{needle!r} not logged:\n{self.text()[-3000:]}'
            time.sleep(0.05)

    def rss_mb(self):
        for line in Path(f'/proc/{self.proc.pid}/status').read_text().splitlines():
            if line.startswith('VmRSS:'):
                return int(line.split()[1]) / 1024
        raise AssertionError('no VmRSS')

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def frame(road, x=30.0, forward=True):
    return road.image(x, forward)


def localize(harness, road, x=30.0, attempts=5):
    """Publish frames until one comes back as a pose; return (stamp, pose message)."""
    for _ in range(attempts):
        stamp = harness.publish_image(frame(road, x))
        try:
            harness.wait_for(lambda s=stamp: harness.poses_with_stamp(s), timeout=5.0,
                             what='pose')
        except AssertionError:
            continue  # best-effort image QoS: a frame may be lost, send another
        return stamp, harness.poses_with_stamp(stamp)[0]
    raise AssertionError('no pose for any of the frames sent')


