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

    ``info``: the demo's BagInfo (its ``truth_at``); ``sent``: image stamp -> send time;
    ``poses``: ``(received, stamp_ns, T_map_base)`` as published.

    Images without ground truth are left out; an image without a published pose has infinite
    errors (a miss).
    """
    published = {}
    for _, stamp, t_map_base in poses:
        published.setdefault(stamp, t_map_base)
    rows = []
    for stamp in sorted(sent):
        truth = info.truth_at(stamp)
        if truth is None:
            continue
        estimate = published.get(stamp)
        if estimate is None:
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
    latencies = [1e3 * (received - sent[stamp]) for received, stamp, _ in poses if stamp in sent]
    rows = frame_errors(info, sent, poses)
    errors_t = [r[2] for r in rows]
    errors_r = [r[3] for r in rows]
    summary = {'bag': str(info.path), 'images_sent': len(sent), 'poses': len(poses),
               'frames_with_truth': len(errors_t)}
    if errors_t:
        entry = metrics.report_entry(errors_t, errors_r)
        del entry['frames']  # frames_with_truth above
        summary.update(entry)
    if latencies:
        lat = np.array(latencies)
        summary['latency_ms'] = {f'p{q}': float(np.percentile(lat, q)) for q in (50, 90, 99)}
    for key in ('frames skipped', 'frames rejected', 'latency median (ms)', 'device', 'backend'):
        if key in diagnostics:
            summary[f'localizer {key}'] = diagnostics[key]
    return summary


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
    if 'latency_ms' in s:
        lines.append('  latency image->pose over DDS: ' + ', '.join(
            f'{k} {v:.0f} ms' for k, v in s['latency_ms'].items()))
    extra = {k: v for k, v in s.items() if k.startswith('localizer ')}
    if extra:
        lines.append('  ' + ', '.join(f'{k}: {v}' for k, v in extra.items()))
    return '\n'.join(lines)
