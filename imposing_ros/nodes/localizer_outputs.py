"""What the localizer node publishes: its publishers, the pose, markers, scene and diagnostics."""

from __future__ import annotations

from collections import deque
import time

from builtin_interfaces.msg import Time as TimeMsg
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import PoseWithCovarianceStamped, Vector3
import numpy as np
from rclpy.qos import QoSDurabilityPolicy, QoSProfile, QoSReliabilityPolicy
from std_msgs.msg import ColorRGBA, Float32, String
from visualization_msgs.msg import Marker, MarkerArray

from imposing_ros.data.images import BACKEND as IMAGE_BACKEND
from imposing_ros.geometry import pose_to_matrix
from imposing_ros.nodes.conversions import matrix_to_pose_msg

# Period of the sliding windows of the rate and latency statistics.
STATS_WINDOW_S = 5.0
# Processing times since configure are counted in bins of this width (ms) up to the last
# bin's edge; a longer frame counts in the last bin. Constant memory however long the run.
PROCESSING_BIN_MS = 0.5
PROCESSING_MAX_MS = 2000.0


def score_color(fraction: float) -> ColorRGBA:
    """Red (worst shown) -> yellow -> green (best) for ``fraction`` in [0, 1]."""
    f = min(max(float(fraction), 0.0), 1.0)
    return ColorRGBA(r=min(1.0, 2.0 * (1.0 - f)), g=min(1.0, 2.0 * f), b=0.0, a=0.9)


class Stats:
    """Counters and sliding windows for diagnostics (guarded by the node's lock)."""

    def __init__(self):
        self.processed = self.published = 0
        self.failed = self.low_score = 0
        self.rejected: dict[str, int] = {}
        self.done = deque()  # (monotonic time, processing ms, stamp age ms)
        self.processing_counts = np.zeros(int(PROCESSING_MAX_MS / PROCESSING_BIN_MS), np.int64)
        self.last_score = float('nan')
        self.last_mode = ''
        self.last_problem = ''
        self.last_outcome = ''  # published, low score, rejected or failed

    def record(self, result, published: bool, processing_ms: float, age_ms: float,
               min_score: float):
        """Count a localized frame (published, or under ``min_score``)."""
        self.processed += 1
        self.published += int(published)
        self.low_score += int(not published)
        self.last_score, self.last_mode = result.score, result.mode
        self.done.append((time.monotonic(), processing_ms, age_ms))
        bin_ = min(int(processing_ms / PROCESSING_BIN_MS), len(self.processing_counts) - 1)
        self.processing_counts[max(bin_, 0)] += 1
        self.last_outcome = 'published' if published else 'low score'
        if not published:
            self.last_problem = f'score {result.score:.3f} < min_score {min_score}'

    def fail(self, problem: str):
        """Count a frame that raised."""
        self.failed += 1
        self.last_outcome, self.last_problem = 'failed', problem

    def reject(self, reason: str):
        """Count a refused frame and remember why."""
        self.rejected[reason] = self.rejected.get(reason, 0) + 1
        self.last_problem, self.last_outcome = reason, 'rejected'

    def processing_median_ms(self) -> float:
        """Median processing time of every frame localized since configure (bin centre), or nan."""
        total = int(self.processing_counts.sum())
        if not total:
            return float('nan')
        k = int(np.searchsorted(np.cumsum(self.processing_counts), (total + 1) / 2))
        return (k + 0.5) * PROCESSING_BIN_MS

    def window(self, now: float):
        """(time, processing ms, stamp age ms) of the frames done in the last STATS_WINDOW_S."""
        while self.done and now - self.done[0][0] > STATS_WINDOW_S:
            self.done.popleft()
        return list(self.done)

    def snapshot(self, now: float) -> tuple[dict, list, str]:
        """(counter values, the recent window, the last outcome), for diagnostics."""
        window = self.window(now)
        values = {
            'rate (Hz)': len(window) / STATS_WINDOW_S,
            'frames processed': self.processed,
            'poses published': self.published,
            'frames under min_score': self.low_score,
            'frames failed': self.failed,
            'frames rejected': sum(self.rejected.values()),
            **{f'rejected: {k}': v for k, v in sorted(self.rejected.items())},
            'processing median since configure (ms)': self.processing_median_ms(),
            'last score': self.last_score,
            'mode': self.last_mode,
            'last problem': self.last_problem,
        }
        return values, window, self.last_outcome


