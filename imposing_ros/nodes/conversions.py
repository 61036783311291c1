"""Message <-> numpy conversions shared by the nodes (poses, covariances, stamps)."""

from __future__ import annotations

from builtin_interfaces.msg import Time as TimeMsg
from geometry_msgs.msg import Point, Pose, PoseWithCovarianceStamped, Quaternion
import numpy as np

from imposing_ros.geometry import matrix_to_pose, pose_to_matrix


def stamp_to_ns(stamp) -> int:
    """``builtin_interfaces/Time`` -> integer nanoseconds."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def ns_to_stamp(ns: int) -> TimeMsg:
    """Integer nanoseconds (>= 0) -> ``builtin_interfaces/Time``."""
    return TimeMsg(sec=int(ns // 1_000_000_000), nanosec=int(ns % 1_000_000_000))


def pose_msg_to_array(pose: Pose) -> np.ndarray:
    """``geometry_msgs/Pose`` -> ``(x, y, z, qx, qy, qz, qw)``."""
    p, q = pose.position, pose.orientation
    return np.array([p.x, p.y, p.z, q.x, q.y, q.z, q.w], dtype=float)


def pose_msg_to_matrix(pose: Pose) -> np.ndarray:
    """4x4 transform of a ``geometry_msgs/Pose`` (quaternion normalised by the caller)."""
    p, q = pose.position, pose.orientation
    return pose_to_matrix([p.x, p.y, p.z, q.x, q.y, q.z, q.w])


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
    covariance = np.asarray(msg.pose.covariance, dtype=float)
    if covariance.shape != (36,):
        raise ValueError(f'covariance has {covariance.size} values, expected 36')
    covariance = covariance.reshape(6, 6)
    if not (np.isfinite(values).all() and np.isfinite(covariance).all()):
        raise ValueError('pose or covariance contains NaN or infinite values')
    norm = float(np.linalg.norm(values[3:]))
    if not 0.9 < norm < 1.1:
        raise ValueError(f'orientation is not a unit quaternion (norm {norm:.3g})')
    values[3:] /= norm
    if (np.diag(covariance) < 0).any() or not np.allclose(covariance, covariance.T, atol=1e-9):
        raise ValueError('covariance is not symmetric with a non-negative diagonal')
    return pose_to_matrix(values), covariance
