"""Live view of the localizer in Foxglove, through a foxglove-sdk WebSocket server.

:class:`LiveViewNode` subscribes to what the localizer publishes (pose, candidates, score), to
the camera images it reads and to a ground-truth pose where there is one, converts each message
to Foxglove's typed messages (``foxglove.messages``) and logs it to a WebSocket server bound to
127.0.0.1 only (from another machine: ``ssh -L 8765:localhost:8765 robot``). In Foxglove
(app.foxglove.dev or the desktop app): "Open connection" -> "Foxglove WebSocket" ->
``ws://localhost:8765``, then import the layout ``config/foxglove_layout.json``.

Channels (names follow the ROS topics they come from; relative ROS names resolve in the node's
namespace):

============================================  ======================  =========================
Foxglove channel                              message                 from
============================================  ======================  =========================
``/imposing_localizer/pose``                  PoseInFrame             ~/pose of the localizer
``/imposing_localizer/pose/covariance``       SceneUpdate (ellipse)   its covariance
``/imposing_localizer/pose/trajectory``       PosesInFrame (line)     the poses so far
``/imposing_live_view/tf``                    FrameTransforms         map -> base_link, the pose
``/imposing_localizer/candidates``            SceneUpdate             ~/candidates MarkerArray
``/imposing_localizer/score``                 JSON ``{"data": x}``    ~/score Float32
``<image_topic>[/compressed]``                CompressedImage / RawImage  the camera
``/ground_truth/pose``                        PoseInFrame             PoseStamped (bags)
``/ground_truth/pose/trajectory``             PosesInFrame (line)     the true poses so far
============================================  ======================  =========================

Where data crosses from ROS to Foxglove:

* quaternions: both store (x, y, z, w); they are copied field by field, by name, never by
  position. Positions in metres, as in ROS.
* frames: the pose is base_link in map (REP-105), ``frame_id`` kept from the header. The
  map -> base_link transform on ``/imposing_live_view/tf`` is the *estimate* (what the 3D panel
  follows), not the robot's TF tree (map -> odom -> base_link), which is not forwarded.
* time: a message's ``timestamp`` is its ROS header stamp; its log time is when the node
  received it on its ROS clock (sim time under ``use_sim_time``), as foxglove_bridge does: a
  replayed bag keeps one time base for the 3D panel and the plots.
* covariance (6x6 row-major, x y z rot-x rot-y rot-z): drawn as the 95 % ellipse of (x, y),
  the ellipse ``imposing-ros evaluate`` checks ("95 % ellipse holds").
* markers: ARROW (pose form), SPHERE, CUBE and TEXT_VIEW_FACING become scene primitives, one
  scene entity per (ns, id), sized as RViz draws them; DELETE / DELETEALL become deletions.
  Other marker types are skipped (logged once): the localizer publishes none.

Subscriptions are best effort (they match reliable and best-effort publishers, and a viewer
never holds a publisher back) and, like every subscription of this package, have no QoS event
handlers (:class:`~imposing_ros.nodes.events.QuietSubscriptions`, docs/design.md).
foxglove-sdk is imported only when a view starts; without it a clear error says how to install
it. Images cost nothing while no client watches them; otherwise at most ``max_image_rate``.
The view shares the localizer's CPU (with ``run``, its process): ground-truth poses
(``max_pose_rate``) and the trajectory lines, which hold every point so far
(``max_trajectory_rate``), are rate-limited too.
Parameters (``PARAMETERS``) are read once, when the node starts.
"""

from __future__ import annotations

import math
import threading
import time

from geometry_msgs.msg import PoseStamped, PoseWithCovarianceStamped
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import QoSHistoryPolicy, QoSProfile, QoSReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Float32
from visualization_msgs.msg import MarkerArray

from imposing_ros.nodes import params
from imposing_ros.nodes.events import QuietSubscriptions
from imposing_ros.nodes.foxglove_messages import (  # noqa: F401 (require_foxglove: public here)
    covariance_entity,
    ellipse_xy95,
    image_format,
    require_foxglove,
    scene_update,
    to_pose,
    to_timestamp,
    Trajectory,
)

