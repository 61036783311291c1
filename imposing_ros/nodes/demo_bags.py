"""The bags the demo plays: camera settings and ground truth, and several bags in sequence.

A :class:`Playlist` plays bags one after another, each later bag restamped to start
:data:`GAP_NS` after the previous one ends (a vehicle that drives from one mapped area into
another): its stamps are the played ones, its ground truth follows them. No ROS here (rosbags).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from imposing_ros.data.pose_track import PoseTrack
from imposing_ros.geometry import pose_to_matrix
from imposing_ros.utils import stamp_to_ns

IMAGE_TOPICS = ('/camera/image_raw/compressed', '/camera/image_raw')
GROUND_TRUTH_TOPIC = '/ground_truth/pose'
TF_STATIC_TOPIC = '/tf_static'
# Bag time between the end of one bag and the start of the next.
GAP_NS = 2_000_000_000


def _transform_matrix(transform) -> np.ndarray:
    t, q = transform.translation, transform.rotation
    return pose_to_matrix([t.x, t.y, t.z, q.x, q.y, q.z, q.w])


class BagInfo:
    """What the demo needs from a bag: image topic and frame, extrinsic, ground truth."""

    def __init__(self, path: Path, base_frame: str = 'base_link'):
        from rosbags.highlevel import AnyReader

        self.path = path
        scene_file = path / 'scene.json' if path.is_dir() else path.parent / 'scene.json'
        # The simulator writes the scene's name beside the bag; other bags have none.
        self.scene = json.loads(scene_file.read_text()).get('scene') \
            if scene_file.is_file() else None
        with AnyReader([path]) as reader:
            self.start_ns, self.end_ns = int(reader.start_time), int(reader.end_time)
            topics = {c.topic: c for c in reader.connections}
            self.image_topic = next((t for t in IMAGE_TOPICS if t in topics), None)
            if self.image_topic is None:
                raise ValueError(f'bag {path} has no image topic ({", ".join(IMAGE_TOPICS)})')
            if GROUND_TRUTH_TOPIC not in topics:
                raise ValueError(f'bag {path} has no {GROUND_TRUTH_TOPIC}')
            self.compressed = self.image_topic.endswith('/compressed')
            self.image_frame = None
            self.images = 0
            tree = {}  # child -> (parent, T_parent_child)
            truth_ns, truth = [], []
            wanted = [topics[self.image_topic], topics[GROUND_TRUTH_TOPIC]]
            if TF_STATIC_TOPIC in topics:
                wanted.append(topics[TF_STATIC_TOPIC])
            for conn, _, raw in reader.messages(connections=wanted):
                if conn.topic == self.image_topic:
                    self.images += 1
                    if self.image_frame is None:
                        self.image_frame = reader.deserialize(raw, conn.msgtype).header.frame_id
                    continue
                msg = reader.deserialize(raw, conn.msgtype)
                if conn.topic == TF_STATIC_TOPIC:
                    for tf in msg.transforms:
                        tree[tf.child_frame_id] = (tf.header.frame_id,
                                                   _transform_matrix(tf.transform))
                else:  # PoseStamped, PoseWithCovarianceStamped or Odometry, duck-typed
                    pose = msg.pose.pose if hasattr(msg.pose, 'pose') else msg.pose
                    p, q = pose.position, pose.orientation
                    truth_ns.append(stamp_to_ns(msg.header.stamp))
                    truth.append([p.x, p.y, p.z, q.x, q.y, q.z, q.w])
        # Interpolated as the readers do (linear position, slerp rotation).
        self.truth = PoseTrack.build(truth_ns, truth, f'{path}:{GROUND_TRUTH_TOPIC}')
        self.extrinsic = self._chain(tree, base_frame, self.image_frame)

    @staticmethod
    def _chain(tree: dict, base: str, frame: str | None) -> np.ndarray | None:
        """``T_base_frame`` through the static tree, or None when they are not connected."""
        matrix, current = np.eye(4), frame
        for _ in range(64):
            if current == base:
                return matrix
            if current not in tree:
                return None
            parent, t_parent_child = tree[current]
            matrix = t_parent_child @ matrix
            current = parent
        return None

    def truth_at(self, stamp_ns: int, tolerance_ns: int = 100_000_000) -> np.ndarray | None:
        """``T_map_base`` at a stamp between samples at most ``tolerance_ns`` away, or None."""
        pose, valid = self.truth.at(np.array([stamp_ns]), tolerance_ns)
        return pose_to_matrix(pose[0]) if valid[0] else None


class Playlist:
    """Bags played in sequence (module docstring), seen as one bag by the demo.

    ``offsets[i]`` is added to every stamp of bag ``i``; ``map_frames[i]`` is the map frame a
    pose of bag ``i`` must be in (None: any), set by the demo for a multi-scene model.
    """

    def __init__(self, paths: list[Path]):
        if not paths:
            raise ValueError('no bag to play')
        self.bags = [BagInfo(Path(p)) for p in paths]
        first = self.bags[0]
        for bag in self.bags[1:]:
            same = bag.image_topic == first.image_topic and bag.image_frame == first.image_frame \
                and (bag.extrinsic is None) == (first.extrinsic is None) and \
                (bag.extrinsic is None or np.allclose(bag.extrinsic, first.extrinsic, atol=1e-6))
            if not same:
                raise ValueError(f'{bag.path} and {first.path} differ in camera (image topic, '
                                 f'frame or extrinsic): the demo plays one camera')
        self.offsets = [0]
        end = first.end_ns
        for bag in self.bags[1:]:
            self.offsets.append(end + GAP_NS - bag.start_ns)
            end = bag.end_ns + self.offsets[-1]
        self.map_frames: list[str | None] = [None] * len(self.bags)

    path = property(lambda self: ' + '.join(str(b.path) for b in self.bags))
    image_topic = property(lambda self: self.bags[0].image_topic)
    compressed = property(lambda self: self.bags[0].compressed)
    image_frame = property(lambda self: self.bags[0].image_frame)
    extrinsic = property(lambda self: self.bags[0].extrinsic)
    images = property(lambda self: sum(b.images for b in self.bags))

    def bag_index(self, stamp_ns: int) -> int:
        """Which bag a played stamp belongs to."""
        for i in range(len(self.bags) - 1, 0, -1):
            if stamp_ns >= self.bags[i].start_ns + self.offsets[i]:
                return i
        return 0

    def truth_at(self, stamp_ns: int, tolerance_ns: int = 100_000_000) -> np.ndarray | None:
        """``T_map_base`` at a played stamp (in its bag's map), or None."""
        i = self.bag_index(stamp_ns)
        return self.bags[i].truth_at(stamp_ns - self.offsets[i], tolerance_ns)

    def expected_frame(self, stamp_ns: int) -> str | None:
        """The map frame a pose at this played stamp must be in (None: any)."""
        return self.map_frames[self.bag_index(stamp_ns)]
