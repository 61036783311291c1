"""Live localization demo over DDS on a held-out simulated traversal.

What runs, all on this machine (``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST``, a domain of its
own when ``ROS_DOMAIN_ID`` is unset):

1. ``imposing-ros run`` in a child process: the localizer (and the motion filter) with the
   packaged parameters, the model given by ``--model``, sim time, and the camera settings read
   from the bag (compressed images, extrinsic from ``/tf_static``).
2. Here, a player node publishes the bag's messages as recorded (raw CDR, no conversion) with
   ``/clock``, at the recorded pace, and a collector records ``/imposing_localizer/pose``.
3. Every pose is compared with ``/ground_truth/pose`` of the bag at the image stamp; a summary
   (frames, errors, recalls, latency percentiles) is printed.

Several bags (``--bag A B``) play one after another, each later one restamped to follow the
previous (:mod:`imposing_ros.nodes.demo_bags`): with a model of several scenes the node runs
``scene: auto``, a pose must be in the map frame of its bag's scene, and the summary adds each
bag's accuracy and the frames the node needed to switch maps.

If the bag is missing it is simulated (deterministic) with ``imposing-ros sim``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import math
import os
from pathlib import Path
import signal
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import yaml

from imposing_ros.geometry import pose_to_matrix
from imposing_ros.nodes import node_set
from imposing_ros.nodes.demo_bags import Playlist, TF_STATIC_TOPIC
from imposing_ros.nodes.demo_report import (
    format_summary,
    frame_errors,
    summarize,
    write_frames_csv,
)
from imposing_ros.utils import atomic_write_text, stamp_to_ns

LOGGER = logging.getLogger('imposing_ros.demo')

SCENE = 'config/scenes/helsinki.yaml'
DEFAULT_BAG = 'runs/demo/helsinki_heldout'
DEMO_DOMAIN_ID = '73'
# Map frames of a model with several scenes (the {scene} placeholder of the nodes' map_frame).
MULTI_SCENE_MAP_FRAME = 'map_{scene}'
# Period of /clock during playback (bag time): 40 Hz, the rate of ros2 bag play --clock.
CLOCK_PERIOD_NS = 25_000_000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``imposing-ros demo``."""
    parser.add_argument('--model', default=str(node_set.default_model()),
                        help='ImPosing checkpoint (default: the packaged demo model)')
    parser.add_argument('--bag', nargs='+', default=[DEFAULT_BAG], metavar='BAG',
                        help='rosbag2 of a held-out traversal (the default one is simulated '
                             'when missing); several are played one after another, each '
                             'restamped to follow the previous (a drive from one mapped area '
                             'into another, for a model of several scenes)')
    parser.add_argument('--traversal', default='heldout',
                        help='when simulating: the traversal (bag name part) to replay')
    parser.add_argument('--frames', type=int, default=300,
                        help='when simulating: images of the held-out traversal to render')
    parser.add_argument('--params', default='',
                        help='extra parameter file merged over the demo settings')
    parser.add_argument('--use-filter', default='true', choices=('true', 'false'),
                        help='also run the motion filter')
    parser.add_argument('--rate', type=float, default=1.0, help='playback speed factor')
    parser.add_argument('--json', default='', help='also write the summary to this JSON file')
    parser.add_argument('--csv', default='',
                        help='also write every frame (published pose, errors) to this CSV')
    parser.add_argument('--startup-timeout', type=float, default=180.0,
                        help='seconds to wait for the localizer to become active')
    # 8765: imposing_ros.nodes.live_view.DEFAULT_PORT (not imported here: it loads rclpy).
    parser.add_argument('--foxglove', nargs='?', type=int, const=8765, default=None,
                        metavar='PORT',
                        help='also serve a live view to Foxglove on ws://127.0.0.1:PORT '
                             '(default 8765; layout config/foxglove_layout.json; needs '
                             'foxglove-sdk)')


# --- parameters and messages ------------------------------------------------------------------

def restamped(msg, offset_ns: int):
    """``msg`` with its header stamp (and its transforms' stamps) moved by ``offset_ns``."""
    from builtin_interfaces.msg import Time

    def shift(header):
        sec, nsec = divmod(stamp_to_ns(header.stamp) + offset_ns, 1_000_000_000)
        header.stamp = Time(sec=sec, nanosec=nsec)
    if hasattr(msg, 'header'):
        shift(msg.header)
    for transform in getattr(msg, 'transforms', ()):
        shift(transform.header)
    return msg


def rpy_of_matrix(rotation: np.ndarray) -> list[float]:
    """ROS roll, pitch, yaw (fixed axes x, y, z) of a rotation matrix."""
    pitch = math.asin(max(-1.0, min(1.0, -rotation[2, 0])))
    roll = math.atan2(rotation[2, 1], rotation[2, 2])
    yaw = math.atan2(rotation[1, 0], rotation[0, 0])
    return [roll, pitch, yaw]


