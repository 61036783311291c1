"""ROS messages -> Foxglove's typed messages, for the live view (:mod:`.live_view`).

Conventions where data crosses (quaternion order, frames, time, covariance, markers) are in
the docstring of :mod:`imposing_ros.nodes.live_view`. foxglove-sdk is imported only when a
conversion runs (:func:`require_foxglove`).
"""

from __future__ import annotations

from collections import deque
import math

from geometry_msgs.msg import PoseWithCovarianceStamped
import numpy as np
from sensor_msgs.msg import CompressedImage
from visualization_msgs.msg import Marker, MarkerArray

FOXGLOVE_REQUIREMENT = 'foxglove-sdk==0.30.3'  # the version checked here (setup.py)
# Squared Mahalanobis radius of the 95 % ellipse of a 2-D Gaussian, chi2.ppf(0.95, 2): the
# value of imposing_ros.evaluation.metrics.CHI2_2DOF_95 (not imported: that module loads torch).
CHI2_2DOF_95 = -2.0 * math.log(0.05)
ELLIPSE_THICKNESS_M = 0.05
# RViz's proportions of a pose-form arrow marker: shaft 0.77 and head 0.23 of scale.x, shaft
# diameter scale.y, head diameter 2 x scale.z (Foxglove draws ROS arrows the same way).
ARROW_SHAFT, ARROW_HEAD, ARROW_HEAD_DIAMETER = 0.77, 0.23, 2.0


def require_foxglove():
    """The ``foxglove`` package (with its typed messages), or RuntimeError saying how to get it."""
    try:
        import foxglove
        import foxglove.channels  # noqa: F401
        import foxglove.messages  # noqa: F401
    except ImportError as exc:
        raise RuntimeError(f'the Foxglove live view needs foxglove-sdk ({exc}): pip install '
                           f'foxglove-sdk (this package pins {FOXGLOVE_REQUIREMENT})') from exc
    return foxglove


# --- conversions: ROS message -> foxglove.messages (conventions in the module docstring) ----

def to_timestamp(stamp):
    """``builtin_interfaces/Time`` -> ``foxglove.messages.Timestamp`` (before 1970: 0)."""
    m = require_foxglove().messages
    if stamp.sec < 0:
        return m.Timestamp(sec=0, nsec=0)
    return m.Timestamp(sec=int(stamp.sec), nsec=int(stamp.nanosec))


def to_pose(pose):
    """``geometry_msgs/Pose`` -> ``foxglove.messages.Pose``; quaternion copied by name (xyzw)."""
    m = require_foxglove().messages
    p, q = pose.position, pose.orientation
    return m.Pose(position=m.Vector3(x=p.x, y=p.y, z=p.z),
                  orientation=m.Quaternion(x=q.x, y=q.y, z=q.z, w=q.w))


def to_color(color):
    """``std_msgs/ColorRGBA`` -> ``foxglove.messages.Color`` (both RGBA in [0, 1])."""
    m = require_foxglove().messages
    return m.Color(r=color.r, g=color.g, b=color.b, a=color.a)


def ellipse_xy95(covariance) -> tuple[float, float, float]:
    """(yaw of the major axis, major and minor diameters) of the 95 % ellipse of (x, y).

    ``covariance``: 36 values, row-major, ROS order (x, y, z, rot x, rot y, rot z), metres.
    ValueError when they are not 36 finite numbers.
    """
    cov = np.asarray(covariance, dtype=float)
    if cov.size != 36 or not np.isfinite(cov).all():
        raise ValueError('a covariance needs 36 finite values')
    cov = cov.reshape(6, 6)[:2, :2]
    cov = (cov + cov.T) / 2
    values, vectors = np.linalg.eigh(cov)  # ascending
    values = np.clip(values, 0.0, None)
    major = vectors[:, 1]
    yaw = math.atan2(major[1], major[0])
    major_d, minor_d = (2.0 * math.sqrt(CHI2_2DOF_95 * v) for v in values[::-1])
    return yaw, major_d, minor_d


