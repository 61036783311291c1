"""TF without tf2_ros: the localizer publishes map->odom on /tf with tf2_msgs' TFMessage.

The buffer of odom->base is tested alone; then over real DDS the localizer runs in its own
process with tf2_ros hidden (the path of pip installs, also where tf2_ros exists): the test
publishes odom->base_link on /tf around an image's stamp and reads map->odom from /tf and the
camera extrinsic from /tf_static. tf2_msgs comes from a ROS 2 install or, in a pip venv, from
tools/build_tf2_msgs.sh (``make setup``).
"""

import math
import os
import subprocess
import sys
import time

import numpy as np
import pytest

pytest.importorskip('rclpy')
pytest.importorskip('tf2_msgs.msg', reason='tf2_msgs is not installed (tools/build_tf2_msgs.sh '
                    'builds it into a pip venv)')

from geometry_msgs.msg import TransformStamped  # noqa: E402
from lifecycle_msgs.msg import Transition  # noqa: E402
from node_harness import (  # noqa: E402
    build_tiny_checkpoint,
    frame,
    Harness,
    NODE,
)
from rclpy.duration import Duration  # noqa: E402
from tf2_msgs.msg import TFMessage  # noqa: E402

from imposing_ros.data.pose_track import slerp  # noqa: E402
from imposing_ros.geometry import (  # noqa: E402
    extrinsic_matrix,
    matrix_to_pose,
    pose_to_matrix,
)
from imposing_ros.nodes.tf_io import EdgeBuffer, TF_QOS, TF_STATIC_QOS  # noqa: E402
from imposing_ros.utils import stamp_to_ns  # noqa: E402

TOLERANCE_S = 0.25  # transform_tolerance of the node under test: map->odom post-dating
POST_DATED_NS = 250_000_000
XYZ, RPY = [1.0, 0.2, 1.5], [0.0, 0.1, 0.05]  # camera_link in base_link


def _yaw_pose(x, y, yaw):
    return [x, y, 0.0, 0.0, 0.0, math.sin(yaw / 2), math.cos(yaw / 2)]


# --- the buffer alone -------------------------------------------------------------------------

def test_edge_buffer_interpolates_and_refuses_extrapolation():
    buf = EdgeBuffer(cache_s=1.0)
    assert buf.add(1_000_000_000, _yaw_pose(0.0, 0.0, 0.0))
    assert buf.add(2_000_000_000, _yaw_pose(2.0, 4.0, 1.0))
    assert not buf.add(3_000_000_000, [0, 0, 0, 0, 0, 0, 0])  # zero quaternion: refused
    assert not buf.add(3_000_000_000, [math.nan, 0, 0, 0, 0, 0, 1])
    assert np.allclose(buf.lookup(1_500_000_000), _yaw_pose(1.0, 2.0, 0.5))
    assert np.allclose(buf.lookup(2_000_000_000), _yaw_pose(2.0, 4.0, 1.0))
    with pytest.raises(LookupError, match='newest transform is 0.500 s older'):
        buf.lookup(2_500_000_000)
    with pytest.raises(LookupError, match='oldest transform kept is 0.500 s newer'):
        buf.lookup(500_000_000)
    # Out of order and repeated stamps; samples older than the cache go.
    assert buf.add(1_200_000_000, _yaw_pose(5.0, 0.0, 0.0))
    assert buf.add(2_000_000_000, _yaw_pose(3.0, 4.0, 1.0))
    assert np.allclose(buf.lookup(1_200_000_000), _yaw_pose(5.0, 0.0, 0.0))
    assert np.allclose(buf.lookup(2_000_000_000), _yaw_pose(3.0, 4.0, 1.0))
    assert buf.add(2_900_000_000, _yaw_pose(3.0, 4.0, 1.0))
    with pytest.raises(LookupError, match='oldest'):
        buf.lookup(1_500_000_000)
    # Far older than the newest: the clock went back (bag replayed), the buffer starts over.
    assert buf.add(100, _yaw_pose(7.0, 0.0, 0.0))
    assert np.allclose(buf.lookup(100), _yaw_pose(7.0, 0.0, 0.0))
    with pytest.raises(LookupError, match='newest'):
        buf.lookup(2_000_000_000)


def test_edge_buffer_waits_for_a_newer_sample():
    import threading

    buf = EdgeBuffer()
    with pytest.raises(LookupError, match='no transform received'):
        buf.lookup(10, timeout_s=0.01)
    buf.add(0, _yaw_pose(0.0, 0.0, 0.0))
    timer = threading.Timer(0.05, buf.add, (1000, _yaw_pose(1.0, 0.0, 0.0)))
    timer.start()
    started = time.monotonic()
    assert np.allclose(buf.lookup(500, timeout_s=2.0), _yaw_pose(0.5, 0.0, 0.0))
    assert time.monotonic() - started < 1.0
    timer.join()


# --- the node over DDS ------------------------------------------------------------------------

# The localizer's real main, with tf2_ros hidden from tf_io whether or not it is installed.
NODE_MAIN = ('import imposing_ros.nodes.tf_io as tf_io; tf_io.tf2_ros = None; '
             'from imposing_ros.nodes.localizer_node import main; main()')


