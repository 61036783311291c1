"""rosbag2 reader (sqlite3 and MCAP, through ``rosbags``, no ROS install needed).

Yields :class:`~imposing_ros.data.frames.Frame` objects: every image of an image topic (raw
``sensor_msgs/Image`` or ``CompressedImage``) with the pose interpolated at its header stamp
(linear for the position, slerp for the rotation) from a pose topic (``PoseStamped``,
``PoseWithCovarianceStamped`` or ``Odometry``). Images farther than ``max_gap_s`` from the pose
samples around them are dropped and counted.

The output pose is ``T_map_camera`` of the camera body frame (geometry conventions). When the
pose topic gives the vehicle (its child frame is not the camera), the camera extrinsic is
applied: given explicitly, or read from ``/tf_static`` along the chain from the pose's child
frame (``base_link`` by default) to the image's frame id; an optical frame (``*_optical*``) is
turned into the body frame with :func:`~imposing_ros.geometry.T_camera_optical`.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
import io
import logging
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image
import roma
import torch

from imposing_ros.data.frames import Frame
from imposing_ros.geometry import matrix_to_pose, pose_to_matrix, T_camera_optical

LOGGER = logging.getLogger('imposing_ros.data')

IMAGE_TYPES = ('sensor_msgs/msg/CompressedImage', 'sensor_msgs/msg/Image')
POSE_TYPES = ('geometry_msgs/msg/PoseStamped', 'geometry_msgs/msg/PoseWithCovarianceStamped',
              'nav_msgs/msg/Odometry')
# Preferred pose topics when none is named: a ground truth first.
POSE_TOPIC_HINTS = ('/ground_truth/pose', '/ground_truth', '/gt/pose')


def _stamp_ns(header) -> int:
    return int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)


def _pose_of(msg, msgtype: str) -> np.ndarray:
    pose = msg.pose if msgtype.endswith('PoseStamped') else msg.pose.pose
    p, q = pose.position, pose.orientation
    return np.array([p.x, p.y, p.z, q.x, q.y, q.z, q.w], dtype=np.float64)


def decode_image(msg, msgtype: str, where: str) -> np.ndarray:
    """``[H, W, 3]`` uint8 RGB of an image message, or ValueError naming ``where``."""
    try:
        if msgtype.endswith('CompressedImage'):
            with Image.open(io.BytesIO(bytes(msg.data))) as img:
                return np.asarray(img.convert('RGB'))
        from rosbags.image import message_to_cvimage

        array = message_to_cvimage(msg)  # OpenCV order for colour encodings
    except Exception as exc:  # PIL and rosbags.image raise many types for bad data
        raise ValueError(f'{where}: cannot decode image: {exc}') from exc
    encoding = msg.encoding.lower()
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    elif array.shape[2] == 4:
        array = array[:, :, :3]
    if array.dtype != np.uint8:  # 16-bit images: keep the high byte
        array = (array >> 8).astype(np.uint8) if array.dtype == np.uint16 else \
            np.clip(array, 0, 255).astype(np.uint8)
    if not encoding.startswith('rgb'):
        array = array[:, :, ::-1]  # OpenCV's BGR -> RGB
    return np.ascontiguousarray(array)


@dataclass
class ReadSummary:
    """What a pass over the bag kept and dropped, and why."""

    images: int = 0
    kept: int = 0
    dropped: dict = field(default_factory=dict)

    def drop(self, reason: str) -> None:
        """Count one dropped image."""
        self.dropped[reason] = self.dropped.get(reason, 0) + 1


class RosbagReader:
    """Posed images from one rosbag2 (file or folder); see the module docstring."""

    def __init__(self, path: str | Path, image_topic: str | None = None,
                 pose_topic: str | None = None, max_gap_s: float = 0.2,
                 T_vehicle_camera: np.ndarray | None = None,  # noqa: N803 (transform name)
                 vehicle_frame: str | None = None):
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f'rosbag not found: {self.path}')
        self.max_gap_ns = int(max_gap_s * 1e9)
        self.T_vehicle_camera = T_vehicle_camera
        self.vehicle_frame = vehicle_frame
        self.summary = ReadSummary()
        with self._open() as reader:
            topics = {c.topic: c.msgtype for c in reader.connections}
            counts = {c.topic: c.msgcount for c in reader.connections}
        if not topics:
            raise ValueError(f'{self.path}: the bag holds no topics')
        self.image_topic = self._pick(topics, image_topic, IMAGE_TYPES, (), 'image')
        self.pose_topic = self._pick(topics, pose_topic, POSE_TYPES, POSE_TOPIC_HINTS, 'pose')
        self.image_type, self.pose_type = topics[self.image_topic], topics[self.pose_topic]
        if counts[self.image_topic] == 0:
            raise ValueError(f'{self.path}: topic {self.image_topic} has no messages')
        self._poses: tuple[np.ndarray, np.ndarray, str] | None = None

    @contextmanager
    def _open(self):
        """An open AnyReader; unreadable bags raise ValueError naming the file."""
        from rosbags.highlevel import AnyReader

        reader = AnyReader([self.path])
        try:
            reader.open()
        except Exception as exc:  # rosbags raises its own errors for truncated/foreign files
            raise ValueError(f'{self.path}: not a readable rosbag2: {exc}') from exc
        try:
            yield reader
        finally:
            reader.close()

    def _pick(self, topics: dict, wanted: str | None, types: tuple, hints: tuple,
              what: str) -> str:
        if wanted is not None:
            if wanted not in topics:
                raise ValueError(f'{self.path}: {what} topic {wanted} not found; topics: '
                                 f'{", ".join(sorted(topics))}')
            if topics[wanted] not in types:
                raise ValueError(f'{self.path}: {what} topic {wanted} has type '
                                 f'{topics[wanted]}; supported: {", ".join(types)}')
            return wanted
        candidates = [t for t, kind in topics.items() if kind in types]
        for hint in hints:
            if hint in candidates:
                return hint
        if not candidates:
            raise ValueError(f'{self.path}: no {what} topic (types {", ".join(types)}); '
                             f'topics: {", ".join(sorted(topics))}')
        return sorted(candidates)[0]

    def pose_samples(self) -> tuple[np.ndarray, np.ndarray, str]:
        """(stamps ns [M], poses [M, 7] of the pose topic, its child frame), time-sorted."""
        if self._poses is None:
            stamps, poses, child = [], [], None
            with self._open() as reader:
                conns = [c for c in reader.connections if c.topic == self.pose_topic]
                for conn, _, raw in reader.messages(connections=conns):
                    msg = reader.deserialize(raw, conn.msgtype)
                    stamps.append(_stamp_ns(msg.header))
                    poses.append(_pose_of(msg, conn.msgtype))
                    child = getattr(msg, 'child_frame_id', None) or child
            if not stamps:
                raise ValueError(f'{self.path}: pose topic {self.pose_topic} has no messages')
            order = np.argsort(stamps, kind='stable')
            poses_arr = np.stack(poses)[order]
            if not np.isfinite(poses_arr).all():
                raise ValueError(f'{self.path}: pose topic {self.pose_topic} has NaN poses')
            poses_arr[:, 3:] /= np.linalg.norm(poses_arr[:, 3:], axis=1, keepdims=True)
            self._poses = (np.asarray(stamps, dtype=np.int64)[order], poses_arr,
                           self.vehicle_frame or child or 'base_link')
        return self._poses

    def interpolate(self, stamps_ns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Poses at ``stamps_ns`` ``[K, 7]`` and a mask of those within ``max_gap_s``."""
        times, poses, _ = self.pose_samples()
        stamps_ns = np.asarray(stamps_ns, dtype=np.int64)
        hi = np.clip(np.searchsorted(times, stamps_ns, side='left'), 0, len(times) - 1)
        lo = np.clip(hi - 1, 0, len(times) - 1)
        exact = times[hi] == stamps_ns
        lo = np.where(exact, hi, lo)
        span = (times[hi] - times[lo]).astype(np.float64)
        frac = np.where(span > 0, (stamps_ns - times[lo]) / np.where(span > 0, span, 1), 0.0)
        inside = (times[lo] <= stamps_ns) & (stamps_ns <= times[hi])
        gap = np.maximum(stamps_ns - times[lo], times[hi] - stamps_ns)
        valid = inside & (gap <= self.max_gap_ns)
        t = poses[lo, :3] + frac[:, None] * (poses[hi, :3] - poses[lo, :3])
        q0 = torch.from_numpy(poses[lo, 3:])
        q1 = torch.from_numpy(poses[hi, 3:])
        # roma slerps each pair along its own step: a batch of [K] steps in [0, 1].
        steps = torch.from_numpy(np.clip(frac, 0.0, 1.0))
        q = torch.stack([roma.unitquat_slerp(a, b, s[None])[0] for a, b, s in
                         zip(q0, q1, steps)]) if len(steps) else q0
        return np.concatenate([t, q.numpy()], axis=1), valid

    def extrinsic(self, image_frame: str) -> np.ndarray:
        """``T_vehicle_camera`` (camera body frame): given, or from ``/tf_static``."""
        if self.T_vehicle_camera is not None:
            return np.asarray(self.T_vehicle_camera, dtype=np.float64)
        _, _, vehicle = self.pose_samples()
        if vehicle == image_frame:
            return np.eye(4)
        edges = {}
        with self._open() as reader:
            conns = [c for c in reader.connections if c.topic == '/tf_static']
            for conn, _, raw in reader.messages(connections=conns):
                for tf in reader.deserialize(raw, conn.msgtype).transforms:
                    tr, rot = tf.transform.translation, tf.transform.rotation
                    edges[tf.child_frame_id.lstrip('/')] = (
                        tf.header.frame_id.lstrip('/'),
                        pose_to_matrix([tr.x, tr.y, tr.z, rot.x, rot.y, rot.z, rot.w]))
        chain, frame = np.eye(4), image_frame.lstrip('/')
        while frame != vehicle:
            if frame not in edges:
                raise ValueError(f'{self.path}: /tf_static has no chain {vehicle} -> '
                                 f'{image_frame}; pass T_vehicle_camera')
            parent, transform = edges[frame]
            chain = transform @ chain
            frame = parent
        if '_optical' in image_frame:
            chain = chain @ np.linalg.inv(T_camera_optical())
        return chain

    @property
    def poses(self) -> np.ndarray:
        """Camera poses at the image stamps that have one ``[M, 7]`` (no image decoding)."""
        stamps, frame = [], None
        with self._open() as reader:
            conns = [c for c in reader.connections if c.topic == self.image_topic]
            for conn, _, raw in reader.messages(connections=conns):
                msg = reader.deserialize(raw, conn.msgtype)
                stamps.append(_stamp_ns(msg.header))
                frame = frame or msg.header.frame_id
        poses, valid = self.interpolate(np.asarray(stamps))
        extrinsic = self.extrinsic(frame or '')
        return np.stack([matrix_to_pose(pose_to_matrix(p) @ extrinsic) for p in poses[valid]])

    def __iter__(self) -> Iterator[Frame]:
        self.summary = ReadSummary()
        extrinsic = None
        with self._open() as reader:
            conns = [c for c in reader.connections if c.topic == self.image_topic]
            for conn, _, raw in reader.messages(connections=conns):
                self.summary.images += 1
                where = f'{self.path}:{self.image_topic}'
                try:
                    msg = reader.deserialize(raw, conn.msgtype)
                except Exception as exc:  # a corrupt message: name it, keep going
                    LOGGER.warning('%s: cannot deserialize a message: %s', where, exc)
                    self.summary.drop('undecodable message')
                    continue
                stamp = _stamp_ns(msg.header)
                pose, valid = self.interpolate(np.array([stamp]))
                if not valid[0]:
                    self.summary.drop('no pose within max_gap_s')
                    continue
                if extrinsic is None:
                    extrinsic = self.extrinsic(msg.header.frame_id)
                image = decode_image(msg, conn.msgtype, where)
                camera = matrix_to_pose(pose_to_matrix(pose[0]) @ extrinsic)
                self.summary.kept += 1
                yield Frame(stamp, camera, image, source=f'{where}@{stamp}')
        if self.summary.dropped:
            LOGGER.info('%s: kept %d of %d images; dropped %s', self.path, self.summary.kept,
                        self.summary.images, self.summary.dropped)

    def cache_key(self) -> str:
        """What identifies the content for :meth:`ImageCache.build`."""
        files = sorted(p for p in ([self.path] if self.path.is_file() else self.path.iterdir())
                       if p.is_file())
        stat = ','.join(f'{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}' for p in files)
        return (f'rosbag:{self.path.resolve()}:{self.image_topic}:{self.pose_topic}:'
                f'{self.max_gap_ns}:{stat}')