NODE_NAME = 'imposing_live_view'
DEFAULT_PORT = 8765
HOST = '127.0.0.1'  # this machine only: the server has no authentication
PARAMETERS = (
    ('image_topic', 'camera/image_raw',
     "raw image topic, as the localizer's; with image_transport compressed, "
     '<image_topic>/compressed is used', params.nonempty),
    ('image_transport', 'raw', 'raw (sensor_msgs/Image) or compressed (CompressedImage)',
     params.one_of(('raw', 'compressed'))),
    ('pose_topic', 'imposing_localizer/pose',
     'PoseWithCovarianceStamped of base_link in map, the localizer output', params.nonempty),
    ('candidates_topic', 'imposing_localizer/candidates',
     'visualization_msgs/MarkerArray of the top candidates', params.nonempty),
    ('score_topic', 'imposing_localizer/score', 'std_msgs/Float32, best score of each frame',
     params.nonempty),
    ('truth_topic', '/ground_truth/pose',
     'geometry_msgs/PoseStamped of base_link in map (recorded and simulated bags); empty: none',
     None),
    ('base_frame', 'base_link', 'child frame of the map -> estimate transform the 3D panel '
     'follows', params.nonempty),
    ('port', DEFAULT_PORT, f'WebSocket port on {HOST} (0: any free port)',
     params.in_range(0, 65535)),
    ('max_image_rate', 15.0, 'images forwarded per second at most (0: every image)',
     params.at_least(0.0)),
    ('max_pose_rate', 15.0, 'ground-truth poses forwarded per second at most (0: every pose)',
     params.at_least(0.0)),
    ('max_trajectory_rate', 2.0, 'each trajectory line sent per second at most (0: on every '
     'new point; a line holds all its points, so sending it often costs the localizer time)',
     params.at_least(0.0)),
    ('trajectory_length', 5000, 'poses kept in each trajectory (the oldest are dropped)',
     params.at_least(2)),
    ('trajectory_step', 0.5, 'a pose joins a trajectory once this far from the last (m)',
     params.at_least(0.0)),
)


