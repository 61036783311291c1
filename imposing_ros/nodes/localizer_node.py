"""Lifecycle node ``imposing_localizer``: camera images in, base_link pose in the map out.

A thin adapter around :class:`imposing_ros.localization.scenes.SceneLocalizer` (no ROS there).
``on_configure`` reads the parameters and loads the model (a bad one fails the transition with
one error and can be configured again); ``on_activate`` subscribes; ``on_deactivate``
unsubscribes; ``on_cleanup`` frees the model. Images go through a one-slot
:class:`~imposing_ros.nodes.mailbox.Mailbox` from the input callbacks to the node's own inference
thread (configure to cleanup): inference always takes the newest frame and never queues, and the
executor, single-threaded, only runs short callbacks (docs/design.md, "One inference thread").

The method localizes the camera body frame (``T_map_camera``); ``~/pose`` carries base_link
like AMCL: ``T_map_base = T_map_camera @ inv(T_base_camera)``, the covariance carried through the
extrinsic's lever arm. Global frames search the map; a prior (``/initialpose`` once, or the
motion filter's) seeds a tracking search. A score under ``min_score`` publishes no pose and makes
the next frame global, as does ``~/relocalize``. With ``scene: auto`` global frames search every
scene of the model; each scene has its map frame (``map_frame`` holding ``{scene}``); the scene
in use is on ``~/scene`` and ``/diagnostics``. Inputs, outputs and QoS: docs/robot.md.
"""

from __future__ import annotations

import threading
import time

from geometry_msgs.msg import PoseWithCovarianceStamped
import numpy as np
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.clock import Clock, ClockType
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.time import Time
from std_msgs.msg import String
from std_srvs.srv import Trigger

from imposing_ros.data.images import BACKEND as IMAGE_BACKEND
from imposing_ros.data.images import ImageConversionError, message_to_rgb
from imposing_ros.geometry import (
    compose_covariance,
    matrix_to_pose,
    pose_to_matrix,
)
from imposing_ros.localization.priors import PriorBook
from imposing_ros.nodes import params
from imposing_ros.nodes.conversions import (
    scene_frame,
    SCENE_PLACEHOLDER,
)
from imposing_ros.nodes.entry import spin
from imposing_ros.nodes.events import QuietSubscriptions
from imposing_ros.nodes.frame_gate import FrameGate
from imposing_ros.nodes.localizer_inputs import image_topic, map_pose, subscribe
from imposing_ros.nodes.localizer_outputs import (
    localization_status,
    Outputs,
    Stats,
)
from imposing_ros.nodes.localizer_params import (
    cross_check,
    LIVE,
    localizer_config,
    PARAMETERS,
    Settings,
)
from imposing_ros.nodes.mailbox import Mailbox
from imposing_ros.nodes.node_set import default_model
from imposing_ros.nodes.tf_io import TfIO
from imposing_ros.utils import resolve_device

NODE_NAME = 'imposing_localizer'
# Diagnostics published on a rejected or failed frame come at most this often.
EVENT_DIAGNOSTICS_MIN_PERIOD_S = 0.2