def candidate_markers(result, extrinsic, t_map_base, stamp: TimeMsg, count: int,
                      map_frame: str) -> MarkerArray:
    """Top candidates (arrows coloured by score), the estimate and a label, base_link in map."""
    markers = MarkerArray()
    markers.markers.append(Marker(action=Marker.DELETEALL))
    camera_base = np.linalg.inv(extrinsic)
    count = min(count, len(result.candidates))
    scores = result.candidate_scores[:count]
    low, high = (float(scores.min()), float(scores.max())) if count else (0.0, 1.0)
    for i in range(count):
        marker = Marker(ns='candidates', id=i, type=Marker.ARROW, action=Marker.ADD)
        marker.header.stamp, marker.header.frame_id = stamp, map_frame
        matrix = pose_to_matrix(result.candidates[i]) @ camera_base
        marker.pose = matrix_to_pose_msg(matrix)
        marker.scale = Vector3(x=2.0, y=0.25, z=0.25)
        marker.color = score_color((scores[i] - low) / (high - low) if high > low else 1.0)
        markers.markers.append(marker)
    estimate = Marker(ns='estimate', id=0, type=Marker.ARROW, action=Marker.ADD)
    estimate.header.stamp, estimate.header.frame_id = stamp, map_frame
    estimate.pose = matrix_to_pose_msg(t_map_base)
    estimate.scale = Vector3(x=4.0, y=0.6, z=0.6)
    estimate.color = ColorRGBA(r=0.1, g=0.4, b=1.0, a=1.0)
    label = Marker(ns='estimate', id=1, type=Marker.TEXT_VIEW_FACING, action=Marker.ADD)
    label.header = estimate.header
    label.pose = matrix_to_pose_msg(t_map_base)
    label.pose.position.z += 3.0
    label.scale.z = 1.5
    label.color = ColorRGBA(r=1.0, g=1.0, b=1.0, a=1.0)
    label.text = f'{result.mode} {result.score:.2f}'
    markers.markers.extend([estimate, label])
    return markers


def localization_status(node_name: str, values: dict, window: list, outcome: str, active: bool,
                        localizer, scene_scores: dict, device: str, s) -> DiagnosticStatus:
    """The node's DiagnosticStatus.

    From a :meth:`Stats.snapshot`, the localizer (``None`` once cleaned up), the last frame's
    scene scores and the node's settings ``s``.
    """
    extra = {'backend': localizer.backend_name if localizer else s.backend, 'device': device,
             'backend choice': (localizer.backend.choice if localizer else None) or 'as set',
             'image conversion': IMAGE_BACKEND or 'none', 'model': s.model_path,
             'scene': (localizer.scene if localizer else None) or 'none yet',
             'scene scores': ', '.join(f'{k} {v:.3f}' for k, v in scene_scores.items())}
    if localizer is not None and len(localizer.scenes) > 1:
        extra['scene backends'] = ', '.join(f'{k} {v}'
                                            for k, v in localizer.backend_names.items())
    values = dict(values)
    if window:
        processing = np.array([w[1] for w in window])
        age = np.array([w[2] for w in window])
        values.update({'latency median (ms)': float(np.median(processing)),
                       'latency p95 (ms)': float(np.percentile(processing, 95)),
                       'stamp age at publish median (ms)': float(np.median(age))})
    values.update(extra)
    status = DiagnosticStatus(name=f'{node_name}: localization',
                              hardware_id=f"{extra['backend']}:{extra['device']}")
    if not active:
        status.level, status.message = DiagnosticStatus.WARN, 'inactive'
    elif not window:
        status.level, status.message = DiagnosticStatus.WARN, 'no frames processed lately'
    elif outcome == 'failed':
        status.level, status.message = DiagnosticStatus.ERROR, values['last problem']
    elif outcome != 'published':
        status.level, status.message = DiagnosticStatus.WARN, values['last problem']
    else:
        status.level, status.message = DiagnosticStatus.OK, 'localizing'
    status.values = [KeyValue(key=k, value=f'{v:.4g}' if isinstance(v, float) else str(v))
                     for k, v in values.items()]
    return status


