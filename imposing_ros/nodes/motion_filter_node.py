"""Node ``imposing_motion_filter``: wheel odometry + localizer poses -> smooth map pose.

A thin adapter around :class:`imposing_ros.filtering.ekf.MotionFilter` (pure numpy; its module
docstring gives the state, the noise model and how late measurements are handled).

* Subscribes ``odom`` (nav_msgs/Odometry, odom -> base_link), the localizer's pose
  (PoseWithCovarianceStamped of base_link in the map, stamped with its image: it arrives late)
  and ``initialpose`` (RViz's "2D Pose Estimate").
* Publishes ``~/odometry`` (nav_msgs/Odometry in the map, with the odometry's twist) and
  ``~/pose`` at every odometry message once initialised, both stamped with that odometry;
  ``~/prior`` (the estimate at the latest odometry stamp: the odometry-predicted base_link pose
  that seeds the localizer's tracking mode) at ``prior_rate``, latched (TRANSIENT_LOCAL, depth 1)
  so a localizer that starts later gets it at once; map -> odom on /tf when tf2_ros exists and
  ``publish_tf`` is set (one warning otherwise); ``/diagnostics``.
* QoS: odometry and poses RELIABLE (a lost fix or odometry increment is lost information; depth
  50 odometry absorbs bursts), the prior latched. One MutuallyExclusiveCallbackGroup for every
  input and timer: the filter is not thread-safe, and the work per message is microseconds.
  No subscription has QoS event handlers, ``/clock`` included (:mod:`imposing_ros.nodes.events`:
  with them the executor spins on every message and starves the localizer in the same process).
* Time: a backward jump of the ROS clock (``use_sim_time`` and a looping bag) or of the odometry
  stamps resets the filter. ``filter.*`` parameters take effect at once when set; topics,
  frames and rates are read at start.
* message_filters is not used: the filter already keeps a time-ordered history of odometry (it
  re-applies late measurements and interpolates odometry at their stamps), so a
  message_filters.Cache would hold the same messages twice, and the package is absent from the
  PyPI ROS (ENVIRONMENT.md); nothing here synchronises topics.
"""

from __future__ import annotations

import dataclasses
import threading

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import PoseWithCovarianceStamped
from nav_msgs.msg import Odometry
import numpy as np
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.clock import JumpThreshold
from rclpy.duration import Duration
from rclpy.node import Node
from rclpy.qos import QoSDurabilityPolicy, QoSProfile, QoSReliabilityPolicy

from imposing_ros.filtering.ekf import FilterConfig, MotionFilter
from imposing_ros.geometry import matrix_to_pose, pose_to_matrix
from imposing_ros.nodes import params
from imposing_ros.nodes.conversions import (
    check_map_frame,
    check_pose_with_covariance,
    frame_scene,
    ns_to_stamp,
    odometry_to_arrays,
    pose_with_covariance_msg,
    scene_frame,
    SCENE_PLACEHOLDER,
    stamp_to_ns,
)
from imposing_ros.nodes.entry import spin
from imposing_ros.nodes.events import QuietSubscriptions

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
    'reinit_after_rejections': 'poses rejected in a row after which the filter restarts from '
                               'the latest (0: never)',
    'history_s': 'seconds of inputs kept to re-apply late poses (s)',
    'roll_pitch_variance': 'published variance of the unestimated roll and pitch (rad^2)',
    'min_position_std': 'added in quadrature to every pose measurement: x, y, z (m)',
    'min_yaw_std': 'added in quadrature to every pose measurement: yaw (rad)',
    'odometry_jitter_s': 'odometry up to this much older than the latest is reordered, not a '
                         'reset (s)',
    'max_future_s': 'poses stamped more than this after the latest odometry are refused (s)',
}

# Filter settings: defaults and types come from FilterConfig (one source of truth); FilterConfig
# itself checks combinations (filter_cross_check).
_FILTER_ROWS = tuple(
    (f'filter.{f.name}', f.default, _FILTER_HELP[f.name], params.at_least(0.0))
    for f in dataclasses.fields(FilterConfig))


