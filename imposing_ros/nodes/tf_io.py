"""The localizer's TF: the camera extrinsic in (parameters or TF) and map -> odom out.

map -> odom is ``T_map_base @ inv(T_odom_base)`` with ``T_odom_base`` at the image stamp,
stamped with the image stamp plus ``transform_tolerance`` (post-dated, as AMCL does). How TF
is read and written depends on what is installed:

* tf2_ros (a ROS 2 install): a tf2 ``Buffer`` and ``TransformListener`` (``T_odom_base``, and
  the extrinsic with ``camera_extrinsic.from_tf``), a ``TransformBroadcaster`` for map -> odom.
* tf2_msgs without tf2_ros (pip installs: ``make setup`` builds a tf2_msgs holding only
  ``TFMessage`` with ``tools/build_tf2_msgs.sh``; docs/design.md, "TF without tf2_ros"): the
  node publishes ``TFMessage`` itself, map -> odom on ``/tf`` (reliable, volatile, depth 100,
  like tf2_ros's broadcaster) and, when the extrinsic comes from the parameters,
  ``base_frame -> camera_frame`` once on ``/tf_static`` (reliable, transient local, depth 1,
  like tf2_ros's static broadcaster). ``T_odom_base`` comes from the ``odom_frame ->
  base_frame`` transforms on ``/tf``, kept for :data:`CACHE_S` in an :class:`EdgeBuffer` and
  interpolated as tf2 does; that edge must be published directly (no chain through other
  frames), and ``camera_extrinsic.from_tf`` still needs tf2_ros.
* neither: nothing is published (said once at configure).

Nothing is published on TF when ``publish_tf`` is false.
"""

from __future__ import annotations

import bisect
import threading
import time

from geometry_msgs.msg import Quaternion, TransformStamped, Vector3
import numpy as np
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.duration import Duration
from rclpy.qos import QoSDurabilityPolicy, QoSHistoryPolicy, QoSProfile, QoSReliabilityPolicy
from rclpy.time import Time

from imposing_ros.data.pose_track import frame_name, PoseTrack
from imposing_ros.geometry import (
    extrinsic_matrix,
    matrix_to_pose,
    pose_to_matrix,
    quat_xyzw_to_matrix,
    T_camera_optical,
)
from imposing_ros.utils import stamp_to_ns

try:
    import tf2_ros
except ImportError:  # pragma: no cover - depends on the installation
    tf2_ros = None
try:  # a ROS 2 install, or tools/build_tf2_msgs.sh in a pip venv
    from tf2_msgs.msg import TFMessage
except ImportError:  # pragma: no cover - depends on the installation
    TFMessage = None

# How long the inference thread waits for a transform at an image stamp.
TF_LOOKUP_TIMEOUT_S = 0.1
# Without tf2_ros: seconds of odom -> base kept (tf2's default cache time).
CACHE_S = 10.0
# The QoS of tf2_ros's TransformBroadcaster / TransformListener (/tf) and
# StaticTransformBroadcaster (/tf_static).
TF_QOS = QoSProfile(depth=100, reliability=QoSReliabilityPolicy.RELIABLE,
                    durability=QoSDurabilityPolicy.VOLATILE, history=QoSHistoryPolicy.KEEP_LAST)
TF_STATIC_QOS = QoSProfile(depth=1, reliability=QoSReliabilityPolicy.RELIABLE,
                           durability=QoSDurabilityPolicy.TRANSIENT_LOCAL,
                           history=QoSHistoryPolicy.KEEP_LAST)


