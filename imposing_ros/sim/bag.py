"""rosbag2 (MCAP) output of a traversal, written with ``rosbags`` (no ROS needed).

Topics and frames (REP-103 / REP-105):

* ``/camera/image_raw/compressed`` sensor_msgs/CompressedImage (jpeg), frame
  ``camera_optical_frame``; ``/camera/camera_info`` sensor_msgs/CameraInfo (plumb_bob, zero
  distortion), same stamp and frame;
* ``/odom`` nav_msgs/Odometry, ``odom`` -> ``base_link``, at the odometry rate;
* ``/ground_truth/pose`` geometry_msgs/PoseStamped of base_link in ``map``, at the same rate,
  with the very same stamps (an image stamp is always one of them, to the nanosecond);
* ``/tf_static`` tf2_msgs/TFMessage: ``base_link`` -> ``camera_link`` -> ``camera_optical_frame``
  (offered transient-local, as tf2 publishes it).
"""

from __future__ import annotations

import numpy as np

from imposing_ros.geometry import matrix_to_quat_xyzw

IMAGE_TOPIC = '/camera/image_raw/compressed'
INFO_TOPIC = '/camera/camera_info'
ODOM_TOPIC = '/odom'
TRUTH_TOPIC = '/ground_truth/pose'
TF_STATIC_TOPIC = '/tf_static'
MAP_FRAME, ODOM_FRAME, BASE_FRAME = 'map', 'odom', 'base_link'
CAMERA_FRAME, OPTICAL_FRAME = 'camera_link', 'camera_optical_frame'