def filter_config(values: dict) -> FilterConfig:
    """The FilterConfig of parameter values keyed by :func:`params.key` (ValueError if bad)."""
    return FilterConfig(**{f.name: values[f'filter_{f.name}']
                           for f in dataclasses.fields(FilterConfig)})


def filter_cross_check(values: dict) -> str | None:
    """Why the ``filter.*`` values do not make a FilterConfig, or None."""
    try:
        filter_config(values)
    except (ValueError, TypeError) as exc:
        return f'filter: {exc}'
    return None


PARAMETERS = (
    ('odom_topic', 'odom', 'nav_msgs/Odometry of base_frame in odom_frame', params.nonempty),
    ('pose_topic', 'imposing_localizer/pose',
     'PoseWithCovarianceStamped of base_frame in map_frame, the localizer output (relative: '
     '/imposing_localizer/pose at the root namespace)', params.nonempty),
    ('initial_pose_topic', 'initialpose', "initial pose (RViz '2D Pose Estimate')",
     params.nonempty),
    ('map_frame', 'map', 'global frame (REP-105); with {scene} (e.g. map_{scene}, as the '
     "localizer's) poses of any scene's map are taken and one in another scene's map than the "
     'last resets the filter', check_map_frame),
    ('odom_frame', 'odom', 'odometry frame', params.nonempty),
    ('base_frame', 'base_link', 'robot body frame', params.nonempty),
    ('prior_rate', 10.0, 'rate of ~/prior, the tracking prior of the localizer (Hz)',
     params.at_least(0.0, strict=True)),
    ('publish_tf', False, 'publish map->odom on /tf (needs tf2_ros; off when the localizer '
     'publishes it)', None),
    ('transform_tolerance', 0.1, 'map->odom is post-dated by this much (s)',
     params.at_least(0.0)),
    ('diagnostic_period', 1.0, 'period of /diagnostics (s)', params.at_least(0.0, strict=True)),
    ('stale_after', 5.0, '/diagnostics warns when no pose was fused for this long (s of stamps)',
     params.at_least(0.0, strict=True)),
) + _FILTER_ROWS