class LiveViewNode(QuietSubscriptions, Node):
    """Subscribes to the localizer's topics and serves them to Foxglove (module docstring)."""

    def __init__(self, node_name: str = NODE_NAME, **kwargs):
        """Start the WebSocket server and subscribe; ``kwargs`` go to ``rclpy.node.Node``.

        Raises RuntimeError when foxglove-sdk is missing or the port cannot be bound.
        """
        fox = require_foxglove()
        super().__init__(node_name, **kwargs)
        params.declare(self, PARAMETERS)
        v = params.read(self, PARAMETERS)
        reason = params.check_values(v, PARAMETERS)
        if reason:
            raise ValueError(f'{node_name}: {reason}')
        self._v = v
        self._skipped_types: set[int] = set()
        self._last_sent: dict[str, float] = {}
        self._estimate_track = Trajectory(v['trajectory_length'], v['trajectory_step'])
        self._truth_track = Trajectory(v['trajectory_length'], v['trajectory_step'])
        # A context of its own: the server advertises these channels only (and two views in
        # one process, as in the tests, do not share channels).
        self._fox_context = fox.Context()
        # Channels before the server: a client connecting at once is sent all of them in its
        # first advertisement (a channel added while a client subscribes was refused as
        # 'unknown channel' by foxglove-sdk 0.30 under load, and that stream stayed empty).
        self._subscribe(fox)
        try:
            self._server = fox.start_server(name=self.get_fully_qualified_name(), host=HOST,
                                            port=v['port'], context=self._fox_context)
        except RuntimeError as exc:
            raise RuntimeError(f'live view: cannot serve on {HOST}:{v["port"]}: {exc} (a '
                               'program uses that port? choose another: --foxglove PORT)'
                               ) from exc
        self.get_logger().info(
            f'Foxglove live view on ws://{HOST}:{self.port} (Foxglove: Open connection, then '
            f'import the layout config/foxglove_layout.json), or open {self.app_url}')

    @property
    def port(self) -> int:
        """The port the server listens on (the one chosen when ``port`` was 0)."""
        return self._server.port

    @property
    def app_url(self) -> str:
        """A link that opens app.foxglove.dev connected to this server."""
        return self._server.app_url()

    def _subscribe(self, fox):
        ch, v = fox.channels, self._v
        latest = QoSProfile(depth=1, reliability=QoSReliabilityPolicy.BEST_EFFORT,
                            history=QoSHistoryPolicy.KEEP_LAST)
        queue = QoSProfile(depth=10, reliability=QoSReliabilityPolicy.BEST_EFFORT,
                           history=QoSHistoryPolicy.KEEP_LAST)
        context = self._fox_context

        def channel(kind, topic):
            return kind(topic, context=context)

        compressed = v['image_transport'] == 'compressed'
        image_topic = v['image_topic'] + ('/compressed' if compressed else '')
        self._compressed = compressed
        image_sub = self.create_subscription(CompressedImage if compressed else Image,
                                             image_topic, self._on_image, latest)
        self._image_ch = channel(ch.CompressedImageChannel if compressed else ch.RawImageChannel,
                                 image_sub.topic_name)
        pose_sub = self.create_subscription(PoseWithCovarianceStamped, v['pose_topic'],
                                            self._on_pose, queue)
        pose = pose_sub.topic_name
        self._pose_ch = channel(ch.PoseInFrameChannel, pose)
        self._covariance_ch = channel(ch.SceneUpdateChannel, f'{pose}/covariance')
        self._trajectory_ch = channel(ch.PosesInFrameChannel, f'{pose}/trajectory')
        self._tf_ch = channel(ch.FrameTransformsChannel, self.resolve_topic_name('~/tf'))
        candidates = self.create_subscription(MarkerArray, v['candidates_topic'],
                                              self._on_candidates, latest)
        self._candidates_ch = channel(ch.SceneUpdateChannel, candidates.topic_name)
        score = self.create_subscription(Float32, v['score_topic'], self._on_score, queue)
        # std_msgs/Float32's field name: the plot path is <topic>.data, as over foxglove_bridge.
        self._score_ch = fox.Channel(score.topic_name, context=context, schema={
            'type': 'object', 'title': 'std_msgs/Float32',
            'properties': {'data': {'type': 'number'}}})
        self._truth_ch = self._truth_trajectory_ch = None
        if v['truth_topic'].strip():
            truth = self.create_subscription(PoseStamped, v['truth_topic'], self._on_truth,
                                             queue)
            self._truth_ch = channel(ch.PoseInFrameChannel, truth.topic_name)
            self._truth_trajectory_ch = channel(ch.PosesInFrameChannel,
                                                f'{truth.topic_name}/trajectory')

    def _due(self, what: str, rate: float) -> bool:
        """True when ``what`` may be sent again at ``rate`` per second at most (0: always)."""
        now = time.monotonic()
        if rate > 0 and now - self._last_sent.get(what, -math.inf) < 1.0 / rate:
            return False
        self._last_sent[what] = now
        return True

    def _log_time(self) -> int | None:
        """Receive time on the node's ROS clock (ns); None (the SDK's wall clock) before /clock."""
        now = self.get_clock().now().nanoseconds
        return now if now > 0 else None

    # --- callbacks (the node's default, mutually exclusive group: one at a time) --------------

    def _on_image(self, msg):
        if not self._image_ch.has_sinks():  # nobody watches: no copy, no conversion
            return
        if not self._due('image', self._v['max_image_rate']):
            return
        m = require_foxglove().messages
        stamp = to_timestamp(msg.header.stamp)
        if self._compressed:
            out = m.CompressedImage(timestamp=stamp, frame_id=msg.header.frame_id,
                                    data=bytes(msg.data), format=image_format(msg))
        else:
            out = m.RawImage(timestamp=stamp, frame_id=msg.header.frame_id, width=msg.width,
                             height=msg.height, encoding=msg.encoding, step=msg.step,
                             data=bytes(msg.data))
        self._image_ch.log(out, log_time=self._log_time())

    def _on_pose(self, msg: PoseWithCovarianceStamped):
        m = require_foxglove().messages
        log_time = self._log_time()
        stamp, frame = to_timestamp(msg.header.stamp), msg.header.frame_id
        pose = to_pose(msg.pose.pose)
        self._pose_ch.log(m.PoseInFrame(timestamp=stamp, frame_id=frame, pose=pose),
                          log_time=log_time)
        p, q = msg.pose.pose.position, msg.pose.pose.orientation
        transform = m.FrameTransform(
            timestamp=stamp, parent_frame_id=frame, child_frame_id=self._v['base_frame'],
            translation=m.Vector3(x=p.x, y=p.y, z=p.z),
            rotation=m.Quaternion(x=q.x, y=q.y, z=q.z, w=q.w))
        self._tf_ch.log(m.FrameTransforms(transforms=[transform]), log_time=log_time)
        try:
            entity = covariance_entity(msg)
        except ValueError:  # not 36 finite values: no ellipse
            entity = None
        if entity is not None:
            self._covariance_ch.log(m.SceneUpdate(entities=[entity]), log_time=log_time)
        if self._estimate_track.add((p.x, p.y, p.z), pose) and \
                self._due('trajectory', self._v['max_trajectory_rate']):
            self._trajectory_ch.log(m.PosesInFrame(timestamp=stamp, frame_id=frame,
                                                   poses=list(self._estimate_track.poses)),
                                    log_time=log_time)

    def _on_truth(self, msg: PoseStamped):
        if not self._due('truth', self._v['max_pose_rate']):
            return
        m = require_foxglove().messages
        log_time = self._log_time()
        stamp, frame, pose = to_timestamp(msg.header.stamp), msg.header.frame_id, \
            to_pose(msg.pose)
        self._truth_ch.log(m.PoseInFrame(timestamp=stamp, frame_id=frame, pose=pose),
                           log_time=log_time)
        p = msg.pose.position
        if self._truth_track.add((p.x, p.y, p.z), pose) and \
                self._due('truth trajectory', self._v['max_trajectory_rate']):
            self._truth_trajectory_ch.log(
                m.PosesInFrame(timestamp=stamp, frame_id=frame,
                               poses=list(self._truth_track.poses)), log_time=log_time)

    def _on_candidates(self, msg: MarkerArray):
        update, skipped = scene_update(msg)
        new = skipped - self._skipped_types
        if new:
            self._skipped_types |= new
            self.get_logger().warning(f'marker types {sorted(new)} are not shown in Foxglove '
                                      '(only ARROW, SPHERE, CUBE, TEXT_VIEW_FACING)')
        self._candidates_ch.log(update, log_time=self._log_time())

    def _on_score(self, msg: Float32):
        value = float(msg.data)
        self._score_ch.log({'data': value if math.isfinite(value) else None},
                           log_time=self._log_time())

    def destroy_node(self):
        """Stop the server (clients see the connection close), then destroy the node."""
        server, self._server = getattr(self, '_server', None), None
        if server is not None:
            server.stop()
        return super().destroy_node()


