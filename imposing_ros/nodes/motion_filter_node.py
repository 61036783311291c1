"""Node ``imposing_motion_filter``: wheel odometry + localizer poses -> smooth map pose.

A thin adapter around :class:`imposing_ros.filtering.ekf.MotionFilter` (pure numpy; its module
docstring gives the state, the noise model and how late measurements are handled).

* Subscribes ``odom`` (nav_msgs/Odometry, odom -> base_link), the localizer's pose
  (PoseWithCovarianceStamped of base_link in the map, stamped with its image: it arrives late)
  and ``initialpose`` (RViz's "2D Pose Estimate").
* Publishes ``~/odometry`` (nav_msgs/Odometry in the map, with the odometry's twist) and
  ``~/pose`` at every odometry message, ``~/prior`` (the current estimate, which seeds the
  localizer's tracking mode) at ``prior_rate``, map -> odom on /tf when tf2_ros exists and
  ``publish_tf`` is set, and ``/diagnostics``.
* The filter keeps its own time-ordered history of odometry (it re-applies late measurements
  and interpolates odometry at their stamps), so message_filters' Cache would duplicate it and is
  not used.
"""

from __future__ import annotations

import dataclasses
import threading

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import PoseWithCovarianceStamped
from nav_msgs.msg import Odometry
import numpy as np
import rclpy
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.node import Node
from rclpy.qos import QoSDurabilityPolicy, QoSProfile, QoSReliabilityPolicy

from imposing_ros.filtering.ekf import FilterConfig, MotionFilter
from imposing_ros.geometry import matrix_to_pose, pose_to_matrix
from imposing_ros.nodes import params
from imposing_ros.nodes.conversions import (
    check_pose_with_covariance,
    ns_to_stamp,
    pose_msg_to_array,
    stamp_to_ns,
)

try:  # tf2_ros exists on a ROS install only (ENVIRONMENT.md); without it there is no /tf.
    from geometry_msgs.msg import TransformStamped
    import tf2_ros
except ImportError:  # pragma: no cover - depends on the installation
    tf2_ros = None

NODE_NAME = 'imposing_motion_filter'

_FILTER_HELP = {
    'alpha_trans': 'odometry forward error per metre driven (fraction)',
    'alpha_trans_rot': 'odometry forward error per radian turned (m/rad)',
    'alpha_lateral': 'odometry lateral error per metre driven (fraction)',
    'alpha_rot': 'odometry yaw error per radian turned (fraction)',
    'alpha_rot_trans': 'odometry yaw error per metre driven (rad/m)',
    'z_random_walk': 'height random walk (m per sqrt(s))',
    'xy_random_walk': 'planar random walk (m per sqrt(s))',
    'yaw_random_walk': 'yaw random walk (rad per sqrt(s))',
    'mahalanobis_threshold': 'squared Mahalanobis distance (4 dof) above which a pose is '
                             'rejected',
    'history_s': 'seconds of inputs kept to re-apply late poses (s)',
    'roll_pitch_variance': 'published variance of the unestimated roll and pitch (rad^2)',
    'min_measurement_variance': 'added to every measurement variance (m^2, rad^2)',
}

# Filter settings: defaults come from FilterConfig (one source of truth).
_FILTER_ROWS = tuple(
    (f'filter.{f.name}', float(f.default), _FILTER_HELP[f.name], params.at_least(0.0))
    for f in dataclasses.fields(FilterConfig))

PARAMETERS = (
    ('odom_topic', 'odom', 'nav_msgs/Odometry of base_frame in odom_frame', params.nonempty),
    ('pose_topic', 'imposing_localizer/pose',
     'PoseWithCovarianceStamped of base_frame in map_frame (the localizer output)',
     params.nonempty),
    ('initial_pose_topic', 'initialpose', "initial pose (RViz '2D Pose Estimate')",
     params.nonempty),
    ('map_frame', 'map', 'global frame (REP-105)', params.nonempty),
    ('odom_frame', 'odom', 'odometry frame', params.nonempty),
    ('base_frame', 'base_link', 'robot body frame', params.nonempty),
    ('prior_rate', 10.0, 'rate of ~/prior, the tracking prior of the localizer (Hz)',
     params.at_least(0.0, strict=True)),
    ('publish_tf', False, 'publish map->odom on /tf (needs tf2_ros; off when the localizer '
     'publishes it)', None),
    ('transform_tolerance', 0.1, 'map->odom is post-dated by this much (s)',
     params.at_least(0.0)),
    ('diagnostic_period', 1.0, 'period of /diagnostics (s)', params.at_least(0.0, strict=True)),
) + _FILTER_ROWS