def demo_parameters(info: Playlist, extra: dict | None = None,
                    scenes: list[str] | None = None) -> dict:
    """Parameter file content: the bag's camera settings, then ``extra``'s localizer block.

    With a model of several ``scenes``: ``scene: auto`` and one map frame per scene
    (:data:`MULTI_SCENE_MAP_FRAME`) for the localizer and the filter.
    """
    name = f'/**/{node_set.LOCALIZER.name}'
    params = {
        'image_topic': info.image_topic.removesuffix('/compressed'),
        'image_transport': 'compressed' if info.compressed else 'raw',
    }
    filter_block = {}
    if scenes and len(scenes) > 1:
        params.update({'scene': 'auto', 'map_frame': MULTI_SCENE_MAP_FRAME})
        filter_block = {f'/**/{node_set.MOTION_FILTER.name}': {
            'ros__parameters': {'map_frame': MULTI_SCENE_MAP_FRAME}}}
    if info.extrinsic is not None:
        # REP-103: optical frames end in '_optical' / '_optical_frame' (z forward).
        optical = 'optical' in (info.image_frame or '')
        params.update({'camera_frame': info.image_frame,
                       'camera_extrinsic.xyz': [float(v) for v in info.extrinsic[:3, 3]],
                       'camera_extrinsic.rpy': rpy_of_matrix(info.extrinsic[:3, :3]),
                       'camera_extrinsic.optical': optical})
    else:
        LOGGER.warning("no /tf_static chain base_link -> %s in the bag: the parameter file's "
                       'camera extrinsic is used', info.image_frame)
    blocks = {name: {'ros__parameters': params}, **filter_block}
    for key, block in (extra or {}).items():
        if key.rstrip('/').endswith(node_set.LOCALIZER.name):
            params.update(block.get('ros__parameters', {}))
        else:
            blocks[key] = block
    return blocks


# --- the live part ----------------------------------------------------------------------------