class EdgeBuffer:
    """One TF edge ``T_parent_child`` over the last ``cache_s`` seconds, read at any stamp.

    Written here because tf2's buffer is not installable without ROS (tf2_ros and tf2_py are
    not on PyPI). Like tf2: linear interpolation of the position and slerp of the rotation
    (:class:`imposing_ros.data.pose_track.PoseTrack`) between the samples around the stamp, no
    extrapolation, samples older than ``cache_s`` before the newest forgotten. A sample that
    old on arrival means the clock went back (a bag played again): the buffer starts over.
    Thread-safe: samples come from the executor, lookups from the inference thread.
    """

    def __init__(self, cache_s: float = CACHE_S):
        self._cache_ns = int(cache_s * 1e9)
        self._cond = threading.Condition()
        self._stamps: list[int] = []  # ns, strictly increasing
        self._poses: list[np.ndarray] = []  # (tx, ty, tz, qx, qy, qz, qw)

    def add(self, stamp_ns: int, pose) -> bool:
        """Keep one sample (a pose ``[7]``, quaternion x, y, z, w); False if it is unusable."""
        pose = np.asarray(pose, dtype=np.float64).reshape(7)
        norm = np.linalg.norm(pose[3:])
        if not np.isfinite(pose).all() or norm < 1e-6:
            return False
        pose[3:] /= norm
        with self._cond:
            stamps, poses = self._stamps, self._poses
            if stamps and stamp_ns < stamps[-1] - self._cache_ns:
                stamps.clear()
                poses.clear()
            i = bisect.bisect_left(stamps, stamp_ns)
            if i < len(stamps) and stamps[i] == stamp_ns:
                poses[i] = pose  # the same stamp again: the newest value wins
            else:
                stamps.insert(i, stamp_ns)
                poses.insert(i, pose)
            old = bisect.bisect_left(stamps, stamps[-1] - self._cache_ns)
            del stamps[:old], poses[:old]
            self._cond.notify_all()
        return True

    def lookup(self, stamp_ns: int, timeout_s: float = 0.0) -> np.ndarray:
        """The pose ``[7]`` at ``stamp_ns``; LookupError with the reason when there is none.

        Waits up to ``timeout_s`` for a sample at or after the stamp, as tf2's lookup does.
        """
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while not self._stamps or self._stamps[-1] < stamp_ns:
                left = deadline - time.monotonic()
                if left <= 0:
                    if not self._stamps:
                        raise LookupError('no transform received')
                    ahead = (stamp_ns - self._stamps[-1]) * 1e-9
                    raise LookupError(f'the newest transform is {ahead:.3f} s older than the '
                                      'stamp (no extrapolation)')
                self._cond.wait(left)
            if stamp_ns < self._stamps[0]:
                behind = (self._stamps[0] - stamp_ns) * 1e-9
                raise LookupError(f'the oldest transform kept is {behind:.3f} s newer than the '
                                  'stamp')
            track = PoseTrack(np.asarray(self._stamps, dtype=np.int64), np.stack(self._poses))
        poses, _ = track.at(np.array([stamp_ns], dtype=np.int64), self._cache_ns)
        return poses[0]


