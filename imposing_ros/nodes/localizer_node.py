"""Lifecycle node ``imposing_localizer``: camera images in, base_link pose in the map out.

A thin adapter around :class:`imposing_ros.localization.localizer.Localizer` (no ROS there):

* ``on_configure`` reads the parameters and loads the model (a missing or broken checkpoint
  fails the transition with one error; the node stays unconfigured and can be configured again);
  ``on_activate`` subscribes; ``on_deactivate`` unsubscribes; ``on_cleanup`` frees the model.
* No subscription has QoS event handlers, not even rclpy's ``/clock`` one under ``use_sim_time``
  (:mod:`imposing_ros.nodes.events`: with them the executor spins and starves inference).
* Images arrive (best effort or reliable, depth 1) in the input callback group, which keeps
  only the newest message in a one-slot mailbox (an overwritten frame counts as skipped) and
  wakes the inference callback group through a guard condition. Inference therefore always
  works on the newest frame and never queues, whatever the camera rate.
* The method localizes the camera *body* frame (``T_map_camera``); ``~/pose`` carries base_link
  in the map frame, like AMCL: ``T_map_base = T_map_camera @ T_camera_base`` with the camera
  extrinsic ``T_base_camera`` (parameters, or TF ``base_frame -> camera_frame``).

The covariance is carried to base_link through the lever arm of the extrinsic
(:func:`imposing_ros.geometry.compose_covariance`).

Modes: *global* (the paper: level-0 candidates from the map's reference poses) and *tracking*
(a recent prior, from ``/initialpose`` once or from the motion filter, seeds the candidates with
its covariance and ``tracking.levels`` levels run). A best score under ``min_score`` publishes no
pose and makes the next frame global; ``~/relocalize`` forces a global search on the next frame.
A frame that is rejected or fails publishes nothing but diagnostics.
"""

from __future__ import annotations

import threading
import time

from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseWithCovarianceStamped
import numpy as np
import rclpy
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.clock import Clock, ClockType
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.logging import get_logger
from rclpy.qos import (
    QoSDurabilityPolicy,
    QoSHistoryPolicy,
    QoSProfile,
    QoSReliabilityPolicy,
)
from rclpy.time import Time
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Float32
from std_srvs.srv import Trigger
from visualization_msgs.msg import MarkerArray

from imposing_ros.data.images import BACKEND as IMAGE_BACKEND
from imposing_ros.data.images import ImageConversionError, message_to_rgb
from imposing_ros.geometry import (
    compose_covariance,
    matrix_to_pose,
    pose_to_matrix,
)
from imposing_ros.nodes import params
from imposing_ros.nodes.conversions import check_pose_with_covariance
from imposing_ros.nodes.events import QuietSubscriptions
from imposing_ros.nodes.frame_gate import FrameGate
from imposing_ros.nodes.localizer_outputs import (
    candidate_markers,
    localization_status,
    pose_message,
    Stats,
)
from imposing_ros.nodes.localizer_params import (
    cross_check,
    LIVE,
    localizer_config,
    PARAMETERS,
    Settings,
)
from imposing_ros.nodes.node_set import default_model
from imposing_ros.nodes.tf_io import TfIO

NODE_NAME = 'imposing_localizer'
DEVICES = ('auto', 'cpu', 'cuda')
TRANSPORTS = ('raw', 'compressed')
# Diagnostics published on a rejected or failed frame come at most this often.
EVENT_DIAGNOSTICS_MIN_PERIOD_S = 0.2