def view_parameters(port: int, image_topic: str, image_transport: str = 'raw',
                    use_sim_time: bool = False, **extra) -> list[Parameter]:
    """Parameter overrides of a view: port, image topic and transport, sim time, any row."""
    values = {'port': int(port), 'image_topic': image_topic,
              'image_transport': image_transport, 'use_sim_time': bool(use_sim_time), **extra}
    return [Parameter(name, value=value) for name, value in values.items()]


def beside(localizer, port: int = DEFAULT_PORT, context=None) -> LiveViewNode:
    """A view of ``localizer`` (a LocalizerNode): its namespace, image topic and sim time."""
    values = {name: localizer.get_parameter(name).value
              for name in ('image_topic', 'image_transport', 'base_frame', 'use_sim_time')}
    return LiveViewNode(namespace=localizer.get_namespace(), context=context,
                        parameter_overrides=view_parameters(port, **values))


class LiveView:
    """A :class:`LiveViewNode` in a context, an executor and a thread of its own.

    For programs that run no executor of theirs for it (the demo, tests)::

        view = LiveView(8765, '/camera/image_raw', 'compressed', use_sim_time=True)
        ...
        view.close()
    """

    def __init__(self, port: int = DEFAULT_PORT, image_topic: str = 'camera/image_raw',
                 image_transport: str = 'raw', use_sim_time: bool = False, **extra):
        import rclpy
        from rclpy.executors import SingleThreadedExecutor

        require_foxglove()  # before DDS starts
        self.context = rclpy.Context()
        rclpy.init(args=[], context=self.context)
        try:
            self.node = LiveViewNode(context=self.context, parameter_overrides=view_parameters(
                port, image_topic, image_transport, use_sim_time, **extra))
        except BaseException:
            rclpy.try_shutdown(context=self.context)
            raise
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True,
                                       name='imposing_live_view')
        self.thread.start()

    @property
    def port(self) -> int:
        """The port the server listens on."""
        return self.node.port

    @property
    def app_url(self) -> str:
        """A link that opens app.foxglove.dev connected to this view."""
        return self.node.app_url

    def close(self) -> None:
        """Stop spinning, stop the server, destroy the node, shut the context down."""
        import rclpy

        self.executor.shutdown(timeout_sec=5.0)
        self.thread.join(timeout=5.0)
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)