def covariance_entity(msg: PoseWithCovarianceStamped, entity_id: str = 'xy_95'):
    """``foxglove.messages.SceneEntity``: the (x, y) 95 % ellipse, a flat disc at the pose."""
    m = require_foxglove().messages
    yaw, major_d, minor_d = ellipse_xy95(msg.pose.covariance)
    p = msg.pose.pose.position
    pose = m.Pose(position=m.Vector3(x=p.x, y=p.y, z=p.z),
                  orientation=m.Quaternion(x=0.0, y=0.0, z=math.sin(yaw / 2),
                                           w=math.cos(yaw / 2)))
    sphere = m.SpherePrimitive(pose=pose, size=m.Vector3(x=major_d, y=minor_d,
                                                         z=ELLIPSE_THICKNESS_M),
                               color=m.Color(r=0.1, g=0.4, b=1.0, a=0.3))
    return m.SceneEntity(timestamp=to_timestamp(msg.header.stamp),
                         frame_id=msg.header.frame_id, id=entity_id, spheres=[sphere])


def _primitive(marker: Marker):
    """(SceneEntity field, primitive) of a marker, or None when its type is not converted."""
    m = require_foxglove().messages
    pose, scale, color = to_pose(marker.pose), marker.scale, to_color(marker.color)
    if marker.type == Marker.ARROW and not marker.points:
        return 'arrows', m.ArrowPrimitive(
            pose=pose, shaft_length=ARROW_SHAFT * scale.x, shaft_diameter=scale.y,
            head_length=ARROW_HEAD * scale.x, head_diameter=ARROW_HEAD_DIAMETER * scale.z,
            color=color)
    size = m.Vector3(x=scale.x, y=scale.y, z=scale.z)
    if marker.type == Marker.SPHERE:
        return 'spheres', m.SpherePrimitive(pose=pose, size=size, color=color)
    if marker.type == Marker.CUBE:
        return 'cubes', m.CubePrimitive(pose=pose, size=size, color=color)
    if marker.type == Marker.TEXT_VIEW_FACING:
        return 'texts', m.TextPrimitive(pose=pose, billboard=True, font_size=scale.z,
                                        scale_invariant=False, color=color, text=marker.text)
    return None


def scene_update(markers: MarkerArray) -> tuple[object, set[int]]:
    """(``foxglove.messages.SceneUpdate``, marker types skipped) of a MarkerArray.

    One entity per (ns, id), so an entity replaces the marker of the same ns and id as in RViz.
    """
    m = require_foxglove().messages
    deletions, entities, skipped = [], [], set()
    for marker in markers.markers:
        stamp = to_timestamp(marker.header.stamp)
        entity_id = f'{marker.ns}/{marker.id}'
        if marker.action == Marker.DELETEALL:
            deletions.append(m.SceneEntityDeletion(timestamp=stamp,
                                                   type=m.SceneEntityDeletionType.All))
            continue
        if marker.action == Marker.DELETE:
            deletions.append(m.SceneEntityDeletion(
                timestamp=stamp, type=m.SceneEntityDeletionType.MatchingId, id=entity_id))
            continue
        converted = _primitive(marker)
        if converted is None:
            skipped.add(marker.type)
            continue
        field, primitive = converted
        lifetime = marker.lifetime
        entities.append(m.SceneEntity(
            timestamp=stamp, frame_id=marker.header.frame_id, id=entity_id,
            lifetime=m.Duration(sec=max(0, lifetime.sec), nsec=lifetime.nanosec),
            frame_locked=bool(marker.frame_locked), **{field: [primitive]}))
    return m.SceneUpdate(deletions=deletions, entities=entities), skipped


def image_format(msg: CompressedImage) -> str:
    """Foxglove's ``format`` (jpeg, png, webp, avif) of a ROS CompressedImage.

    ROS writes e.g. ``jpeg`` or ``rgb8; jpeg compressed bgr8``; the data's magic bytes decide
    when the text names none of them.
    """
    text = msg.format.lower()
    for name, found in (('jpeg', 'jpeg'), ('jpg', 'jpeg'), ('png', 'png'), ('webp', 'webp'),
                        ('avif', 'avif')):
        if name in text:
            return found
    head = bytes(msg.data[:4])
    if head.startswith(b'\xff\xd8'):
        return 'jpeg'
    if head.startswith(b'\x89PNG'):
        return 'png'
    return text


class Trajectory:
    """The last ``length`` poses, a new one kept once ``step`` metres from the previous."""

    def __init__(self, length: int, step: float):
        self.poses = deque(maxlen=length)
        self.step = step
        self._last = None

    def add(self, position, pose) -> bool:
        """Keep ``pose`` (a foxglove Pose) at ``position`` (x, y, z) if it moved; True if kept."""
        xyz = np.asarray(position, dtype=float)
        if self._last is not None and np.linalg.norm(xyz - self._last) < self.step:
            return False
        self._last = xyz
        self.poses.append(pose)
        return True


# --- the node ---------------------------------------------------------------------------------