class BagWriter:
    """Typed helpers over a ``rosbags`` MCAP writer."""

    def __init__(self, path):
        from rosbags.interfaces import (
            Qos,
            QosDurability,
            QosHistory,
            QosLiveliness,
            QosReliability,
            QosTime,
        )
        from rosbags.rosbag2 import StoragePlugin, Writer
        from rosbags.typesys import get_typestore, Stores

        self.store = get_typestore(Stores.ROS2_KILTED)
        self.types = self.store.types
        self.writer = Writer(path, version=9, storage_plugin=StoragePlugin.MCAP)
        self.writer.open()
        zero = QosTime(0, 0)
        latched = Qos(QosHistory.KEEP_LAST, 1, QosReliability.RELIABLE,
                      QosDurability.TRANSIENT_LOCAL, zero, zero, QosLiveliness.AUTOMATIC, zero,
                      False)
        add = self.writer.add_connection
        self.conn = {
            IMAGE_TOPIC: add(IMAGE_TOPIC, 'sensor_msgs/msg/CompressedImage', typestore=self.store),
            INFO_TOPIC: add(INFO_TOPIC, 'sensor_msgs/msg/CameraInfo', typestore=self.store),
            ODOM_TOPIC: add(ODOM_TOPIC, 'nav_msgs/msg/Odometry', typestore=self.store),
            TRUTH_TOPIC: add(TRUTH_TOPIC, 'geometry_msgs/msg/PoseStamped', typestore=self.store),
            TF_STATIC_TOPIC: add(TF_STATIC_TOPIC, 'tf2_msgs/msg/TFMessage', typestore=self.store,
                                 offered_qos_profiles=[latched]),
        }

    def close(self) -> None:
        """Finish the file."""
        self.writer.close()

    def _write(self, topic: str, stamp_ns: int, msg) -> None:
        self.writer.write(self.conn[topic], stamp_ns,
                          self.store.serialize_cdr(msg, msg.__msgtype__))

    def _header(self, stamp_ns: int, frame: str):
        t = self.types
        return t['std_msgs/msg/Header'](
            stamp=t['builtin_interfaces/msg/Time'](sec=stamp_ns // 10**9,
                                                   nanosec=stamp_ns % 10**9),
            frame_id=frame)

    def _pose(self, matrix: np.ndarray):
        t = self.types
        q = matrix_to_quat_xyzw(matrix[:3, :3])
        return t['geometry_msgs/msg/Pose'](
            position=t['geometry_msgs/msg/Point'](x=float(matrix[0, 3]), y=float(matrix[1, 3]),
                                                  z=float(matrix[2, 3])),
            orientation=t['geometry_msgs/msg/Quaternion'](x=float(q[0]), y=float(q[1]),
                                                          z=float(q[2]), w=float(q[3])))

    def _vector(self, x=0.0, y=0.0, z=0.0):
        return self.types['geometry_msgs/msg/Vector3'](x=float(x), y=float(y), z=float(z))

    def tf_static(self, stamp_ns: int, transforms: list[tuple[str, str, np.ndarray]]) -> None:
        """Static transforms ``(parent, child, T_parent_child)``."""
        t = self.types
        out = []
        for parent, child, matrix in transforms:
            q = matrix_to_quat_xyzw(matrix[:3, :3])
            out.append(t['geometry_msgs/msg/TransformStamped'](
                header=self._header(stamp_ns, parent), child_frame_id=child,
                transform=t['geometry_msgs/msg/Transform'](
                    translation=self._vector(*matrix[:3, 3]),
                    rotation=t['geometry_msgs/msg/Quaternion'](x=float(q[0]), y=float(q[1]),
                                                               z=float(q[2]), w=float(q[3])))))
        self._write(TF_STATIC_TOPIC, stamp_ns, t['tf2_msgs/msg/TFMessage'](transforms=out))

    def truth(self, stamp_ns: int, T_map_base: np.ndarray) -> None:  # noqa: N803
        """Ground-truth pose of base_link in map."""
        msg = self.types['geometry_msgs/msg/PoseStamped'](
            header=self._header(stamp_ns, MAP_FRAME), pose=self._pose(T_map_base))
        self._write(TRUTH_TOPIC, stamp_ns, msg)

    def odometry(self, stamp_ns: int, T_odom_base: np.ndarray, speed: float,  # noqa: N803
                 yaw_rate: float, pose_var: tuple[float, float], twist_var: tuple[float, float]
                 ) -> None:
        """nav_msgs/Odometry, odom -> base_link; covariances row-major (x y z rx ry rz)."""
        t = self.types
        pose_cov = np.diag([pose_var[0], pose_var[0], 1e-6, 1e-6, 1e-6, pose_var[1]])
        # Planar vehicle: lateral, vertical and roll/pitch velocities are known to be ~0.
        twist_cov = np.diag([twist_var[0], 1e-4, 1e-4, 1e-4, 1e-4, twist_var[1]])
        msg = t['nav_msgs/msg/Odometry'](
            header=self._header(stamp_ns, ODOM_FRAME), child_frame_id=BASE_FRAME,
            pose=t['geometry_msgs/msg/PoseWithCovariance'](
                pose=self._pose(T_odom_base), covariance=pose_cov.ravel()),
            twist=t['geometry_msgs/msg/TwistWithCovariance'](
                twist=t['geometry_msgs/msg/Twist'](linear=self._vector(speed),
                                                   angular=self._vector(z=yaw_rate)),
                covariance=twist_cov.ravel()))
        self._write(ODOM_TOPIC, stamp_ns, msg)

    def image(self, stamp_ns: int, jpeg: bytes, intrinsics, width: int, height: int) -> None:
        """Compressed image and its camera info, same stamp, optical frame."""
        t = self.types
        header = self._header(stamp_ns, OPTICAL_FRAME)
        self._write(IMAGE_TOPIC, stamp_ns, t['sensor_msgs/msg/CompressedImage'](
            header=header, format='jpeg', data=np.frombuffer(jpeg, dtype=np.uint8)))
        fx, fy, cx, cy = intrinsics
        self._write(INFO_TOPIC, stamp_ns, t['sensor_msgs/msg/CameraInfo'](
            header=header, height=height, width=width, distortion_model='plumb_bob',
            d=np.zeros(5), k=np.array([fx, 0, cx, 0, fy, cy, 0, 0, 1], float),
            r=np.eye(3).ravel(), p=np.array([fx, 0, cx, 0, 0, fy, cy, 0, 0, 0, 1, 0], float),
            binning_x=0, binning_y=0,
            roi=t['sensor_msgs/msg/RegionOfInterest'](x_offset=0, y_offset=0, height=0,
                                                      width=0, do_rectify=False)))