class Session:
    """Player + collector node in this process."""

    def __init__(self, info: Playlist):
        import rclpy
        from rclpy.executors import SingleThreadedExecutor

        self.info = info
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node('imposing_demo_player', context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.lock = threading.Lock()
        self.sent = {}  # image stamp ns -> wall time published
        self.poses = []  # (wall time received, stamp ns, T_map_base)
        self.diagnostics = {}
        self._subscribe()
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def _subscribe(self):
        from diagnostic_msgs.msg import DiagnosticArray
        from geometry_msgs.msg import PoseWithCovarianceStamped

        from imposing_ros.nodes.events import no_event_callbacks

        def on_pose(msg):
            p, q = msg.pose.pose.position, msg.pose.pose.orientation
            with self.lock:
                self.poses.append((time.monotonic(), stamp_to_ns(msg.header.stamp),
                                   pose_to_matrix([p.x, p.y, p.z, q.x, q.y, q.z, q.w]),
                                   msg.header.frame_id))

        def on_diagnostics(msg):
            for status in msg.status:
                if status.name.startswith(node_set.LOCALIZER.name):
                    with self.lock:
                        self.diagnostics = {kv.key: kv.value for kv in status.values}

        # No QoS event handlers, as in the nodes (imposing_ros.nodes.events): the player thread
        # shares this process's GIL with the executor.
        self.node.create_subscription(PoseWithCovarianceStamped,
                                      f'/{node_set.LOCALIZER.name}/pose', on_pose, 100,
                                      event_callbacks=no_event_callbacks())
        self.node.create_subscription(DiagnosticArray, '/diagnostics', on_diagnostics, 10,
                                      event_callbacks=no_event_callbacks())

    def wait_active(self, runner: subprocess.Popen, timeout: float) -> None:
        """Until the localizer reports active (lifecycle get_state), or a clear error."""
        from lifecycle_msgs.msg import State
        from lifecycle_msgs.srv import GetState

        client = self.node.create_client(GetState, f'/{node_set.LOCALIZER.name}/get_state')
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if runner.poll() is not None:
                raise RuntimeError(f'the node set exited with code {runner.returncode} '
                                   '(its error is printed above)')
            if client.wait_for_service(timeout_sec=0.5):
                future = client.call_async(GetState.Request())
                end = time.monotonic() + 5
                while not future.done() and time.monotonic() < end:
                    time.sleep(0.02)
                if future.done() and future.result().current_state.id == \
                        State.PRIMARY_STATE_ACTIVE:
                    return
            time.sleep(0.2)
        raise RuntimeError(f'the localizer did not become active within {timeout:.0f} s')

    def play(self, rate: float) -> int:
        """Publish the bags at ``rate`` x recorded pace with /clock; returns images published.

        The first bag goes out as recorded (raw CDR, as ros2 bag play); later bags are
        deserialized and restamped by their playlist offset.
        """
        from rclpy.qos import qos_profile_sensor_data, QoSProfile
        from rclpy.serialization import deserialize_message
        from rosbags.highlevel import AnyReader
        from rosgraph_msgs.msg import Clock

        from imposing_ros.nodes.tf_io import odometry_tf_publisher

        clock_pub = self.node.create_publisher(Clock, '/clock', 10)
        # odom -> base_link on /tf from the recorded odometry, as a robot's odometry node
        # does (the localizer needs it for map -> odom); None where TFMessage is missing.
        publish_odom_tf = odometry_tf_publisher(self.node)
        publishers, types, images = {}, {}, 0
        playlist = self.info
        start_wall, start_bag, last_clock = None, None, -CLOCK_PERIOD_NS
        for bag, offset in zip(playlist.bags, playlist.offsets):
            with AnyReader([bag.path]) as reader:
                for conn in reader.connections:
                    if conn.topic == TF_STATIC_TOPIC or conn.topic in publishers:
                        # The localizer publishes the extrinsic it was given (read from this
                        # topic): a second copy would give the camera frame two parents.
                        continue
                    package, _, name = conn.msgtype.split('/')
                    try:
                        cls = getattr(importlib.import_module(f'{package}.msg'), name)
                    except (ImportError, AttributeError):
                        LOGGER.info('%s (%s) is not replayed: no Python type here', conn.topic,
                                    conn.msgtype)
                        continue
                    qos = (qos_profile_sensor_data if conn.topic == playlist.image_topic
                           else QoSProfile(depth=10))
                    publishers[conn.topic] = self.node.create_publisher(cls, conn.topic, qos)
                    types[conn.topic] = cls
                if start_wall is None:
                    image_pub = publishers[playlist.image_topic]
                    deadline = time.monotonic() + 30
                    while image_pub.get_subscription_count() == 0:
                        if time.monotonic() > deadline:
                            raise RuntimeError(f'nobody subscribes to {playlist.image_topic}')
                        time.sleep(0.05)
                    start_wall = time.monotonic()
                for conn, timestamp, raw in reader.messages():
                    if conn.topic not in publishers:
                        continue
                    timestamp += offset
                    start_bag = timestamp if start_bag is None else start_bag
                    due = start_wall + (timestamp - start_bag) * 1e-9 / rate
                    wait = due - time.monotonic()
                    if wait > 0:
                        time.sleep(wait)
                    # /clock at most every CLOCK_PERIOD_NS of bag time, and before every image
                    # (as ros2 bag play --clock publishes at a fixed rate): a /clock per message
                    # (100 Hz with odometry and ground truth) keeps every executor busy.
                    is_image = conn.topic == playlist.image_topic
                    if is_image or timestamp - last_clock >= CLOCK_PERIOD_NS:
                        sec, nsec = divmod(timestamp, 1_000_000_000)
                        clock = Clock()
                        clock.clock.sec, clock.clock.nanosec = sec, nsec
                        clock_pub.publish(clock)
                        last_clock = timestamp
                    msg = None
                    if offset:
                        msg = restamped(deserialize_message(bytes(raw), types[conn.topic]),
                                        offset)
                    if is_image:
                        stamp = stamp_to_ns(reader.deserialize(raw, conn.msgtype).header.stamp)
                        with self.lock:
                            self.sent[stamp + offset] = time.monotonic()
                        images += 1
                    publishers[conn.topic].publish(bytes(raw) if msg is None else msg)
                    if publish_odom_tf is not None and \
                            conn.msgtype == 'nav_msgs/msg/Odometry':
                        publish_odom_tf(msg if msg is not None else
                                        reader.deserialize(raw, conn.msgtype))
        return images

    def close(self):
        """Stop spinning, destroy the node, shut the context down."""
        import rclpy

        self.executor.shutdown(timeout_sec=5.0)
        self.thread.join(timeout=5.0)  # the spin loop has returned: nothing runs any more
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)