class MotionFilterNode(QuietSubscriptions, Node):
    """The motion filter as a node (module docstring)."""

    def __init__(self, node_name: str = NODE_NAME, **kwargs):
        """Create the node; ``kwargs`` go to ``rclpy.node.Node``.

        (namespace, context, parameter_overrides, cli_args...): a runner creates it in process.
        """
        super().__init__(node_name, **kwargs)
        self._lock = threading.Lock()
        params.declare(self, PARAMETERS, cross_check=filter_cross_check,
                       describe=self._describe, on_change=self._on_parameters)
        values = params.read(self, PARAMETERS)
        reason = params.check_values(values, PARAMETERS, filter_cross_check)
        if reason:
            raise ValueError(f'{node_name}: {reason}')
        self._v = values
        self._filter = MotionFilter(filter_config(values))
        # The concrete map frame in use (the pattern's scene is set by the first pose).
        self._map_frame = None if SCENE_PLACEHOLDER in values['map_frame'] else \
            values['map_frame']
        self._refused: dict[str, int] = {}
        group = MutuallyExclusiveCallbackGroup()
        reliable = QoSProfile(depth=10, reliability=QoSReliabilityPolicy.RELIABLE)
        self._odometry_pub = self.create_publisher(Odometry, '~/odometry', reliable)
        self._pose_pub = self.create_publisher(PoseWithCovarianceStamped, '~/pose', reliable)
        self._prior_pub = self.create_publisher(
            PoseWithCovarianceStamped, '~/prior',
            QoSProfile(depth=1, reliability=QoSReliabilityPolicy.RELIABLE,
                       durability=QoSDurabilityPolicy.TRANSIENT_LOCAL))
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
        # A bag that loops under use_sim_time moves /clock back: start over (the odometry's
        # own stamps going back does the same inside the filter).
        self._jump_handle = self.get_clock().create_jump_callback(
            JumpThreshold(min_forward=None, min_backward=Duration(seconds=-0.5),
                          on_clock_change=False),
            post_callback=self._on_clock_jump)
        self._tf_broadcaster = None
        if values['publish_tf']:
            if tf2_ros is None:
                self.get_logger().warning('tf2_ros is not installed: map->odom is not published')
            else:
                self._tf_broadcaster = tf2_ros.TransformBroadcaster(self)
        self.get_logger().info(f"fusing {values['odom_topic']} with {values['pose_topic']}")

    @staticmethod
    def _describe(name: str, text: str) -> str:
        when = 'applied when set' if name.startswith('filter.') else 'read at start'
        return f'{text} ({when})'

    def _on_parameters(self, values: dict) -> None:
        """Apply accepted ``filter.*`` values to the running filter."""
        config = filter_config(values)
        with self._lock:
            if config != self._filter.config:
                self._filter.config = config
                self.get_logger().info('filter settings updated')

    def _on_clock_jump(self, jump) -> None:
        with self._lock:
            self._filter.restart()
        self.get_logger().warning(
            f'clock jumped back by {-jump.delta.nanoseconds * 1e-9:.3f} s: filter reset')

    # --- inputs ---------------------------------------------------------------------------------

    def _refuse(self, what: str, reason: str) -> None:
        self._refused[what] = self._refused.get(what, 0) + 1
        self.get_logger().warning(f'{what} refused: {reason}', throttle_duration_sec=2.0)

    def _future(self, stamp_ns: int) -> str | None:
        """Why a stamp is too far after the node clock (filter.max_future_s), or None."""
        now = self.get_clock().now().nanoseconds
        ahead = (stamp_ns - now) * 1e-9
        limit = self._v['filter_max_future_s']
        if now > 0 and ahead > limit:
            return f'stamped {ahead:.3f} s after the node clock (filter.max_future_s {limit})'
        return None

    def _on_odometry(self, msg: Odometry) -> None:
        v = self._v
        if msg.header.frame_id.lstrip('/') != v['odom_frame'] or \
                msg.child_frame_id.lstrip('/') != v['base_frame']:
            self._refuse('odometry', f"frames '{msg.header.frame_id}' -> '{msg.child_frame_id}',"
                                     f" expected '{v['odom_frame']}' -> '{v['base_frame']}'")
            return
        try:
            stamp_ns, pose, _, twist = odometry_to_arrays(msg)
        except ValueError as exc:
            self._refuse('odometry', str(exc))
            return
        # The twist is copied to ~/odometry: a NaN there would be published.
        if not (np.isfinite(pose).all() and np.isfinite(twist).all()) or \
                not 0.9 < np.linalg.norm(pose[3:]) < 1.1:
            self._refuse('odometry', 'pose or twist is not finite, or the quaternion is not '
                                     'unit length')
            return
        reason = self._future(stamp_ns)
        if reason:
            self._refuse('odometry', reason)
            return
        pose[3:] /= np.linalg.norm(pose[3:])
        with self._lock:
            resets = self._filter.resets
            self._filter.add_odometry(stamp_ns, pose)
            if self._filter.resets != resets:
                self.get_logger().warning('odometry went back in time: filter reset')
            state = self._filter.state
        if state is not None and state.stamp_ns == stamp_ns:
            self._publish_state(state, msg, pose)

    def _checked(self, msg: PoseWithCovarianceStamped) -> tuple[np.ndarray, np.ndarray]:
        """(T, covariance) of a pose in a map frame of ``map_frame``, or ValueError.

        Its frame becomes the one in use; another scene's map resets the filter.
        """
        pattern = self._v['map_frame']
        scene = frame_scene(pattern, msg.header.frame_id)
        if scene is None:
            raise ValueError(f"frame_id is '{msg.header.frame_id}', expected '{pattern}'")
        frame = scene_frame(pattern, scene)
        checked = check_pose_with_covariance(msg, frame)
        if frame != self._map_frame:
            with self._lock:
                if self._map_frame is not None:
                    self._filter.reset()
                    self.get_logger().warning(f"map frame '{self._map_frame}' -> '{frame}' "
                                              '(scene switch): filter reset')
                self._map_frame = frame
        return checked

    def _on_pose(self, msg: PoseWithCovarianceStamped) -> None:
        try:
            matrix, covariance = self._checked(msg)
        except ValueError as exc:
            self._refuse('pose', str(exc))
            return
        reason = self._future(stamp_to_ns(msg.header.stamp))
        if reason:
            self._refuse('pose', reason)
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
            matrix, covariance = self._checked(msg)
        except ValueError as exc:
            self._refuse('initial pose', str(exc))
            return
        with self._lock:
            try:
                self._filter.initialize(stamp_to_ns(msg.header.stamp), matrix_to_pose(matrix),
                                        covariance)
            except ValueError as exc:
                self._refuse('initial pose', str(exc))
                return
        self.get_logger().info('initialised from the initial pose')

    # --- outputs --------------------------------------------------------------------------------

    def _pose_message(self, state) -> PoseWithCovarianceStamped:
        covariance = state.pose_covariance(self._filter.config.roll_pitch_variance)
        return pose_with_covariance_msg(state.pose(), covariance, self._map_frame,
                                        state.stamp_ns)

    def _publish_state(self, state, odom: Odometry, odom_pose: np.ndarray) -> None:
        pose = self._pose_message(state)
        self._pose_pub.publish(pose)
        out = Odometry(header=pose.header, child_frame_id=self._v['base_frame'])
        out.pose = pose.pose
        out.twist = odom.twist  # body-frame velocity: the odometry's own
        self._odometry_pub.publish(out)
        if self._tf_broadcaster is not None:
            T_map_base = pose_to_matrix(state.pose())  # noqa: N806 (transform naming)
            T_odom_base = pose_to_matrix(odom_pose)  # noqa: N806
            t = matrix_to_pose(T_map_base @ np.linalg.inv(T_odom_base))
            tf = TransformStamped()
            tf.header.frame_id, tf.child_frame_id = self._map_frame, self._v['odom_frame']
            tf.header.stamp = ns_to_stamp(
                state.stamp_ns + int(self._v['transform_tolerance'] * 1e9))
            tr, rot = tf.transform.translation, tf.transform.rotation
            tr.x, tr.y, tr.z, rot.x, rot.y, rot.z, rot.w = (float(c) for c in t)
            self._tf_broadcaster.sendTransform(tf)

    def _publish_prior(self) -> None:
        with self._lock:
            state = self._filter.state
            msg = self._pose_message(state) if state is not None else None
        if msg is not None:
            self._prior_pub.publish(msg)

    def _publish_diagnostics(self) -> None:
        with self._lock:
            f, state = self._filter, self._filter.state
            values = {'initialized': f.initialized, 'accepted': f.accepted,
                      'rejected': f.rejected, 'reinitializations': f.reinitializations,
                      'dropped_old': f.dropped_old, 'resets': f.resets,
                      **{f'refused_{k}': n for k, n in self._refused.items()}}
        level, message = DiagnosticStatus.WARN, 'waiting for a pose'
        if state is not None:
            level, message = DiagnosticStatus.OK, 'tracking'
            values['position_std_m'] = f'{np.sqrt(np.trace(state.covariance[:2, :2])):.3f}'
            values['yaw_std_deg'] = f'{np.degrees(np.sqrt(state.covariance[3, 3])):.2f}'
            if state.last_fix_ns is not None:
                age = (state.stamp_ns - state.last_fix_ns) * 1e-9
                values['last_fix_age_s'] = f'{age:.2f}'
                if age > self._v['stale_after']:
                    level, message = DiagnosticStatus.WARN, f'no pose fused for {age:.1f} s'
        status = DiagnosticStatus(name=f'{self.get_name()}: motion filter',
                                  hardware_id=self.get_name(), level=level, message=message)
        status.values = [KeyValue(key=k, value=str(v)) for k, v in values.items()]
        msg = DiagnosticArray(status=[status])
        msg.header.stamp = self.get_clock().now().to_msg()
        self._diag_pub.publish(msg)


def main(args=None) -> None:
    """Spin the node until shutdown (:func:`imposing_ros.nodes.entry.spin`)."""
    spin(MotionFilterNode, NODE_NAME, args)


if __name__ == '__main__':
    main()