class LocalizerNode(QuietSubscriptions, LifecycleNode):
    """ImPosing localizer as a lifecycle node (module docstring)."""

    def __init__(self, node_name: str = NODE_NAME, **kwargs):
        super().__init__(node_name, **kwargs)
        params.declare(self, PARAMETERS, cross_check, lambda name, text: (
            f"{text} ({'applies to the next frame' if name in LIVE else 'read at configure'})"))
        self._lock = threading.Lock()
        self._busy = threading.Lock()  # held while a frame is processed
        self._input_group = MutuallyExclusiveCallbackGroup()
        self._inference_group = MutuallyExclusiveCallbackGroup()
        self._localizer = None
        self._settings: Settings | None = None
        self._stats = Stats()
        self._entities = []  # (destroy function, entity) of configure-time entities
        # Not ``_subscriptions``: that is rclpy Node's own list (its /clock subscription
        # included), which the executor waits on.
        self._active_subscriptions = []
        self._reset_state()

    # --- parameters ---------------------------------------------------------------------------

    def _read_values(self) -> dict:
        return params.read(self, PARAMETERS)

    # --- lifecycle ----------------------------------------------------------------------------

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Read the parameters, load the model, create publishers and the service."""
        settings = Settings(self._read_values())
        try:
            self._localizer, device = self._load(settings)
            self._tf = TfIO(self, settings)
        except Exception as exc:  # one clear error; the node stays unconfigured
            self.get_logger().error(f'configure failed: {exc}')
            self._localizer = self._tf = None
            return TransitionCallbackReturn.FAILURE
        self._settings, self._device = settings, device
        self._stats = Stats()
        self._reset_state()
        reliable = QoSProfile(depth=10, reliability=QoSReliabilityPolicy.RELIABLE)
        self._pose_pub = self.create_lifecycle_publisher(PoseWithCovarianceStamped, '~/pose',
                                                         reliable)
        self._score_pub = self.create_lifecycle_publisher(Float32, '~/score', reliable)
        self._marker_pub = self.create_lifecycle_publisher(
            MarkerArray, '~/candidates', QoSProfile(depth=1,
                                                    reliability=QoSReliabilityPolicy.RELIABLE))
        # Diagnostics flow in every configured state (an inactive node reports that it is).
        self._diag_pub = self.create_publisher(DiagnosticArray, '/diagnostics', reliable)
        self._relocalize_srv = self.create_service(Trigger, '~/relocalize', self._on_relocalize,
                                                   callback_group=self._input_group)
        self._wake = self.create_guard_condition(self._on_wake, self._inference_group)
        # Steady clock: diagnostics keep flowing when sim time pauses (bag replay ended).
        self._diag_timer = self.create_timer(settings.diagnostic_period, self._publish_diagnostics,
                                             callback_group=self._input_group,
                                             clock=Clock(clock_type=ClockType.STEADY_TIME))
        self._entities = [
            (self.destroy_lifecycle_publisher, self._pose_pub),
            (self.destroy_lifecycle_publisher, self._score_pub),
            (self.destroy_lifecycle_publisher, self._marker_pub),
            (self.destroy_publisher, self._diag_pub),
            (self.destroy_service, self._relocalize_srv),
            (self.destroy_guard_condition, self._wake),
            (self.destroy_timer, self._diag_timer),
        ]
        self.get_logger().info(
            f'configured: model {settings.model_path or default_model()} on {device} '
            f'(backend {self._localizer.backend_name}), '
            f'{settings.search_num_candidates} candidates x {settings.search_levels} levels, '
            f'images from {self._image_topic(settings)} ({IMAGE_BACKEND})')
        return TransitionCallbackReturn.SUCCESS

    def _load(self, settings: Settings):
        """(Localizer, device) or an exception with a clear message."""
        import torch

        from imposing_ros.localization.localizer import Localizer

        model_path = settings.model_path or str(default_model())
        # Values from parameter files were declared before the set-callback existed: check them.
        reason = params.check_values(settings.values, PARAMETERS, cross_check)
        if reason:
            raise ValueError(reason)
        device = settings.device
        if device == 'auto':
            device = 'cuda' if torch.cuda.is_available() else 'cpu'
        if device.startswith('cuda') and not torch.cuda.is_available():
            raise ValueError(f'device {device} requested but CUDA is not available')
        config = localizer_config(settings)
        localizer = Localizer.from_checkpoint(model_path, settings.scene or None, config, device,
                                              settings.backend, settings.inductor,
                                              settings.engine_cache or None)
        # One warm-up frame: the first real frame then has representative latency.
        height, width = localizer.image_size
        localizer.localize(np.zeros((height, width, 3), np.uint8))
        return localizer, device

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Subscribe to images, the prior and the initial pose."""
        s = self._settings
        # Like every subscription of this node, no QoS event handlers (QuietSubscriptions): with
        # them the executor wakes in a loop while images arrive (measured at 200 Hz of images:
        # ~1,300 empty wake-ups/s, one core busy, inference 20x slower; none without handlers).
        # Depth 1: only the newest frame is ever processed.
        reliability = (QoSReliabilityPolicy.RELIABLE if s.image_reliability == 'reliable'
                       else QoSReliabilityPolicy.BEST_EFFORT)
        image = self.create_subscription(
            CompressedImage if s.image_transport == 'compressed' else Image,
            self._image_topic(s), self._on_image,
            QoSProfile(depth=1, reliability=reliability, history=QoSHistoryPolicy.KEEP_LAST),
            callback_group=self._input_group)
        # Best effort, depth 1: only the newest prior matters, and it matches both reliable and
        # best-effort publishers.
        latest = QoSProfile(depth=1, reliability=QoSReliabilityPolicy.BEST_EFFORT,
                            history=QoSHistoryPolicy.KEEP_LAST)
        prior = self.create_subscription(PoseWithCovarianceStamped, s.prior_topic,
                                         self._on_prior, latest,
                                         callback_group=self._input_group)
        # Reliable and volatile like AMCL's: a transient-local subscription would not match
        # RViz's volatile '2D Pose Estimate' publisher.
        initial = self.create_subscription(
            PoseWithCovarianceStamped, s.initial_pose_topic, self._on_initial_pose,
            QoSProfile(depth=1, reliability=QoSReliabilityPolicy.RELIABLE,
                       durability=QoSDurabilityPolicy.VOLATILE),
            callback_group=self._input_group)
        self._active_subscriptions = [image, prior, initial]
        self.get_logger().info('active')
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Unsubscribe; the model stays loaded."""
        self._unsubscribe()
        self.get_logger().info('inactive')
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Free the model and the configure-time entities."""
        self._release()
        self.get_logger().info('cleaned up')
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Unsubscribe and free everything."""
        self._unsubscribe()
        self._release()
        return TransitionCallbackReturn.SUCCESS

    def _unsubscribe(self):
        for sub in self._active_subscriptions:
            self.destroy_subscription(sub)
        self._active_subscriptions = []
        with self._lock:
            self._slot = None

    def _release(self):
        with self._busy:  # let a frame in flight finish before its publishers go
            self._localizer = None
        for destroy, entity in self._entities:
            destroy(entity)
        self._entities = []
        if self._tf is not None:
            self._tf.close()
        self._tf = None
        with self._lock:
            self._settings = None
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:  # pragma: no cover
            pass

    def _reset_state(self):
        """Forget priors and stamps (configure, clock jump back)."""
        self._slot = None
        self._armed = False  # the inference callback is scheduled or running
        self._force_global = False
        self._initial_pose = None  # (T_map_base, covariance) used once
        self._prior = None  # (Time, T_map_base, covariance) from the filter
        self._gate = FrameGate()  # stamps of the frames taken
        self._last_start = 0.0
        self._last_event_diag = 0.0

    @staticmethod
    def _image_topic(s: Settings) -> str:
        return s.image_topic + ('/compressed' if s.image_transport == 'compressed' else '')

    # --- input callbacks (input group: quick, never blocking) -------------------------------

    def _on_image(self, msg):
        with self._lock:
            self._stats.received += 1
            if self._slot is not None:  # the older frame was never processed
                self._stats.skipped += 1
            self._slot = msg
            wake, self._armed = not self._armed, True
        if wake:
            self._wake.trigger()

    def _on_prior(self, msg: PoseWithCovarianceStamped):
        try:
            matrix, covariance = check_pose_with_covariance(msg, self._settings.map_frame)
        except ValueError as exc:
            self.get_logger().warning(f'prior refused: {exc}', throttle_duration_sec=5.0)
            return
        with self._lock:
            self._prior = (Time.from_msg(msg.header.stamp), matrix, covariance)

    def _on_initial_pose(self, msg: PoseWithCovarianceStamped):
        try:
            matrix, covariance = check_pose_with_covariance(msg, self._settings.map_frame)
        except ValueError as exc:
            self.get_logger().warning(f'initial pose refused: {exc}')
            return
        with self._lock:  # the latest request wins: it supersedes a pending global search
            self._initial_pose = (matrix, covariance)
            self._force_global = False
        xyz = matrix[:3, 3]
        self.get_logger().info(f'initial pose received at ({xyz[0]:.1f}, {xyz[1]:.1f}): the next '
                               'frame searches around it')

    def _on_relocalize(self, request, response):
        with self._lock:
            self._force_global = True
            self._initial_pose = None
        response.success = True
        response.message = 'the next frame runs a global search'
        self.get_logger().info('relocalization requested')
        return response

    # --- inference (inference group) --------------------------------------------------------

    def _on_wake(self):
        """Process the newest frame until none is pending.

        One wake-up per burst: while this runs, the image callback only replaces the pending
        frame and does not trigger the guard condition again, so the executor is not woken for
        work this loop will do anyway.
        """
        while True:
            with self._lock:
                msg, self._slot = self._slot, None
                settings = self._settings
                if msg is None or settings is None:
                    self._armed = False
                    return
            self._process_one(msg, settings)

    def _process_one(self, msg, settings: Settings):
        settings = Settings({**settings.values, **{name.replace('.', '_'): self.get_parameter(
            name).value for name in LIVE}})
        if settings.max_rate > 0:
            wait = self._last_start + 1.0 / settings.max_rate - time.monotonic()
            if wait > 0:
                time.sleep(wait)  # this thread only: input keeps flowing into the slot
                with self._lock:  # a newer frame may have arrived meanwhile: take it
                    if self._slot is not None:
                        msg, self._slot = self._slot, None
                        self._stats.skipped += 1
        self._last_start = time.monotonic()
        try:
            with self._busy:
                if self._localizer is not None:  # not cleaned up meanwhile
                    self._process(msg, settings)
        except Exception as exc:  # a bug must not kill the node: report it, go on
            with self._lock:
                self._stats.failed += 1
                self._stats.last_outcome = 'failed'
                self._stats.last_problem = f'{type(exc).__name__}: {exc}'
                self._force_global = True
            self.get_logger().error(f'frame failed: {type(exc).__name__}: {exc}',
                                    throttle_duration_sec=2.0)
            self._event_diagnostics()

    def _reject(self, reason: str, detail: str):
        with self._lock:
            self._stats.reject(reason)
        self.get_logger().warning(f'frame refused ({reason}): {detail}', throttle_duration_sec=2.0)
        self._event_diagnostics()

    def _process(self, msg, s: Settings):
        started = time.perf_counter()
        stamp = Time.from_msg(msg.header.stamp)
        now_ns = self.get_clock().now().nanoseconds
        if self._gate.clock_jumped_back(now_ns):
            self.get_logger().warning('clock jumped back: priors and stamps forgotten')
            with self._lock:
                self._reset_state()
        refusal = self._gate.refusal(stamp.nanoseconds, now_ns, s.max_image_age,
                                     s.max_image_future)
        if refusal:
            self._reject(*refusal)
            return
        try:
            rgb = message_to_rgb(msg)
        except ImageConversionError as exc:
            self._reject('bad image', str(exc))
            return
        extrinsic = self._tf.camera_extrinsic(s)
        if extrinsic is None:
            self._reject('no extrinsic', f'no transform {s.base_frame} -> {s.camera_frame} yet')
            return
        prior_pose, prior_cov = self._choose_prior(stamp, s, extrinsic)
        result = self._localizer.localize(rgb, prior_pose, prior_cov)
        if not (np.isfinite(result.pose).all() and np.isfinite(result.covariance).all()):
            raise ValueError('the localizer returned a non-finite pose or covariance')
        self._gate.processed(stamp.nanoseconds)

        # camera body -> base_link, covariance through the lever arm (module docstring).
        t_map_camera = pose_to_matrix(result.pose)
        t_map_base = t_map_camera @ np.linalg.inv(extrinsic)
        cov_camera = result.covariance + np.diag(np.square(s.min_std))
        covariance = compose_covariance(cov_camera, t_map_camera[:3, 3], t_map_base[:3, 3])
        header_stamp = msg.header.stamp
        good = result.score >= s.min_score
        self._score_pub.publish(Float32(data=float(result.score)))
        self._marker_pub.publish(candidate_markers(result, extrinsic, t_map_base, header_stamp, s))
        if good:
            self._pose_pub.publish(pose_message(t_map_base, covariance, header_stamp,
                                                s.map_frame))
            self._tf.publish_map_odom(t_map_base, stamp, s)
        processing_ms = 1e3 * (time.perf_counter() - started)
        age_ms = (self.get_clock().now().nanoseconds - stamp.nanoseconds) * 1e-6
        with self._lock:
            st = self._stats
            st.processed += 1
            st.published += int(good)
            st.low_score += int(not good)
            st.last_score, st.last_mode = result.score, result.mode
            st.done.append((time.monotonic(), processing_ms, age_ms))
            st.last_outcome = 'published' if good else 'low score'
            if not good:
                self._force_global = True
                st.last_problem = f'score {result.score:.3f} < min_score {s.min_score}'
        if not good:
            self.get_logger().warning(f'score {result.score:.3f} under min_score {s.min_score}: '
                                   'no pose published, next frame searches globally',
                                   throttle_duration_sec=5.0)

    def _choose_prior(self, stamp: Time, s: Settings, extrinsic: np.ndarray):
        """(T_map_camera pose (7,), covariance) seeding tracking, or (None, None) for global."""
        with self._lock:
            if self._force_global:
                self._force_global = False
                self._initial_pose = None
                return None, None
            seed, self._initial_pose = self._initial_pose, None
            if seed is None and s.tracking_enabled and self._prior is not None:
                prior_stamp, matrix, covariance = self._prior
                gap_s = abs(stamp.nanoseconds - prior_stamp.nanoseconds) * 1e-9
                if gap_s <= s.tracking_prior_timeout:
                    seed = (matrix, covariance)
        if seed is None:
            return None, None
        t_map_base, covariance = seed
        t_map_camera = t_map_base @ extrinsic
        cov_camera = compose_covariance(covariance, t_map_base[:3, 3], t_map_camera[:3, 3])
        return matrix_to_pose(t_map_camera), cov_camera

    # --- diagnostics --------------------------------------------------------------------------

    def _event_diagnostics(self):
        now = time.monotonic()
        if now - self._last_event_diag >= EVENT_DIAGNOSTICS_MIN_PERIOD_S:
            self._last_event_diag = now
            self._publish_diagnostics()

    def _publish_diagnostics(self):
        s = self._settings
        if s is None:
            return
        with self._lock:
            values, window, outcome = self._stats.snapshot(time.monotonic())
        backend = self._localizer.backend_name if self._localizer else s.backend
        status = localization_status(
            self.get_name(), values, window, outcome, bool(self._active_subscriptions),
            {'backend': backend, 'device': self._device,
             'backend choice': (self._localizer.backend.choice if self._localizer else None)
             or 'as set',
             'image conversion': IMAGE_BACKEND or 'none', 'model': s.model_path})
        array = DiagnosticArray(status=[status])
        array.header.stamp = self.get_clock().now().to_msg()
        self._diag_pub.publish(array)


def main(args=None) -> None:
    """Run the node alone (``ros2 run imposing_ros localizer_node``; lifecycle driven outside)."""
    rclpy.init(args=args)
    try:
        node = LocalizerNode()
    except params.ParameterFileError as exc:
        get_logger(NODE_NAME).fatal(str(exc))
        rclpy.try_shutdown()
        raise SystemExit(2) from exc
    executor = MultiThreadedExecutor(num_threads=4)
    executor.add_node(node)
    try:
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == '__main__':
    main()