class MotionFilterNode(Node):
    """The motion filter as a node (module docstring)."""

    def __init__(self, node_name: str = NODE_NAME, **kwargs):
        super().__init__(node_name, **kwargs)
        params.declare(self, PARAMETERS, describe=lambda name, text: f'{text} (read at start)')
        values = params.read(self, PARAMETERS)
        reason = params.check_values(values, PARAMETERS)
        if reason:
            raise ValueError(f'{node_name}: {reason}')
        self._v = values
        config = FilterConfig(**{f.name: values[f'filter_{f.name}']
                                 for f in dataclasses.fields(FilterConfig)})
        self._filter = MotionFilter(config)
        self._lock = threading.Lock()
        self._last_odom = None  # latest Odometry message
        self._refused: dict[str, int] = {}
        group = MutuallyExclusiveCallbackGroup()
        reliable = QoSProfile(depth=10, reliability=QoSReliabilityPolicy.RELIABLE)
        self._odometry_pub = self.create_publisher(Odometry, '~/odometry', reliable)
        self._pose_pub = self.create_publisher(PoseWithCovarianceStamped, '~/pose', reliable)
        self._prior_pub = self.create_publisher(
            PoseWithCovarianceStamped, '~/prior',
            QoSProfile(depth=1, reliability=QoSReliabilityPolicy.RELIABLE))
        self._diag_pub = self.create_publisher(DiagnosticArray, '/diagnostics', reliable)
        self.create_subscription(Odometry, values['odom_topic'], self._on_odometry,
                                 QoSProfile(depth=50,
                                            reliability=QoSReliabilityPolicy.RELIABLE),
                                 callback_group=group)
        self.create_subscription(PoseWithCovarianceStamped, values['pose_topic'], self._on_pose,
                                 reliable, callback_group=group)
        # RViz publishes the initial pose reliable and volatile; latched publishers match too.
        self.create_subscription(PoseWithCovarianceStamped, values['initial_pose_topic'],
                                 self._on_initial_pose,
                                 QoSProfile(depth=1, reliability=QoSReliabilityPolicy.RELIABLE,
                                            durability=QoSDurabilityPolicy.VOLATILE),
                                 callback_group=group)
        self.create_timer(1.0 / values['prior_rate'], self._publish_prior, callback_group=group)
        self.create_timer(values['diagnostic_period'], self._publish_diagnostics,
                          callback_group=group)
        self._tf_broadcaster = None
        if values['publish_tf']:
            if tf2_ros is None:
                self.get_logger().warning('tf2_ros is not installed: map->odom is not published')
            else:
                self._tf_broadcaster = tf2_ros.TransformBroadcaster(self)
        self.get_logger().info(f"fusing {values['odom_topic']} with {values['pose_topic']}")

    # --- inputs ---------------------------------------------------------------------------------

    def _refuse(self, what: str, reason: str) -> None:
        self._refused[what] = self._refused.get(what, 0) + 1
        self.get_logger().warning(f'{what} refused: {reason}', throttle_duration_sec=2.0)

    def _on_odometry(self, msg: Odometry) -> None:
        v = self._v
        if msg.header.frame_id.lstrip('/') != v['odom_frame'] or \
                msg.child_frame_id.lstrip('/') != v['base_frame']:
            self._refuse('odometry', f"frames '{msg.header.frame_id}' -> '{msg.child_frame_id}',"
                                     f" expected '{v['odom_frame']}' -> '{v['base_frame']}'")
            return
        pose = pose_msg_to_array(msg.pose.pose)
        if not np.isfinite(pose).all() or not 0.9 < np.linalg.norm(pose[3:]) < 1.1:
            self._refuse('odometry', 'pose is not finite or its quaternion is not unit length')
            return
        pose[3:] /= np.linalg.norm(pose[3:])
        with self._lock:
            resets = self._filter.resets
            self._filter.add_odometry(stamp_to_ns(msg.header.stamp), pose)
            if self._filter.resets != resets:
                self.get_logger().warning('odometry went back in time: filter reset')
            self._last_odom = msg
            state = self._filter.state
        if state is not None:
            self._publish_state(state, msg)

    def _on_pose(self, msg: PoseWithCovarianceStamped) -> None:
        try:
            matrix, covariance = check_pose_with_covariance(msg, self._v['map_frame'])
        except ValueError as exc:
            self._refuse('pose', str(exc))
            return
        with self._lock:
            try:
                verdict = self._filter.add_pose(stamp_to_ns(msg.header.stamp),
                                                matrix_to_pose(matrix), covariance)
            except ValueError as exc:
                self._refuse('pose', str(exc))
                return
        if verdict is False:
            self.get_logger().info('pose rejected (Mahalanobis test)', throttle_duration_sec=2.0)
        elif verdict is None:
            self.get_logger().info('pose older than the history dropped',
                                   throttle_duration_sec=2.0)

    def _on_initial_pose(self, msg: PoseWithCovarianceStamped) -> None:
        try:
            matrix, covariance = check_pose_with_covariance(msg, self._v['map_frame'])
        except ValueError as exc:
            self._refuse('initial pose', str(exc))
            return
        with self._lock:
            self._filter.initialize(stamp_to_ns(msg.header.stamp), matrix_to_pose(matrix),
                                    covariance)
        self.get_logger().info('initialised from the initial pose')

    # --- outputs --------------------------------------------------------------------------------

    def _pose_message(self, state) -> PoseWithCovarianceStamped:
        msg = PoseWithCovarianceStamped()
        msg.header.frame_id = self._v['map_frame']
        msg.header.stamp = ns_to_stamp(state.stamp_ns)
        x, y, z, qx, qy, qz, qw = state.pose()
        p, q = msg.pose.pose.position, msg.pose.pose.orientation
        p.x, p.y, p.z, q.x, q.y, q.z, q.w = x, y, z, qx, qy, qz, qw
        covariance = state.pose_covariance(self._filter.config.roll_pitch_variance)
        msg.pose.covariance = [float(c) for c in covariance.ravel()]
        return msg

    def _publish_state(self, state, odom: Odometry) -> None:
        pose = self._pose_message(state)
        self._pose_pub.publish(pose)
        out = Odometry(header=pose.header, child_frame_id=self._v['base_frame'])
        out.pose = pose.pose
        out.twist = odom.twist  # body-frame velocity: the odometry's own
        self._odometry_pub.publish(out)
        if self._tf_broadcaster is not None:
            T_map_base = pose_to_matrix(state.pose())  # noqa: N806 (transform naming)
            T_odom_base = pose_to_matrix(pose_msg_to_array(odom.pose.pose))  # noqa: N806
            t = matrix_to_pose(T_map_base @ np.linalg.inv(T_odom_base))
            tf = TransformStamped()
            tf.header.frame_id, tf.child_frame_id = self._v['map_frame'], self._v['odom_frame']
            tf.header.stamp = ns_to_stamp(
                state.stamp_ns + int(self._v['transform_tolerance'] * 1e9))
            tr, rot = tf.transform.translation, tf.transform.rotation
            tr.x, tr.y, tr.z, rot.x, rot.y, rot.z, rot.w = (float(c) for c in t)
            self._tf_broadcaster.sendTransform(tf)

    def _publish_prior(self) -> None:
        with self._lock:
            state = self._filter.state
        if state is not None:
            self._prior_pub.publish(self._pose_message(state))

    def _publish_diagnostics(self) -> None:
        with self._lock:
            f = self._filter
            values = {'initialized': f.initialized, 'accepted': f.accepted,
                      'rejected': f.rejected, 'dropped_old': f.dropped_old, 'resets': f.resets,
                      **{f'refused_{k}': n for k, n in self._refused.items()}}
        status = DiagnosticStatus(
            name=f'{self.get_name()}: motion filter', hardware_id=self.get_name(),
            level=DiagnosticStatus.OK if values['initialized'] else DiagnosticStatus.WARN,
            message='tracking' if values['initialized'] else 'waiting for a pose')
        status.values = [KeyValue(key=k, value=str(v)) for k, v in values.items()]
        msg = DiagnosticArray(status=[status])
        msg.header.stamp = self.get_clock().now().to_msg()
        self._diag_pub.publish(msg)


def main(args=None) -> None:
    """Spin the node under a MultiThreadedExecutor until shutdown."""
    rclpy.init(args=args)
    node = None
    try:
        node = MotionFilterNode()
        executor = MultiThreadedExecutor()
        executor.add_node(node)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()


if __name__ == '__main__':
    main()