class TfIO:
    """TF of one configured localizer (``settings``: the node's parameter values)."""

    def __init__(self, node, settings):
        if settings.camera_extrinsic_from_tf and tf2_ros is None:
            raise ValueError('camera_extrinsic.from_tf needs tf2_ros, which is not installed; '
                             'set camera_extrinsic.xyz/rpy instead')
        self._node = node
        self._extrinsic = None if settings.camera_extrinsic_from_tf else extrinsic_matrix(
            settings.camera_extrinsic_xyz, settings.camera_extrinsic_rpy,
            settings.camera_extrinsic_optical)
        self._buffer = self._listener = self._broadcaster = None
        # Without tf2_ros: the odom -> base edge, /tf and /tf_static publishers, /tf reader.
        self._odom_base = self._tf_pub = self._static_pub = self._tf_sub = None
        if tf2_ros is not None and (settings.publish_tf or settings.camera_extrinsic_from_tf):
            self._buffer = tf2_ros.Buffer()
            self._listener = tf2_ros.TransformListener(self._buffer, node)
            if settings.publish_tf:
                self._broadcaster = tf2_ros.TransformBroadcaster(node)
        elif settings.publish_tf and TFMessage is not None:
            self._start_without_tf2_ros(settings)
        elif settings.publish_tf:
            node.get_logger().info('neither tf2_ros nor tf2_msgs is installed: map->odom is not '
                                   'published (tools/build_tf2_msgs.sh builds tf2_msgs)')

    def _start_without_tf2_ros(self, s) -> None:
        node = self._node
        try:
            self._tf_pub = node.create_publisher(TFMessage, '/tf', TF_QOS)
        except Exception as exc:  # rclpy raises several types when a type support is missing
            raise ValueError(f'tf2_msgs imports but its type support does not load ({exc}): '
                             'run tools/build_tf2_msgs.sh again, or set publish_tf false') from exc
        self._odom_base = EdgeBuffer()
        self._frames = (frame_name(s.odom_frame), frame_name(s.base_frame))
        # Own callback group: /tf may be busy, and lookups wait for it from inference.
        self._tf_sub = node.create_subscription(
            TFMessage, '/tf', self._on_tf, TF_QOS,
            callback_group=MutuallyExclusiveCallbackGroup())
        if self._extrinsic is not None:  # known from the parameters: tell TF, once, latched
            self._static_pub = node.create_publisher(TFMessage, '/tf_static', TF_STATIC_QOS)
            t_base_frame = extrinsic_matrix(s.camera_extrinsic_xyz, s.camera_extrinsic_rpy,
                                            optical=False)  # camera_frame as named
            self._static_pub.publish(TFMessage(transforms=[_transform_message(
                t_base_frame, node.get_clock().now().to_msg(), s.base_frame,
                s.camera_frame)]))
        node.get_logger().info(
            f'tf2_ros is not installed: map->odom on /tf with tf2_msgs, {s.odom_frame}->'
            f'{s.base_frame} read from /tf (a direct transform, no chain)')

    def _on_tf(self, msg) -> None:
        for tf in msg.transforms:
            if (frame_name(tf.header.frame_id), frame_name(tf.child_frame_id)) == self._frames:
                tr, rot = tf.transform.translation, tf.transform.rotation
                self._odom_base.add(stamp_to_ns(tf.header.stamp),
                                    [tr.x, tr.y, tr.z, rot.x, rot.y, rot.z, rot.w])

    def close(self) -> None:
        """Destroy what the tf2_ros-free path created on the node (idempotent)."""
        for destroy, entity in ((self._node.destroy_subscription, self._tf_sub),
                                (self._node.destroy_publisher, self._tf_pub),
                                (self._node.destroy_publisher, self._static_pub)):
            if entity is not None:
                destroy(entity)
        self._tf_sub = self._tf_pub = self._static_pub = None

    def camera_extrinsic(self, s) -> np.ndarray | None:
        """``T_base_camera`` (body frame), from the parameters or once from TF; None yet."""
        if self._extrinsic is None and self._buffer is not None:
            try:
                tf = self._buffer.lookup_transform(s.base_frame, s.camera_frame, Time(),
                                                   Duration(seconds=TF_LOOKUP_TIMEOUT_S))
            except Exception:  # tf2 raises several lookup exception types
                return None
            tr, rot = tf.transform.translation, tf.transform.rotation
            matrix = np.eye(4)
            matrix[:3, :3] = quat_xyzw_to_matrix([rot.x, rot.y, rot.z, rot.w])
            matrix[:3, 3] = [tr.x, tr.y, tr.z]
            if s.camera_extrinsic_optical:
                matrix = matrix @ np.linalg.inv(T_camera_optical())
            self._extrinsic = matrix
        return self._extrinsic

    def publish_map_odom(self, t_map_base: np.ndarray, stamp: Time, s, map_frame: str) -> None:
        """map->odom = T_map_base @ inv(T_odom_base at the image stamp), post-dated (AMCL)."""
        if self._broadcaster is None and self._tf_pub is None:
            return
        try:
            t_odom_base = self._odom_base_at(stamp, s)
        except Exception as exc:  # tf2 raises several lookup exception types
            self._node.get_logger().warning(
                f'no {s.odom_frame}->{s.base_frame} at the image stamp, map->odom not updated: '
                f'{exc}', throttle_duration_sec=5.0)
            return
        out = _transform_message(t_map_base @ np.linalg.inv(t_odom_base),
                                 (stamp + Duration(seconds=s.transform_tolerance)).to_msg(),
                                 map_frame, s.odom_frame)
        if self._broadcaster is not None:
            self._broadcaster.sendTransform(out)
        else:
            self._tf_pub.publish(TFMessage(transforms=[out]))

    def _odom_base_at(self, stamp: Time, s) -> np.ndarray:
        """``T_odom_base`` 4x4 at ``stamp``; raises when TF has none."""
        if self._buffer is not None:
            tf = self._buffer.lookup_transform(s.odom_frame, s.base_frame, stamp,
                                               Duration(seconds=TF_LOOKUP_TIMEOUT_S))
            tr, rot = tf.transform.translation, tf.transform.rotation
            return pose_to_matrix([tr.x, tr.y, tr.z, rot.x, rot.y, rot.z, rot.w])
        return pose_to_matrix(self._odom_base.lookup(stamp.nanoseconds, TF_LOOKUP_TIMEOUT_S))


def odometry_tf_publisher(node):
    """A function publishing the pose of a nav_msgs/Odometry on ``/tf``; None without TFMessage.

    ``publish(odometry)`` sends ``header.frame_id -> child_frame_id`` (rclpy or rosbags
    message) at the odometry's stamp.
    """
    if TFMessage is None:
        return None
    publisher = node.create_publisher(TFMessage, '/tf', TF_QOS)

    def publish(odometry) -> None:
        p, q = odometry.pose.pose.position, odometry.pose.pose.orientation
        out = TransformStamped()
        out.header.stamp.sec = odometry.header.stamp.sec
        out.header.stamp.nanosec = odometry.header.stamp.nanosec
        out.header.frame_id, out.child_frame_id = odometry.header.frame_id, odometry.child_frame_id
        out.transform.translation = Vector3(x=p.x, y=p.y, z=p.z)
        out.transform.rotation = Quaternion(x=q.x, y=q.y, z=q.z, w=q.w)
        publisher.publish(TFMessage(transforms=[out]))
    return publish


def _transform_message(t_parent_child: np.ndarray, stamp, parent: str,
                       child: str) -> TransformStamped:
    """geometry_msgs/TransformStamped of a 4x4 ``T_parent_child`` (stamp: a Time message)."""
    pose = matrix_to_pose(t_parent_child)
    out = TransformStamped()
    out.header.stamp = stamp
    out.header.frame_id, out.child_frame_id = parent, child
    out.transform.translation = Vector3(x=pose[0], y=pose[1], z=pose[2])
    out.transform.rotation = Quaternion(x=pose[3], y=pose[4], z=pose[5], w=pose[6])
    return out
