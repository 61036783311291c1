"""rosbag2 reader (sqlite3 and MCAP, through ``rosbags``, no ROS install needed).

Yields :class:`~imposing_ros.data.frames.Frame` objects: every image of an image topic (raw
``sensor_msgs/Image`` or ``CompressedImage``), stamped with its *header* stamp, with the pose
interpolated at that stamp (linear for the position, slerp for the rotation) from a pose source:

* a pose topic: ``geometry_msgs/PoseStamped``, ``PoseWithCovarianceStamped`` or
  ``nav_msgs/Odometry``;
* or a TF chain: ``pose_topic='/tf'`` composes ``map_frame -> ... -> vehicle_frame`` from the
  dynamic ``/tf`` edges (each interpolated at the image stamp) and the ``/tf_static`` edges.

An image is dropped, and counted in :attr:`RosbagReader.summary`, when a stamp it needs lies
outside the pose samples or farther than ``max_gap_s`` from the samples around it.

The output pose is ``T_map_camera`` of the camera *body* frame (geometry conventions). The pose
source gives the vehicle frame (Odometry's ``child_frame_id``, or ``vehicle_frame`` for the other
sources, ``base_link`` by default); the camera extrinsic ``T_vehicle_camera`` is then

* ``None`` (default): identity when the image's ``frame_id`` is the vehicle frame, otherwise the
  ``/tf_static`` chain from the vehicle frame to the image's ``frame_id``;
* ``'tf_static'``: always the ``/tf_static`` chain (an error when it is missing);
* a 4x4 matrix or a pose ``(tx, ty, tz, qx, qy, qz, qw)``: given explicitly, of the camera body
  frame (x forward) in the vehicle frame.

A chain ending at an optical frame (REP-103 ``*_optical*`` names, or ``optical=True``) is turned
into the body frame with :func:`~imposing_ros.geometry.T_camera_optical`.

Images are decoded by :mod:`imposing_ros.data.images`, the decoder of the localizer node too.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
import logging
from pathlib import Path
import struct
from typing import Iterator

import numpy as np

from imposing_ros.data.frames import Frame
from imposing_ros.data.images import ImageConversionError, message_to_rgb
from imposing_ros.data.pose_track import frame_name, PoseTrack, TfChain
from imposing_ros.geometry import matrix_to_pose, pose_to_matrix, T_camera_optical
from imposing_ros.utils import stamp_to_ns

LOGGER = logging.getLogger('imposing_ros.data')

IMAGE_TYPES = ('sensor_msgs/msg/CompressedImage', 'sensor_msgs/msg/Image')
POSE_TYPES = ('geometry_msgs/msg/PoseStamped', 'geometry_msgs/msg/PoseWithCovarianceStamped',
              'nav_msgs/msg/Odometry')
TF_STATIC_TOPIC = '/tf_static'
# Preferred pose topics when none is named: a ground truth first.
POSE_TOPIC_HINTS = ('/ground_truth/pose', '/ground_truth', '/gt/pose', '/gt')
DROP_NO_POSE = 'no pose within max_gap_s'
DROP_UNREADABLE = 'undecodable message'


def _pose_of(msg, msgtype: str) -> np.ndarray:
    pose = msg.pose if msgtype.endswith('/PoseStamped') else msg.pose.pose
    p, q = pose.position, pose.orientation
    return np.array([p.x, p.y, p.z, q.x, q.y, q.z, q.w], dtype=np.float64)


def _transform_pose(tf) -> np.ndarray:
    t, q = tf.transform.translation, tf.transform.rotation
    return np.array([t.x, t.y, t.z, q.x, q.y, q.z, q.w], dtype=np.float64)


def header_from_cdr(raw: bytes) -> tuple[int, str]:
    """(stamp ns, frame_id) of a message whose first field is a ``std_msgs/Header``.

    Reads the few bytes of the CDR header only, so the image payload is never copied or decoded
    (``Image`` and ``CompressedImage`` both start with their header).
    """
    if len(raw) < 16:
        raise ValueError('message too short for a header')
    endian = '<' if raw[1] == 1 else '>'
    sec, nanosec, length = struct.unpack_from(f'{endian}iII', raw, 4)
    frame = bytes(raw[16:16 + max(length - 1, 0)]).decode('utf-8', errors='replace')
    return sec * 1_000_000_000 + nanosec, frame


# --- image decoding ---------------------------------------------------------------------------

def decode_image(msg, where: str) -> np.ndarray:
    """``[H, W, 3]`` uint8 RGB of an image message, or ValueError naming ``where``."""
    try:
        return message_to_rgb(msg)
    except ImageConversionError as exc:
        raise ValueError(f'{where}: cannot decode image: {exc}') from exc


# --- reader -----------------------------------------------------------------------------------

@dataclass
class ReadSummary:
    """What a pass over the bag kept and dropped, and why."""

    images: int = 0
    kept: int = 0
    dropped: dict = field(default_factory=dict)

    def drop(self, reason: str) -> None:
        """Count one dropped image."""
        self.dropped[reason] = self.dropped.get(reason, 0) + 1

    def __str__(self) -> str:
        reasons = ', '.join(f'{n} {r}' for r, n in sorted(self.dropped.items())) or 'none'
        return f'{self.images} images read, {self.kept} kept, dropped: {reasons}'


def _extrinsic_matrix(value) -> np.ndarray:
    array = np.asarray(value, dtype=np.float64)
    if array.shape == (7,):
        return pose_to_matrix(array)
    if array.shape != (4, 4) or not np.isfinite(array).all():
        raise ValueError(f'T_vehicle_camera must be a 4x4 matrix, a 7-vector pose or '
                         f'"tf_static", got shape {array.shape}')
    return array


class RosbagReader:
    """Posed images from one rosbag2 (file or folder); see the module docstring.

    There is no ``__len__``: counting the kept frames needs a pass over the image topic, and
    ``list(reader)`` would make that pass before iterating (use ``len(reader.poses)``).
    """

    def __init__(self, path: str | Path, image_topic: str | None = None,
                 pose_topic: str | None = None, max_gap_s: float = 0.2,
                 T_vehicle_camera=None,  # noqa: N803 (transform name)
                 vehicle_frame: str | None = None, map_frame: str = 'map',
                 optical: bool | None = None):
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f'rosbag not found: {self.path}')
        if not max_gap_s > 0:
            raise ValueError(f'{self.path}: max_gap_s must be > 0, got {max_gap_s}')
        self.max_gap_ns = int(max_gap_s * 1e9)
        if T_vehicle_camera is None or isinstance(T_vehicle_camera, str):
            if T_vehicle_camera not in (None, 'tf_static'):
                raise ValueError(f'{self.path}: T_vehicle_camera must be None, "tf_static", a '
                                 f'4x4 matrix or a pose, got {T_vehicle_camera!r}')
            self.T_vehicle_camera = T_vehicle_camera
        else:
            self.T_vehicle_camera = _extrinsic_matrix(T_vehicle_camera)
        self.vehicle_frame = vehicle_frame
        self.map_frame = map_frame
        self.optical = optical
        self.summary = ReadSummary()
        with self._open() as reader:
            topics = {c.topic: c.msgtype for c in reader.connections}
            counts: dict[str, int] = {}
            for c in reader.connections:
                counts[c.topic] = counts.get(c.topic, 0) + c.msgcount
        if not topics:
            raise ValueError(f'{self.path}: the bag holds no topics (empty bag)')
        self.topics = topics
        self.image_topic = self._pick(topics, image_topic, IMAGE_TYPES, (), 'image')
        if pose_topic in ('/tf', 'tf'):
            if '/tf' not in topics:
                raise ValueError(f'{self.path}: pose topic /tf not found; topics: '
                                 f'{", ".join(sorted(topics))}')
            self.pose_topic = '/tf'
        else:
            self.pose_topic = self._pick(topics, pose_topic, POSE_TYPES, POSE_TOPIC_HINTS,
                                         'pose')
        self.image_type, self.pose_type = topics[self.image_topic], topics[self.pose_topic]
        for topic in (self.image_topic, self.pose_topic):
            if counts[topic] == 0:
                raise ValueError(f'{self.path}: topic {topic} has no messages')
        self._source = None
        self._static = None
        self._image_stamps = None

    def __repr__(self) -> str:
        return (f'RosbagReader({str(self.path)!r}, image_topic={self.image_topic!r}, '
                f'pose_topic={self.pose_topic!r})')

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

    def _messages(self, reader, topic: str):
        """(connection, raw) of ``topic``; a read failure (truncated file) names file and topic."""
        conns = [c for c in reader.connections if c.topic == topic]
        if not conns:
            return
        try:
            for conn, _, raw in reader.messages(connections=conns):
                yield conn, raw
        except Exception as exc:  # storage errors of a damaged file
            raise ValueError(f'{self.path}: cannot read topic {topic} (truncated or damaged '
                             f'bag?): {exc}') from exc

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
        candidates = sorted(t for t, kind in topics.items() if kind in types)
        for hint in hints:
            if hint in candidates:
                return hint
        if not candidates:
            raise ValueError(f'{self.path}: no {what} topic (types {", ".join(types)}); '
                             f'topics: {", ".join(sorted(topics))}')
        if len(candidates) > 1:
            raise ValueError(f'{self.path}: several {what} topics ({", ".join(candidates)}); '
                             f'name one ({what}_topic=...)')
        return candidates[0]

    # -- poses ---------------------------------------------------------------------------------

    def _read_static(self) -> dict:
        """``/tf_static`` edges ``{child: (parent, 4x4)}`` (empty when the topic is absent)."""
        if self._static is None:
            edges = {}
            if TF_STATIC_TOPIC in self.topics:
                with self._open() as reader:
                    for conn, raw in self._messages(reader, TF_STATIC_TOPIC):
                        for tf in reader.deserialize(raw, conn.msgtype).transforms:
                            edges[frame_name(tf.child_frame_id)] = (
                                frame_name(tf.header.frame_id),
                                pose_to_matrix(_transform_pose(tf)))
            self._static = edges
        return self._static

    def _pose_source(self):
        """(``at(stamps) -> (poses, valid)``, vehicle frame) of the pose topic or TF chain."""
        if self._source is not None:
            return self._source
        where = f'{self.path}:{self.pose_topic}'
        if self.pose_topic == '/tf':
            samples: dict[str, tuple[str, list, list]] = {}
            with self._open() as reader:
                for conn, raw in self._messages(reader, '/tf'):
                    for tf in reader.deserialize(raw, conn.msgtype).transforms:
                        child = frame_name(tf.child_frame_id)
                        entry = samples.setdefault(child, (frame_name(tf.header.frame_id), [], []))
                        entry[1].append(stamp_to_ns(tf.header.stamp))
                        entry[2].append(_transform_pose(tf))
            edges = dict(self._read_static())
            for child, (parent, stamps, poses) in samples.items():
                edges[child] = (parent, PoseTrack.build(stamps, poses, f'{where} {child}'))
            chain = TfChain(edges, where)
            vehicle = self.vehicle_frame or 'base_link'
            chain.path(self.map_frame, vehicle)  # fail early with the edges known

            def at(stamps):
                return chain.at(self.map_frame, vehicle, stamps, self.max_gap_ns)
        else:
            stamps, poses, child = [], [], None
            with self._open() as reader:
                for conn, raw in self._messages(reader, self.pose_topic):
                    msg = reader.deserialize(raw, conn.msgtype)
                    stamps.append(stamp_to_ns(msg.header.stamp))
                    poses.append(_pose_of(msg, conn.msgtype))
                    child = getattr(msg, 'child_frame_id', None) or child
            track = PoseTrack.build(stamps, poses, where)
            vehicle = self.vehicle_frame or (frame_name(child) if child else 'base_link')

            def at(stamps):
                return track.at(stamps, self.max_gap_ns)
        self._source = (at, vehicle)
        return self._source

    def interpolate(self, stamps_ns) -> tuple[np.ndarray, np.ndarray]:
        """Vehicle poses ``T_map_vehicle`` at ``stamps_ns`` ``[K, 7]`` and their validity mask."""
        at, _ = self._pose_source()
        return at(np.asarray(stamps_ns, dtype=np.int64).reshape(-1))

    def extrinsic(self, image_frame: str) -> np.ndarray:
        """``T_vehicle_camera`` 4x4 of the camera body frame for images of ``image_frame``."""
        if isinstance(self.T_vehicle_camera, np.ndarray):
            return self.T_vehicle_camera
        _, vehicle = self._pose_source()
        image_frame = frame_name(image_frame)
        optical = self.optical if self.optical is not None else '_optical' in image_frame
        if image_frame == vehicle and self.T_vehicle_camera is None:
            chain = np.eye(4)
        else:
            edges = self._read_static()
            if not edges:
                raise ValueError(f'{self.path}: topic {TF_STATIC_TOPIC} is missing or empty; '
                                 f'cannot find the extrinsic {vehicle} -> {image_frame} (pass '
                                 f'T_vehicle_camera)')
            chain = TfChain(edges, f'{self.path}:{TF_STATIC_TOPIC}').static(vehicle,
                                                                             image_frame)
        if optical:
            chain = chain @ np.linalg.inv(T_camera_optical())
        return chain

    def image_stamps(self) -> tuple[np.ndarray, str]:
        """Header stamps ``[N]`` (ns) of every image and the first image's frame id.

        Reads only the CDR header bytes of each message: no image is decoded.
        """
        if self._image_stamps is None:
            stamps, frame = [], None
            with self._open() as reader:
                for conn, raw in self._messages(reader, self.image_topic):
                    try:
                        stamp, frame_id = header_from_cdr(raw)
                    except ValueError:
                        msg = reader.deserialize(raw, conn.msgtype)
                        stamp, frame_id = stamp_to_ns(msg.header.stamp), msg.header.frame_id
                    stamps.append(stamp)
                    frame = frame if frame is not None else frame_id
            self._image_stamps = (np.asarray(stamps, dtype=np.int64), frame or '')
        return self._image_stamps

    def read_poses(self) -> tuple[np.ndarray, np.ndarray]:
        """(stamps ``[M]`` ns, camera poses ``[M, 7]``) of the frames iteration would yield."""
        stamps, frame = self.image_stamps()
        poses, valid = self.interpolate(stamps)
        extrinsic = self.extrinsic(frame)
        camera = [matrix_to_pose(pose_to_matrix(p) @ extrinsic) for p in poses[valid]]
        return stamps[valid], np.stack(camera) if camera else np.zeros((0, 7))

    @property
    def poses(self) -> np.ndarray:
        """Camera poses ``[M, 7]`` of the frames iteration yields, without decoding images."""
        return self.read_poses()[1]

    def __iter__(self) -> Iterator[Frame]:
        self.summary = ReadSummary()
        extrinsics: dict[str, np.ndarray] = {}
        where = f'{self.path}:{self.image_topic}'
        with self._open() as reader:
            for conn, raw in self._messages(reader, self.image_topic):
                self.summary.images += 1
                try:
                    msg = reader.deserialize(raw, conn.msgtype)
                except Exception as exc:  # a corrupt message: name it, keep going
                    LOGGER.warning('%s: cannot deserialize a message: %s', where, exc)
                    self.summary.drop(DROP_UNREADABLE)
                    continue
                stamp = stamp_to_ns(msg.header.stamp)
                pose, valid = self.interpolate([stamp])
                if not valid[0]:
                    self.summary.drop(DROP_NO_POSE)
                    continue
                frame = msg.header.frame_id
                if frame not in extrinsics:
                    extrinsics[frame] = self.extrinsic(frame)
                image = decode_image(msg, f'{where}@{stamp}')
                camera = matrix_to_pose(pose_to_matrix(pose[0]) @ extrinsics[frame])
                self.summary.kept += 1
                yield Frame(stamp, camera, image, source=f'{where}@{stamp}')
        level = logging.INFO if self.summary.dropped else logging.DEBUG
        LOGGER.log(level, '%s: %s', self.path, self.summary)

    def cache_key(self) -> str:
        """What identifies the content for :meth:`ImageCache.build`."""
        files = sorted(p for p in ([self.path] if self.path.is_file() else self.path.iterdir())
                       if p.is_file())
        stat = ','.join(f'{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}' for p in files)
        extrinsic = self.T_vehicle_camera if isinstance(self.T_vehicle_camera, str) else \
            np.round(self.T_vehicle_camera, 9).tolist() if self.T_vehicle_camera is not None \
            else None
        return (f'rosbag:{self.path.resolve()}:{self.image_topic}:{self.pose_topic}:'
                f'{self.max_gap_ns}:{self.vehicle_frame}:{self.map_frame}:{self.optical}:'
                f'{extrinsic}:{stat}')


def read_poses(path: str | Path, **options) -> tuple[np.ndarray, np.ndarray]:
    """(stamps ``[M]`` ns, ``T_map_camera`` ``[M, 7]``) of a bag's images, no image decoding.

    ``options`` are those of :class:`RosbagReader`. For building maps of reference poses.
    """
    return RosbagReader(path, **options).read_poses()
