"""Localization metrics: errors, medians and recalls, a failed frame counting as infinite error."""

from __future__ import annotations

import math

import numpy as np
import roma
import torch

from imposing_ros.geometry import canonical_quat, rotation_distance, turning

# Squared Mahalanobis radius of the 95 % ellipse of a 2-D Gaussian: chi2.ppf(0.95, 2).
CHI2_2DOF_95 = -2.0 * math.log(0.05)
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


def covariance_calibration(estimate: np.ndarray, truth: np.ndarray,
                           covariance: np.ndarray) -> dict:
    """How well published covariances ``[M, 6, 6]`` describe the true errors.

    Covariances are in the ROS layout of :func:`imposing_ros.geometry.weighted_pose_covariance`
    (x, y, z in metres, then the rotation vector of ``q_true * q_estimate^-1`` in radians about
    the map axes). Frames whose estimate is not finite are skipped (they are failures already).

    Returns ``xy_in_95_ellipse``: share of frames whose true (x, y) lies inside the 95 % ellipse
    of the (x, y) block (0.95 when calibrated); ``nees``: mean normalised estimation error
    squared over the 6 degrees of freedom (6 when calibrated); ``nees_position`` over x, y, z
    (3 when calibrated); ``calibrated_frames``: frames counted.
    """
    estimate, truth = np.asarray(estimate, float), np.asarray(truth, float)
    covariance = np.asarray(covariance, float)
    if covariance.shape != (len(estimate), 6, 6):
        raise ValueError(f'covariance must be [M, 6, 6] for {len(estimate)} estimates, got '
                         f'{covariance.shape}')
    ok = np.isfinite(estimate).all(axis=1) & np.isfinite(covariance).all(axis=(1, 2))
    if not ok.any():
        return {'calibrated_frames': 0, 'xy_in_95_ellipse': math.nan, 'nees': math.nan,
                'nees_position': math.nan}
    est, gt, cov = (torch.from_numpy(a[ok]) for a in (estimate, truth, covariance))
    dq = roma.quat_product(gt[:, 3:] / gt[:, 3:].norm(dim=-1, keepdim=True),
                           roma.quat_conjugation(est[:, 3:] / est[:, 3:].norm(dim=-1,
                                                                               keepdim=True)))
    residual = torch.cat([gt[:, :3] - est[:, :3], roma.unitquat_to_rotvec(canonical_quat(dq))],
                         dim=-1)

    def mahalanobis2(r, c):
        return (r * torch.linalg.solve(c, r[..., None])[..., 0]).sum(dim=-1)

    xy = mahalanobis2(residual[:, :2], cov[:, :2, :2])
    return {'calibrated_frames': int(ok.sum()),
            'xy_in_95_ellipse': float((xy <= CHI2_2DOF_95).double().mean()),
            'nees': float(mahalanobis2(residual, cov).mean()),
            'nees_position': float(mahalanobis2(residual[:, :3], cov[:, :3, :3]).mean())}


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


def turn_recalls(errors_t, errors_r, truth, stamps_ns) -> dict:
    """Recall at 5 m / 10 deg in turns (street corners) and elsewhere: where a model fails.

    Turns are :func:`imposing_ros.geometry.turning` of the true poses ``[M, 7]`` (time order).
    Returns ``turning_frames``, ``recall_5m_10deg_turning`` and ``recall_5m_10deg_straight``
    (NaN where a part is empty); a failed frame (infinite error) is a miss.
    """
    meters, degrees = RECALL_THRESHOLDS[-1]
    turns = turning(truth, stamps_ns)
    within = (np.asarray(errors_t) <= meters) & (np.asarray(errors_r) <= degrees)
    out = {'turning_frames': int(turns.sum())}
    for name, mask in (('turning', turns), ('straight', ~turns)):
        out[f'recall_{meters:g}m_{degrees:g}deg_{name}'] = \
            float(within[mask].mean()) if mask.any() else math.nan
    return out


def report_entry(errors_t, errors_r) -> dict:
    """The accuracy keys shared by the demo's and the benchmark's summaries.

    ``median_error_m``, ``median_error_deg``, ``mean_error_m`` (infinite with a miss),
    ``mean_error_m_localized``, ``mean_error_deg_localized``, ``missed`` and ``recall``
    ``{'5.0m/10.0deg': share, ...}``, every frame counted (a miss is an infinite error).
    """
    stats = summarize(errors_t, errors_r)
    return {
        'frames': stats['frames'], 'missed': stats['failed'],
        'median_error_m': stats['median_m'], 'median_error_deg': stats['median_deg'],
        'mean_error_m': stats['mean_m'],
        'mean_error_m_localized': stats['mean_m_localized'],
        'mean_error_deg_localized': stats['mean_deg_localized'],
        'recall': {f'{float(m)}m/{float(d)}deg': stats[f'recall_{m:g}m_{d:g}deg']
                   for m, d in RECALL_THRESHOLDS},
    }


def format_summary(summary: dict) -> str:
    """One readable block for terminals and notes."""
    low = f", {summary['low_score']} of them for a low score" if summary.get('low_score') else ''
    lines = [f"frames {summary['frames']} (failed {summary['failed']}{low})",
             f"median {summary['median_m']:.2f} m, {summary['median_deg']:.2f} deg; "
             f"mean {summary['mean_m']:.2f} m, {summary['mean_deg']:.2f} deg"]
    recalls = [f'{k[7:]}: {100 * v:.1f}%' for k, v in summary.items()
               if k.startswith('recall_') and not k.endswith(('_turning', '_straight'))]
    lines.append('recall ' + ', '.join(recalls))
    if 'turning_frames' in summary:
        lines.append(f"recall 5m_10deg in turns ({summary['turning_frames']} frames): "
                     f"{100 * summary['recall_5m_10deg_turning']:.1f}%, elsewhere "
                     f"{100 * summary['recall_5m_10deg_straight']:.1f}%")
    if 'scene_votes' in summary:
        lines.append(f"right scene on {100 * summary['scene_accuracy']:.1f}% of the frames that "
                     f"vote (votes {summary['scene_votes']}; none: no score at --min-score)")
    if 'xy_in_95_ellipse' in summary:
        lines.append(f"covariance: {100 * summary['xy_in_95_ellipse']:.1f}% of true (x, y) in "
                     f"the 95% ellipse, NEES {summary['nees']:.2f} (6 DoF, 6 if calibrated), "
                     f"position {summary['nees_position']:.2f} (3)")
    return '\n'.join(lines)