@pytest.fixture(scope='module')
def node_without_tf2_ros(tmp_path_factory):
    """(harness, road, /tf records, /tf_static records) with the localizer active."""
    folder = tmp_path_factory.mktemp('tf_pip')
    path, road = build_tiny_checkpoint(folder / 'tiny.pt')
    params = folder / 'params.yaml'
    params.write_text(f"""/**/{NODE}:
  ros__parameters:
    model_path: {path}
    backend: torch
    inductor: 'off'
    search.num_candidates: 64
    search.levels: 2
    search.top_k: 8
    search.num_average: 16
    min_score: 0.0
    max_image_age: 2.0
    transform_tolerance: {TOLERANCE_S}
    camera_extrinsic.xyz: {XYZ}
    camera_extrinsic.rpy: {RPY}
    diagnostic_period: 0.5
""")
    log_path = folder / 'node.log'
    with open(log_path, 'w') as log:
        proc = subprocess.Popen(
            [sys.executable, '-c', NODE_MAIN, '--ros-args', '--params-file', str(params)],
            stdout=log, stderr=subprocess.STDOUT,
            env=dict(os.environ, OMP_NUM_THREADS='1', PYTHONUNBUFFERED='1'))
    harness = Harness()
    tf, tf_static = [], []
    n = harness.node
    n.create_subscription(TFMessage, '/tf', harness._record(tf), TF_QOS)
    n.create_subscription(TFMessage, '/tf_static', harness._record(tf_static), TF_STATIC_QOS)
    harness.tf_pub = n.create_publisher(TFMessage, '/tf', TF_QOS)
    try:
        assert harness.transition(Transition.TRANSITION_CONFIGURE), log_path.read_text()[-3000:]
        assert harness.transition(Transition.TRANSITION_ACTIVATE)
        deadline = time.monotonic() + 20
        while (harness.image_pub.get_subscription_count() == 0
               or harness.tf_pub.get_subscription_count() < 2):  # the node's /tf and ours
            assert time.monotonic() < deadline, 'the localizer never subscribed'
            time.sleep(0.05)
        yield harness, road, tf, tf_static, log_path
    finally:
        harness.close()
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _odom_base(stamp, pose):
    tf = TransformStamped()
    tf.header.stamp = stamp.to_msg()
    tf.header.frame_id, tf.child_frame_id = 'odom', 'base_link'
    t = tf.transform
    t.translation.x, t.translation.y, t.translation.z = (float(v) for v in pose[:3])
    t.rotation.x, t.rotation.y, t.rotation.z, t.rotation.w = (float(v) for v in pose[3:])
    return tf


def _map_odom(records, image_stamp):
    """map->odom transforms received on /tf for an image: stamped image stamp + tolerance."""
    return [t for _, m in records for t in m.transforms if t.child_frame_id == 'odom'
            and stamp_to_ns(t.header.stamp) == stamp_to_ns(image_stamp) + POST_DATED_NS]


def _matrix(transform):
    t, q = transform.translation, transform.rotation
    return pose_to_matrix([t.x, t.y, t.z, q.x, q.y, q.z, q.w])


@pytest.mark.ros
def test_map_odom_on_tf_and_extrinsic_on_tf_static(node_without_tf2_ros):
    harness, road, tf, tf_static, log_path = node_without_tf2_ros
    # Latched: the extrinsic from the parameters, base_link -> camera_link.
    harness.wait_for(lambda: tf_static, timeout=10.0, what='/tf_static')
    (static,) = tf_static[0][1].transforms
    assert (static.header.frame_id, static.child_frame_id) == ('base_link', 'camera_link')
    assert np.allclose(_matrix(static.transform), extrinsic_matrix(XYZ, RPY, optical=False),
                       atol=1e-9)

    # odom -> base_link before and after the image stamp; map->odom needs it interpolated.
    before, after = _yaw_pose(10.0, -2.0, 0.3), _yaw_pose(10.8, -1.6, 0.5)
    for _ in range(5):
        stamp = harness.now()
        harness.tf_pub.publish(TFMessage(transforms=[
            _odom_base(stamp - Duration(seconds=0.1), before)]))
        harness.tf_pub.publish(TFMessage(transforms=[
            _odom_base(stamp + Duration(seconds=0.1), after)]))
        time.sleep(0.05)  # let /tf arrive before the image (different topics)
        image_stamp = harness.publish_image(frame(road, 30.0), stamp=stamp)
        try:
            harness.wait_for(lambda s=image_stamp: _map_odom(tf, s) and
                             harness.poses_with_stamp(s), timeout=5.0,
                             what='map->odom and the pose')
            break
        except AssertionError:
            continue  # best-effort image QoS: a frame may be lost, send another
    else:
        raise AssertionError(f'no map->odom for any image:\n{log_path.read_text()[-3000:]}')

    (out,) = _map_odom(tf, image_stamp)
    assert out.header.frame_id == 'map'
    pose = harness.poses_with_stamp(image_stamp)[0].pose.pose
    p, q = pose.position, pose.orientation
    t_map_base = pose_to_matrix([p.x, p.y, p.z, q.x, q.y, q.z, q.w])
    # T_odom_base at the image stamp, halfway between the two samples.
    middle = np.concatenate([(np.array(before[:3]) + after[:3]) / 2,
                             slerp([before[3:]], [after[3:]], [0.5])[0]])
    assert np.allclose(middle[3:], _yaw_pose(0, 0, 0.4)[3:])
    expected = t_map_base @ np.linalg.inv(pose_to_matrix(middle))
    assert np.allclose(_matrix(out.transform), expected, atol=1e-6), (
        matrix_to_pose(_matrix(out.transform)), matrix_to_pose(expected))
    assert 'tf2_ros is not installed: map->odom on /tf with tf2_msgs' in log_path.read_text()
