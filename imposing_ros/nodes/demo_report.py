"""The demo's report: every image played is a frame, compared with the bag's ground truth.

A frame without a published pose is a miss (infinite error) in the median and in every recall,
as in ``imposing-ros evaluate`` (one metrics module: :mod:`imposing_ros.evaluation.metrics`).
No ROS here: the demo (:mod:`imposing_ros.nodes.demo`) hands over what it collected.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from imposing_ros.evaluation import metrics
from imposing_ros.geometry import matrix_to_pose
from imposing_ros.utils import atomic_write_text


def frame_errors(info, sent: dict, poses: list) -> list[tuple]:
    """``(stamp_ns, T_map_base or None, error_m, error_deg)`` per image played, stamp order.

    ``info``: the demo's Playlist (``truth_at``, ``expected_frame``); ``sent``: image stamp ->
    send time; ``poses``: ``(received, stamp_ns, T_map_base, frame_id)`` as published.

    Images without ground truth are left out; an image without a published pose, or with a
    pose in another map than its bag's (a multi-scene model in the wrong scene), has infinite
    errors (a miss).
    """
    published = {}
    for _, stamp, t_map_base, frame_id in poses:
        published.setdefault(stamp, (t_map_base, frame_id))
    rows = []
    for stamp in sorted(sent):
        truth = info.truth_at(stamp)
        if truth is None:
            continue
        estimate, frame_id = published.get(stamp, (None, None))
        expected = info.expected_frame(stamp)
        if estimate is None or (expected is not None and frame_id != expected):
            rows.append((stamp, None, math.inf, math.inf))
            continue
        cos = (np.trace(truth[:3, :3].T @ estimate[:3, :3]) - 1) / 2
        rows.append((stamp, estimate, float(np.linalg.norm(estimate[:3, 3] - truth[:3, 3])),
                     math.degrees(math.acos(max(-1.0, min(1.0, cos))))))
    return rows


def write_frames_csv(path: str | Path, rows: list[tuple]) -> Path:
    """Per-frame CSV of :func:`frame_errors`: base_link in map (empty when missed), errors."""
    lines = ['stamp_ns,x,y,z,qx,qy,qz,qw,error_m,error_deg']
    for stamp, estimate, error_m, error_deg in rows:
        pose = ',' * 6 if estimate is None else ','.join(
            f'{v:.6f}' for v in matrix_to_pose(estimate))
        lines.append(f'{stamp},{pose},{error_m:.6f},{error_deg:.6f}')
    return atomic_write_text(path, '\n'.join(lines) + '\n')


def summarize(info, sent: dict, poses: list, diagnostics: dict) -> dict:
    """Errors of base_link against ground truth and end-to-end latencies (ms).

    Every image played is one frame: an image without a published pose is a miss (infinite
    error) in the median and in every recall, as in ``imposing-ros evaluate``
    (:mod:`imposing_ros.evaluation.metrics`). Images without ground truth are left out.
    """
    latencies = [1e3 * (p[0] - sent[p[1]]) for p in poses if p[1] in sent]
    rows = frame_errors(info, sent, poses)
    summary = {'bag': str(info.path), 'images_sent': len(sent), 'poses': len(poses),
               'frames_with_truth': len(rows), **_accuracy(rows)}
    if len(info.bags) > 1:
        summary['bags'] = []
        for i, bag in enumerate(info.bags):
            part = [r for r in rows if info.bag_index(r[0]) == i]
            entry = {'bag': str(bag.path), 'scene': bag.scene, 'frames_with_truth': len(part),
                     **_accuracy(part)}
            if i:  # images of this bag before the first pose in its map: the scene switch
                entry['frames_to_switch'] = next(
                    (k for k, r in enumerate(part) if r[1] is not None), len(part))
            summary['bags'].append(entry)
    summary.update(_rates(sent, poses))
    if latencies:
        lat = np.array(latencies)
        summary['latency_ms'] = {f'p{q}': float(np.percentile(lat, q)) for q in (50, 90, 99)}
    for key in DIAGNOSTICS_KEPT:
        if key in diagnostics:
            summary[f'localizer {key}'] = diagnostics[key]
    processed = _number(diagnostics.get(PROCESSED_KEY))
    if processed is not None and sent and 'images_per_s' in summary:
        # The node's throughput apart from its refusals: frames it localized (a pose published
        # or refused for a low score) at the pace the images came.
        summary['frames_processed_per_s'] = summary['images_per_s'] * processed / len(sent)
    processing = _number(diagnostics.get(PROCESSING_KEY))
    if latencies and processing and processing > 0:
        # End-to-end latency (decode, DDS, queueing included) over the node's own time a frame.
        summary['latency_p50_over_processing'] = summary['latency_ms']['p50'] / processing
    return summary


# The node's run-long processing median (nodes/localizer_outputs.Stats); the other keys kept
# from the last /diagnostics of the run ('latency median (ms)' there is its last 5 s only).
PROCESSING_KEY = 'processing median since configure (ms)'
PROCESSED_KEY = 'frames processed'
DIAGNOSTICS_KEPT = (PROCESSED_KEY, 'frames skipped', 'frames rejected', PROCESSING_KEY,
                    'device', 'backend')


def _number(value) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _rates(sent: dict, poses: list) -> dict:
    """Images played and poses received per second of wall time (first to last of each)."""
    out = {}
    times = sorted(sent.values())
    if len(times) > 1 and times[-1] > times[0]:
        out['images_per_s'] = (len(times) - 1) / (times[-1] - times[0])
    received = sorted(p[0] for p in poses)
    if len(received) > 1 and received[-1] > received[0]:
        out['poses_per_s'] = (len(received) - 1) / (received[-1] - received[0])
    return out


def _accuracy(rows: list[tuple]) -> dict:
    """The accuracy keys of :func:`imposing_ros.evaluation.metrics.report_entry` for rows."""
    if not rows:
        return {}
    entry = metrics.report_entry([r[2] for r in rows], [r[3] for r in rows])
    del entry['frames']  # frames_with_truth
    return entry


def format_summary(s: dict) -> str:
    """Human-readable summary."""
    lines = [f"demo on {s['bag']}",
             f"  frames: {s['images_sent']} images played, {s['poses']} poses published "
             f"({s['frames_with_truth']} frames with ground truth)"]
    if 'median_error_m' in s:
        lines.append(f"  error over all frames ({s['missed']} without a pose count as misses): "
                     f"median {s['median_error_m']:.2f} m / {s['median_error_deg']:.2f} deg; "
                     f"mean over localized frames {s['mean_error_m_localized']:.2f} m / "
                     f"{s['mean_error_deg_localized']:.2f} deg")
        lines.append('  recall (all frames): ' + ', '.join(
            f'{k} {100 * v:.1f}%' for k, v in s['recall'].items()))
    if 'images_per_s' in s:
        processed = (f"{s['frames_processed_per_s']:.1f} frames/s processed, "
                     if 'frames_processed_per_s' in s else '')
        lines.append(f"  rate: {s['images_per_s']:.1f} images/s played, {processed}"
                     f"{s.get('poses_per_s', 0.0):.1f} poses/s received")
    if 'latency_ms' in s:
        lines.append('  latency image->pose over DDS: ' + ', '.join(
            f'{k} {v:.0f} ms' for k, v in s['latency_ms'].items()))
    if 'latency_p50_over_processing' in s:
        lines.append(f"  latency p50 / localizer processing median: "
                     f"{s['latency_p50_over_processing']:.2f}")
    for bag in s.get('bags', []):
        if 'median_error_m' in bag:
            switch = f", first pose in its map after {bag['frames_to_switch']} frames" \
                if 'frames_to_switch' in bag else ''
            lines.append(f"  {bag['bag']} (scene {bag['scene']}): {bag['frames_with_truth']} "
                         f"frames, median {bag['median_error_m']:.2f} m, "
                         f"{100 * bag['recall']['5.0m/10.0deg']:.1f}% within 5 m / 10 deg"
                         f"{switch}")
    extra = {k: v for k, v in s.items() if k.startswith('localizer ')}
    if extra:
        lines.append('  ' + ', '.join(f'{k}: {v}' for k, v in extra.items()))
    return '\n'.join(lines)