def simulate_heldout(bag: Path, traversal: str = 'heldout', frames: int = 300) -> Path:
    """Render the first ``frames`` images of the held-out traversal into ``bag`` (deterministic).

    Only that traversal is rendered (about half a minute for 300 frames on 2 cores); the images
    and stamps are those of the full traversal, cut short.
    """
    scene = node_set.package_root() / SCENE
    names = [t['name'] for t in yaml.safe_load(scene.read_text()).get('traversals', [])]
    chosen = [n for n in names if traversal in n]
    if len(chosen) != 1:
        raise ValueError(f'{scene}: --traversal {traversal!r} must match exactly one of '
                         f'{", ".join(names)}')
    out = bag.parent / (bag.name + '_sim')
    command = ['sim', '--scene', str(scene), '--out', str(out), '--traversals', chosen[0],
               '--max-frames', str(frames)]
    LOGGER.info('%s is missing: simulating it (imposing-ros %s)', bag, ' '.join(command))
    from imposing_ros import cli

    code = cli.main(command)
    if code != 0:
        raise RuntimeError(f'the simulator failed (exit code {code})')
    rendered = out / chosen[0]
    if not (rendered / 'metadata.yaml').is_file():
        raise RuntimeError(f'the simulator wrote no rosbag2 at {rendered}')
    bag.parent.mkdir(parents=True, exist_ok=True)
    if not bag.exists():
        bag.symlink_to(rendered.resolve(), target_is_directory=True)
    return bag


def run(args: argparse.Namespace) -> int:
    """The demo (module docstring)."""
    model = Path(args.model)
    if not model.is_file():
        raise FileNotFoundError(
            f'model {model} not found: train one (imposing-ros train ...) or pass --model')
    if args.foxglove is not None:
        from imposing_ros.nodes import live_view

        live_view.require_foxglove()  # a missing package fails now, not after the rendering
    bags = [Path(b) for b in args.bag]
    for bag in bags:
        if not bag.exists():
            if bag != Path(DEFAULT_BAG):
                raise FileNotFoundError(f'bag {bag} not found (only {DEFAULT_BAG} is simulated '
                                        'when missing; imposing-ros sim renders others)')
            simulate_heldout(bag, args.traversal, args.frames)
    from imposing_ros.model.checkpoint import read_checkpoint

    scenes = list(read_checkpoint(model)['scenes'])
    info = Playlist(bags)
    if len(scenes) > 1:  # a pose must be in the map of the bag's scene, else it is a miss
        unknown = [str(b.path) for b in info.bags if b.scene not in scenes]
        if unknown:
            raise ValueError(f'bags {unknown} are of no scene of the model ({scenes}; a '
                             "bag's scene is in its scene.json)")
        info.map_frames = [MULTI_SCENE_MAP_FRAME.format(scene=b.scene) for b in info.bags]
    os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
    os.environ.setdefault('ROS_DOMAIN_ID', DEMO_DOMAIN_ID)
    os.environ.update(node_set.dds_environment())  # the player and the node set alike
    extra = yaml.safe_load(Path(args.params).read_text()) if args.params else None
    workdir = Path(tempfile.mkdtemp(prefix='imposing_demo_'))
    params = workdir / 'demo_params.yaml'
    params.write_text(yaml.safe_dump(demo_parameters(info, extra, scenes), sort_keys=False))
    command = [sys.executable, '-m', 'imposing_ros.cli', 'run', '--params', str(params),
               '--model', str(model.resolve()), '--use-sim-time', 'true',
               '--use-filter', args.use_filter, '--log-level', 'warn']
    LOGGER.info('starting the node set: %s', ' '.join(command))
    runner = subprocess.Popen(command)
    session = view = None
    try:
        if args.foxglove is not None:  # the images the localizer reads, on the bag's clock
            view = live_view.LiveView(args.foxglove, info.image_topic.removesuffix('/compressed'),
                                      'compressed' if info.compressed else 'raw',
                                      use_sim_time=True)
        session = Session(info)
        session.wait_active(runner, args.startup_timeout)
        LOGGER.info('playing %s (%d images on %s)', info.path, info.images, info.image_topic)
        session.play(args.rate)
        # Let the last frame come back: bounded by the rate of the localizer.
        end = time.monotonic() + 5.0
        last = -1
        while time.monotonic() < end:
            with session.lock:
                count = len(session.poses)
            if count == last and count:
                break
            last = count
            time.sleep(1.0)
        with session.lock:
            sent, poses = dict(session.sent), list(session.poses)
            summary = summarize(info, sent, poses, dict(session.diagnostics))
    finally:
        if view is not None:
            view.close()
        if session is not None:
            session.close()
        if runner.poll() is None:
            runner.send_signal(signal.SIGINT)
            try:
                runner.wait(timeout=15)
            except subprocess.TimeoutExpired:
                runner.kill()
                runner.wait()
    print(format_summary(summary))
    if args.json:
        atomic_write_text(args.json, json.dumps(summary, indent=2))
    if args.csv:
        write_frames_csv(args.csv, frame_errors(info, sent, poses))
    if summary['poses'] == 0:
        raise RuntimeError('the localizer published no pose (is min_score too high for this '
                           'model? see its log above)')
    return 0

