"""Localization metrics: errors, medians and recalls, a failed frame counting as infinite error."""

from __future__ import annotations

import math

import numpy as np
import torch

from imposing_ros.geometry import rotation_distance

# (metres, degrees) thresholds of the recall table (paper section 4 and hloc's convention).
RECALL_THRESHOLDS = ((0.5, 2.0), (1.0, 5.0), (5.0, 10.0))


def pose_errors(estimate: torch.Tensor, truth: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Translation (m) and rotation (deg) errors of poses ``[M, 7]``; NaN rows -> inf."""
    if estimate.shape != truth.shape or estimate.shape[-1] != 7:
        raise ValueError(f'estimate and truth must both be [M, 7], got {tuple(estimate.shape)} '
                         f'and {tuple(truth.shape)}')
    estimate, truth = estimate.double(), truth.double()
    failed = ~torch.isfinite(estimate).all(dim=-1)
    safe = torch.where(failed[:, None], truth, estimate)
    et = (safe[:, :3] - truth[:, :3]).norm(dim=-1)
    er = torch.rad2deg(rotation_distance(safe[:, 3:] / safe[:, 3:].norm(dim=-1, keepdim=True),
                                         truth[:, 3:] / truth[:, 3:].norm(dim=-1, keepdim=True)))
    return et.masked_fill(failed, math.inf), er.masked_fill(failed, math.inf)


def summarize(errors_t, errors_r) -> dict:
    """Median, mean and recalls of error arrays (failed frames are ``inf``)."""
    et = np.asarray(errors_t, dtype=float)
    er = np.asarray(errors_r, dtype=float)
    if et.size == 0:
        raise ValueError('no frames to summarize')
    finite = np.isfinite(et) & np.isfinite(er)
    out = {
        'frames': int(et.size),
        'failed': int((~finite).sum()),
        'median_m': float(np.median(et)),
        'median_deg': float(np.median(er)),
        # the mean of a set with a failure is infinite; report it over localized frames too
        'mean_m': float(np.mean(et)),
        'mean_deg': float(np.mean(er)),
        'mean_m_localized': float(np.mean(et[finite])) if finite.any() else math.inf,
        'mean_deg_localized': float(np.mean(er[finite])) if finite.any() else math.inf,
    }
    for m, d in RECALL_THRESHOLDS:
        out[f'recall_{m:g}m_{d:g}deg'] = float(np.mean((et <= m) & (er <= d)))
    return out


def format_summary(summary: dict) -> str:
    """One readable block for terminals and notes."""
    lines = [f"frames {summary['frames']} (failed {summary['failed']})",
             f"median {summary['median_m']:.2f} m, {summary['median_deg']:.2f} deg; "
             f"mean {summary['mean_m']:.2f} m, {summary['mean_deg']:.2f} deg"]
    recalls = [f'{k[7:]}: {100 * v:.1f}%' for k, v in summary.items() if k.startswith('recall_')]
    lines.append('recall ' + ', '.join(recalls))
    return '\n'.join(lines)