class LocalizerNode(QuietSubscriptions, LifecycleNode):
    """ImPosing localizer as a lifecycle node (module docstring)."""

    def __init__(self, node_name: str = NODE_NAME, **kwargs):
        super().__init__(node_name, **kwargs)
        params.declare(self, PARAMETERS, cross_check, lambda name, text: (
            f"{text} ({'applies to the next frame' if name in LIVE else 'read at configure'})"))
        self._lock = threading.Lock()
        self._input_group = MutuallyExclusiveCallbackGroup()
        self._inference: tuple[threading.Thread, threading.Event] | None = None
        self._localizer = None
        self._settings: Settings | None = None
        self._stats = Stats()
        self._mailbox = Mailbox()
        self._entities = []  # (destroy function, entity) of configure-time entities
        # Not ``_subscriptions``: that is rclpy Node's own list (its /clock subscription
        # included), which the executor waits on.
        self._active_subscriptions = []
        self._priors = PriorBook()
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
        self._stats, self._mailbox = Stats(), Mailbox()
        self._reset_state()
        self._out = Outputs(self)
        self._relocalize_srv = self.create_service(Trigger, '~/relocalize', self._on_relocalize,
                                                   callback_group=self._input_group)
        # Steady clock: diagnostics keep flowing when sim time pauses (bag replay ended).
        self._diag_timer = self.create_timer(settings.diagnostic_period, self._publish_diagnostics,
                                             callback_group=self._input_group,
                                             clock=Clock(clock_type=ClockType.STEADY_TIME))
        self._entities = [
            (lambda out: out.destroy(), self._out),
            (self.destroy_service, self._relocalize_srv),
            (self.destroy_timer, self._diag_timer),
        ]
        backends = ', '.join(f'{k} {v}' for k, v in self._localizer.backend_names.items())
        self.get_logger().info(
            f'configured: model {settings.model_path or default_model()} on {device} '
            f'(backend: {backends}), '
            f'{settings.search_num_candidates} candidates x {settings.search_levels} levels, '
            f'scenes {self._localizer.scenes} ({settings.scene or "the only one"}), '
            f'images from {image_topic(settings)} ({IMAGE_BACKEND})')
        stop = threading.Event()
        thread = threading.Thread(target=self._inference_loop, args=(stop,),
                                  name='imposing_inference', daemon=True)
        self._inference = (thread, stop)
        thread.start()
        return TransitionCallbackReturn.SUCCESS

    def _load(self, settings: Settings):
        """(SceneLocalizer, device) or an exception with a clear message."""
        from imposing_ros.localization.scenes import SceneLocalizer

        # Values from parameter files were declared before the set-callback existed: check them.
        reason = params.check_values(settings.values, PARAMETERS, cross_check)
        if reason:
            raise ValueError(reason)
        device = resolve_device(settings.device)
        localizer = SceneLocalizer.from_checkpoint(
            settings.model_path or str(default_model()), settings.scene,
            settings.scene_switch_frames, config=localizer_config(settings), device=device,
            backend=settings.backend, inductor=settings.inductor,
            engine_cache=settings.engine_cache or None)
        if len(localizer.scenes) > 1 and SCENE_PLACEHOLDER not in settings.map_frame:
            raise ValueError(f'scenes {localizer.scenes} need one map frame each: put {{scene}} '
                             f"in map_frame (now '{settings.map_frame}'), e.g. map_{{scene}}")
        # Warm-up frames per scene (no scene vote), global and tracking: the first real frames
        # then have representative latency, and none is skipped while something compiles.
        for scene_localizer in localizer.localizers.values():
            scene_localizer.warm_up()
        return localizer, device

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Subscribe to images, the prior and the initial pose."""
        s = self._settings
        self._active_subscriptions = subscribe(self, s, self._input_group, self._on_image,
                                               self._on_prior, self._on_initial_pose)
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

    def destroy_node(self):
        """Stop the inference thread, then destroy the node (also without a shutdown)."""
        self._stop_inference()
        super().destroy_node()

    def _unsubscribe(self):
        for sub in self._active_subscriptions:
            self.destroy_subscription(sub)
        self._active_subscriptions = []
        self._mailbox.clear()

    def _stop_inference(self):
        """Stop the inference thread after the frame in flight (if any)."""
        if self._inference is not None:
            thread, stop = self._inference
            stop.set()
            if thread is not threading.current_thread():
                thread.join()
            self._inference = None

    def _release(self):
        self._stop_inference()  # the frame in flight finishes before its publishers go
        self._localizer = None
        for destroy, entity in self._entities:
            destroy(entity)
        self._entities = []
        if self._tf is not None:
            self._tf.close()
        self._tf = None
        with self._lock:
            self._settings = None
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _reset_state(self):
        """Forget priors and stamps (configure, clock jump back)."""
        self._priors.forget()
        self._gate = FrameGate()  # stamps of the frames taken
        self._last_start = 0.0
        self._last_event_diag = 0.0
        self._scene_scores = {}

    # --- input callbacks (input group: quick, never blocking) -------------------------------

    def _on_image(self, msg):
        self._mailbox.put(msg)

    def _on_prior(self, msg: PoseWithCovarianceStamped):
        try:
            prior = map_pose(msg, self._settings.map_frame, self._localizer, True)
        except ValueError as exc:
            self.get_logger().warning(f'prior refused: {exc}', throttle_duration_sec=5.0)
            return
        self._priors.set_filter_prior(Time.from_msg(msg.header.stamp).nanoseconds, prior)

    def _on_initial_pose(self, msg: PoseWithCovarianceStamped):
        try:
            prior = map_pose(msg, self._settings.map_frame, self._localizer, False)
        except ValueError as exc:
            self.get_logger().warning(f'initial pose refused: {exc}')
            return
        self._priors.set_initial_pose(prior)  # the latest request wins
        xyz = prior.matrix[:3, 3]
        self.get_logger().info(f'initial pose received at ({xyz[0]:.1f}, {xyz[1]:.1f}) in '
                               f"'{msg.header.frame_id}': the next frame searches around it")

    def _on_relocalize(self, request, response):
        self._priors.request_global()
        response.success = True
        response.message = 'the next frame runs a global search'
        self.get_logger().info('relocalization requested')
        return response

    # --- inference (the node's inference thread) ---------------------------------------------

    def _inference_loop(self, stop: threading.Event):
        """Process the newest frame whenever one is there, until ``stop`` is set."""
        while not stop.is_set():
            msg = self._mailbox.wait(timeout=0.1)
            settings = self._settings
            if msg is not None and settings is not None:  # not cleaned up meanwhile
                self._process_one(msg, settings)

    def _process_one(self, msg, settings: Settings):
        settings = Settings({**settings.values, **{name.replace('.', '_'): self.get_parameter(
            name).value for name in LIVE}})
        if settings.max_rate > 0:
            wait = self._last_start + 1.0 / settings.max_rate - time.monotonic()
            if wait > 0:
                time.sleep(wait)  # this thread only: input keeps flowing into the mailbox
                msg = self._mailbox.take(newer_than=msg)
        self._last_start = time.monotonic()
        try:
            self._process(msg, settings)  # cleanup joins this thread before it frees the model
        except Exception as exc:  # a bug must not kill the node: report it, go on
            with self._lock:
                self._stats.fail(f'{type(exc).__name__}: {exc}')
            self._priors.request_global()
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
        prior_pose, prior_cov = self._seed(stamp, s, extrinsic)
        found = self._localizer.localize(rgb, prior_pose, prior_cov, s.min_score)
        result, map_frame = found.result, scene_frame(s.map_frame, found.scene)
        if found.switched:
            self._on_scene(found.scene, found.scores)
        self._scene_scores = found.scores
        if not (np.isfinite(result.pose).all() and np.isfinite(result.covariance).all()):
            raise ValueError('the localizer returned a non-finite pose or covariance')
        self._gate.processed(stamp.nanoseconds)

        # camera body -> base_link, covariance through the lever arm (module docstring).
        t_map_camera = pose_to_matrix(result.pose)
        t_map_base = t_map_camera @ np.linalg.inv(extrinsic)
        cov_camera = result.covariance + np.diag(np.square(s.min_std))
        covariance = compose_covariance(cov_camera, t_map_camera[:3, 3], t_map_base[:3, 3])
        good = result.score >= s.min_score
        self._out.publish_result(result, extrinsic, t_map_base, covariance, msg.header.stamp,
                                 map_frame, s.markers_count, good)
        if good:
            self._tf.publish_map_odom(t_map_base, stamp, s, map_frame)
        age_ms = (self.get_clock().now().nanoseconds - stamp.nanoseconds) * 1e-6
        with self._lock:
            self._stats.record(result, good, 1e3 * (time.perf_counter() - started), age_ms,
                               s.min_score)
        if not good:
            self._priors.request_global()
            self.get_logger().warning(f'score {result.score:.3f} under min_score {s.min_score}: '
                                   'no pose published, next frame searches globally',
                                   throttle_duration_sec=5.0)

    def _seed(self, stamp: Time, s: Settings, extrinsic: np.ndarray):
        """(T_map_camera pose (7,), covariance) seeding tracking, or (None, None) for global."""
        seed = self._priors.take(stamp.nanoseconds, s.tracking_enabled, s.tracking_prior_timeout)
        if seed is None:
            return None, None
        if seed.scene != self._localizer.scene:  # an initial pose in another scene's map
            self._localizer.set_scene(seed.scene)
            self._on_scene(seed.scene, {})
        t_map_camera = seed.matrix @ extrinsic
        cov_camera = compose_covariance(seed.covariance, seed.matrix[:3, 3], t_map_camera[:3, 3])
        return matrix_to_pose(t_map_camera), cov_camera

    def _on_scene(self, scene: str, scores: dict):
        """The scene in use changed: say so; the filter's prior was of the former map."""
        self._priors.forget_filter_prior()
        self._out.scene.publish(String(data=scene))
        detail = ', '.join(f'{k} {v:.3f}' for k, v in scores.items())
        self.get_logger().info(f'scene {scene}' + (f' (scores {detail})' if detail else ''))

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
        values = {**self._mailbox.counts(), **values}
        self._out.publish_diagnostics(localization_status(
            self.get_name(), values, window, outcome, bool(self._active_subscriptions),
            self._localizer, self._scene_scores, self._device, s))


def main(args=None) -> None:
    """Run the node alone (``ros2 run imposing_ros localizer_node``; lifecycle driven outside)."""
    spin(LocalizerNode, NODE_NAME, args)


if __name__ == '__main__':
    main()
