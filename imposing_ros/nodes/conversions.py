"""Message <-> numpy conversions shared by the nodes (poses, covariances, stamps, odometry).

Conventions (imposing_ros.geometry): a pose is ``(x, y, z, qx, qy, qz, qw)`` (ROS xyzw), a
covariance is a 6x6 array in ROS layout (x, y, z, rot x, rot y, rot z), a stamp is integer
nanoseconds (``sec * 10**9 + nanosec``; no float rounding).
"""

from __future__ import annotations

from builtin_interfaces.msg import Time as TimeMsg
from geometry_msgs.msg import Point, Pose, PoseWithCovarianceStamped, Quaternion
from nav_msgs.msg import Odometry
import numpy as np

from imposing_ros.geometry import matrix_to_pose, pose_to_matrix
from imposing_ros.utils import stamp_to_ns  # noqa: F401 (the nodes' one import of it)


def ns_to_stamp(ns: int) -> TimeMsg:
    """Integer nanoseconds (>= 0) -> ``builtin_interfaces/Time``."""
    return TimeMsg(sec=int(ns // 1_000_000_000), nanosec=int(ns % 1_000_000_000))


def pose_msg_to_array(pose: Pose) -> np.ndarray:
    """``geometry_msgs/Pose`` -> ``(x, y, z, qx, qy, qz, qw)``."""
    p, q = pose.position, pose.orientation
    return np.array([p.x, p.y, p.z, q.x, q.y, q.z, q.w], dtype=float)


def pose_array_to_msg(pose) -> Pose:
    """``(x, y, z, qx, qy, qz, qw)`` -> ``geometry_msgs/Pose``."""
    x, y, z, qx, qy, qz, qw = (float(v) for v in pose)
    return Pose(position=Point(x=x, y=y, z=z), orientation=Quaternion(x=qx, y=qy, z=qz, w=qw))


def covariance_to_array(values) -> np.ndarray:
    """A message's 36 covariance values -> 6x6 array, or ``ValueError``."""
    covariance = np.asarray(values, dtype=float)
    if covariance.size != 36:
        raise ValueError(f'covariance has {covariance.size} values, expected 36')
    return covariance.reshape(6, 6)


def pose_with_covariance_msg(pose, covariance, frame_id: str, stamp_ns: int
                             ) -> PoseWithCovarianceStamped:
    """``PoseWithCovarianceStamped`` from a pose, a 6x6 covariance, a frame and a stamp (ns)."""
    msg = PoseWithCovarianceStamped()
    msg.header.frame_id, msg.header.stamp = frame_id, ns_to_stamp(stamp_ns)
    msg.pose.pose = pose_array_to_msg(pose)
    msg.pose.covariance = [float(c) for c in np.asarray(covariance, dtype=float).reshape(36)]
    return msg


def odometry_to_arrays(msg: Odometry) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
    """``nav_msgs/Odometry`` -> (stamp ns, pose, pose covariance 6x6, twist).

    The pose is the child frame's in the header frame; the twist ``(vx, vy, vz, wx, wy, wz)``
    is in the child frame (m/s, rad/s), as nav_msgs/Odometry defines it.
    """
    t = msg.twist.twist
    twist = np.array([t.linear.x, t.linear.y, t.linear.z,
                      t.angular.x, t.angular.y, t.angular.z], dtype=float)
    return (stamp_to_ns(msg.header.stamp), pose_msg_to_array(msg.pose.pose),
            covariance_to_array(msg.pose.covariance), twist)


def matrix_to_pose_msg(matrix: np.ndarray) -> Pose:
    """``geometry_msgs/Pose`` of a 4x4 transform."""
    pose = matrix_to_pose(matrix)
    return Pose(position=Point(x=pose[0], y=pose[1], z=pose[2]),
                orientation=Quaternion(x=pose[3], y=pose[4], z=pose[5], w=pose[6]))


def check_pose_with_covariance(msg: PoseWithCovarianceStamped, frame: str
                               ) -> tuple[np.ndarray, np.ndarray]:
    """(T 4x4, covariance 6x6) of a pose message, or ``ValueError`` saying what is wrong.

    Refuses another frame than ``frame``, NaN or infinite values, a quaternion far from unit
    length and a covariance that is not symmetric with a non-negative diagonal.
    """
    if msg.header.frame_id.lstrip('/') != frame:
        raise ValueError(f"frame_id is '{msg.header.frame_id}', expected '{frame}'")
    p, q = msg.pose.pose.position, msg.pose.pose.orientation
    values = np.array([p.x, p.y, p.z, q.x, q.y, q.z, q.w], dtype=float)
    covariance = covariance_to_array(msg.pose.covariance)
    if not (np.isfinite(values).all() and np.isfinite(covariance).all()):
        raise ValueError('pose or covariance contains NaN or infinite values')
    norm = float(np.linalg.norm(values[3:]))
    if not 0.9 < norm < 1.1:
        raise ValueError(f'orientation is not a unit quaternion (norm {norm:.3g})')
    values[3:] /= norm
    if (np.diag(covariance) < 0).any() or not np.allclose(covariance, covariance.T, atol=1e-9):
        raise ValueError('covariance is not symmetric with a non-negative diagonal')
    return pose_to_matrix(values), covariance


# A map frame name may hold this placeholder: one map frame per scene of a multi-scene model.
SCENE_PLACEHOLDER = '{scene}'


def check_map_frame(value) -> str | None:
    """Parameter check of a map frame pattern: non-empty, at most one ``{scene}``."""
    if not value:
        return 'must not be empty'
    rest = value.replace(SCENE_PLACEHOLDER, '', 1)
    if '{' in rest or '}' in rest:
        return f'may hold one {SCENE_PLACEHOLDER} placeholder and no other braces'
    return None


def scene_frame(pattern: str, scene: str) -> str:
    """The map frame of ``scene``: ``pattern`` with ``{scene}`` replaced (e.g. map_{scene})."""
    return pattern.replace(SCENE_PLACEHOLDER, scene)


def frame_scene(pattern: str, frame: str) -> str | None:
    """The scene whose map frame is ``frame`` under ``pattern``, or ``None``.

    A pattern without ``{scene}`` gives '' for ``frame == pattern`` (the only scene).
    """
    frame = frame.lstrip('/')
    if SCENE_PLACEHOLDER not in pattern:
        return '' if frame == pattern else None
    prefix, suffix = pattern.split(SCENE_PLACEHOLDER, 1)
    if len(frame) > len(prefix) + len(suffix) and frame.startswith(prefix) and \
            frame.endswith(suffix):
        return frame[len(prefix):len(frame) - len(suffix)]
    return None
