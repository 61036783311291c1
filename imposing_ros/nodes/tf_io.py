"""The localizer's TF: the camera extrinsic in (parameters or TF) and map -> odom out.

tf2_ros exists on a ROS install only; without it the extrinsic comes from the parameters and no
map -> odom is published (said once at configure).
"""

from __future__ import annotations

from geometry_msgs.msg import Quaternion, TransformStamped, Vector3
import numpy as np
from rclpy.duration import Duration
from rclpy.time import Time

from imposing_ros.geometry import (
    extrinsic_matrix,
    matrix_to_pose,
    pose_to_matrix,
    quat_xyzw_to_matrix,
    T_camera_optical,
)

try:
    import tf2_ros
except ImportError:  # pragma: no cover - depends on the installation
    tf2_ros = None

# How long the inference thread waits for a transform at an image stamp.
TF_LOOKUP_TIMEOUT_S = 0.1


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
        if tf2_ros is not None and (settings.publish_tf or settings.camera_extrinsic_from_tf):
            self._buffer = tf2_ros.Buffer()
            self._listener = tf2_ros.TransformListener(self._buffer, node)
            if settings.publish_tf:
                self._broadcaster = tf2_ros.TransformBroadcaster(node)
        elif settings.publish_tf:
            node.get_logger().info('tf2_ros is not installed: map->odom is not published')

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

    def publish_map_odom(self, t_map_base: np.ndarray, stamp: Time, s) -> None:
        """map->odom = T_map_base @ inv(T_odom_base at the image stamp), post-dated (AMCL)."""
        if self._broadcaster is None:
            return
        try:
            tf = self._buffer.lookup_transform(s.odom_frame, s.base_frame, stamp,
                                               Duration(seconds=TF_LOOKUP_TIMEOUT_S))
        except Exception as exc:  # tf2 raises several lookup exception types
            self._node.get_logger().warning(
                f'no {s.odom_frame}->{s.base_frame} at the image stamp, map->odom not updated: '
                f'{exc}', throttle_duration_sec=5.0)
            return
        tr, rot = tf.transform.translation, tf.transform.rotation
        t_odom_base = pose_to_matrix([tr.x, tr.y, tr.z, rot.x, rot.y, rot.z, rot.w])
        t_map_odom = matrix_to_pose(t_map_base @ np.linalg.inv(t_odom_base))
        out = TransformStamped()
        out.header.stamp = (stamp + Duration(seconds=s.transform_tolerance)).to_msg()
        out.header.frame_id, out.child_frame_id = s.map_frame, s.odom_frame
        out.transform.translation = Vector3(x=t_map_odom[0], y=t_map_odom[1], z=t_map_odom[2])
        out.transform.rotation = Quaternion(x=t_map_odom[3], y=t_map_odom[4], z=t_map_odom[5],
                                            w=t_map_odom[6])
        self._broadcaster.sendTransform(out)