def pose_message(t_map_base: np.ndarray, covariance: np.ndarray, stamp: TimeMsg,
                 map_frame: str) -> PoseWithCovarianceStamped:
    """``~/pose``: base_link in the map at the image stamp, 6x6 covariance row-major."""
    out = PoseWithCovarianceStamped()
    out.header.stamp, out.header.frame_id = stamp, map_frame
    out.pose.pose = matrix_to_pose_msg(t_map_base)
    out.pose.covariance = np.asarray(covariance, float).reshape(-1).tolist()
    return out


class Outputs:
    """The localizer's publishers, created at configure and destroyed at cleanup.

    ``~/pose``, ``~/score`` (reliable, depth 10), ``~/candidates`` (reliable, depth 1: only the
    newest matters) and ``~/scene`` (latched: a late subscriber learns the scene in use) are
    lifecycle publishers; ``/diagnostics`` flows in every configured state (an inactive node
    reports that it is).
    """

    def __init__(self, node):
        self._node = node
        reliable = QoSProfile(depth=10, reliability=QoSReliabilityPolicy.RELIABLE)
        lifecycle = node.create_lifecycle_publisher
        self.pose = lifecycle(PoseWithCovarianceStamped, '~/pose', reliable)
        self.score = lifecycle(Float32, '~/score', reliable)
        self.markers = lifecycle(MarkerArray, '~/candidates',
                                 QoSProfile(depth=1, reliability=QoSReliabilityPolicy.RELIABLE))
        self.scene = lifecycle(String, '~/scene', QoSProfile(
            depth=1, reliability=QoSReliabilityPolicy.RELIABLE,
            durability=QoSDurabilityPolicy.TRANSIENT_LOCAL))
        self.diagnostics = node.create_publisher(DiagnosticArray, '/diagnostics', reliable)

    def publish_result(self, result, extrinsic, t_map_base, covariance, stamp: TimeMsg,
                       map_frame: str, markers_count: int, publish_pose: bool) -> None:
        """A localized frame: score, candidate markers, and the pose when ``publish_pose``.

        The markers are built only while something subscribes to them: fifty arrows were
        3.7 ms of Python a frame on the inference thread (docs/design.md, 30 Hz replay).
        """
        self.score.publish(Float32(data=float(result.score)))
        if markers_count and self.markers.get_subscription_count():
            self.markers.publish(candidate_markers(result, extrinsic, t_map_base, stamp,
                                                   markers_count, map_frame))
        if publish_pose:
            self.pose.publish(pose_message(t_map_base, covariance, stamp, map_frame))

    def publish_diagnostics(self, status: DiagnosticStatus) -> None:
        """One status on /diagnostics, stamped now."""
        array = DiagnosticArray(status=[status])
        array.header.stamp = self._node.get_clock().now().to_msg()
        self.diagnostics.publish(array)

    def destroy(self) -> None:
        """Destroy every publisher (cleanup, shutdown)."""
        for publisher in (self.pose, self.score, self.markers, self.scene):
            self._node.destroy_lifecycle_publisher(publisher)
        self._node.destroy_publisher(self.diagnostics)
