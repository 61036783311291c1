"""Figures of evaluations and benchmarks (matplotlib, no display needed).

Every figure is written through a temporary file (PNG or SVG by the suffix of ``out``).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch

from imposing_ros.evaluation.metrics import pose_errors


def _pyplot():
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    return plt


def _save(fig, out: str | Path, tight: bool = True) -> Path:
    from imposing_ros.utils import atomic_write_bytes

    out = Path(out)
    buffer = io.BytesIO()
    if tight:  # (a colorbar shared by several axes does not go with tight_layout)
        fig.tight_layout()
    fig.savefig(buffer, format=out.suffix.lstrip('.') or 'png')
    _pyplot().close(fig)
    return atomic_write_bytes(out, buffer.getvalue())


def _errors_m(evaluation) -> np.ndarray:
    errors, _ = pose_errors(torch.from_numpy(evaluation.estimates),
                            torch.from_numpy(evaluation.truth))
    return errors.numpy()


def _draw_trajectory(ax, estimates, truth, errors, max_error_m: float, title: str):
    estimates, truth = np.asarray(estimates, float), np.asarray(truth, float)
    errors = np.asarray(errors, float)
    ok = np.isfinite(estimates).all(axis=1)
    ax.plot(truth[:, 0], truth[:, 1], color='0.75', lw=1.0, zorder=1, label='true trajectory')
    points = ax.scatter(estimates[ok, 0], estimates[ok, 1], c=np.minimum(errors[ok], max_error_m),
                        cmap='viridis_r', s=4, vmin=0, vmax=max_error_m, zorder=2,
                        label='estimates')
    if (~ok).any():
        ax.scatter(truth[~ok, 0], truth[~ok, 1], marker='x', color='red', s=10, zorder=3,
                   label=f'no pose ({int((~ok).sum())})')
    # Gross errors put estimates far off the route: keep the view on the route.
    pad = 0.1 * max(np.ptp(truth[:, 0]), np.ptp(truth[:, 1]), 50.0)
    ax.set_xlim(truth[:, 0].min() - pad, truth[:, 0].max() + pad)
    ax.set_ylim(truth[:, 1].min() - pad, truth[:, 1].max() + pad)
    ax.set_aspect('equal')
    ax.set_xlabel('x east (m)')
    ax.set_ylabel('y north (m)')
    ax.set_title(title, fontsize=9)
    ax.legend(loc='best', fontsize=7, markerscale=2)
    return points


def trajectory_figure(estimates: np.ndarray, truth: np.ndarray, errors_m: np.ndarray,
                      out: str | Path, title: str = '', max_error_m: float = 10.0) -> Path:
    """Map view: the true trajectory and each estimate coloured by its error; failures marked.

    ``estimates`` / ``truth [M, 7]`` (NaN rows: failures), ``errors_m [M]``.
    """
    fig, ax = _pyplot().subplots(figsize=(6, 7), dpi=100)
    points = _draw_trajectory(ax, estimates, truth, errors_m, max_error_m, title)
    fig.colorbar(points, ax=ax, label=f'position error (m, clipped at {max_error_m:g})')
    return _save(fig, out)


def map_figure(evaluations: dict, out: str | Path, max_error_m: float = 10.0) -> Path:
    """One map per method: estimates over the true trajectory, coloured by error."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(evaluations), figsize=(4.5 * len(evaluations), 5.5),
                             dpi=100, squeeze=False)
    points = None
    for ax, (name, evaluation) in zip(axes[0], evaluations.items()):
        errors = _errors_m(evaluation)
        points = _draw_trajectory(ax, evaluation.estimates, evaluation.truth, errors,
                                  max_error_m, f'{name}: median {np.median(errors):.2f} m')
    fig.colorbar(points, ax=list(axes[0]), label=f'position error (m, clipped at '
                                                  f'{max_error_m:g})', shrink=0.8)
    return _save(fig, out, tight=False)


def cdf_figure(evaluations: dict, out: str | Path) -> Path:
    """Share of frames within each position error; a miss never counts as within."""
    fig, ax = _pyplot().subplots(figsize=(6, 4), dpi=100)
    grid = np.logspace(-1, 3, 400)
    for name, evaluation in evaluations.items():
        errors = _errors_m(evaluation)
        ax.plot(grid, [(errors <= g).mean() for g in grid], label=name)
    for threshold in (1.0, 5.0):
        ax.axvline(threshold, color='0.8', lw=0.8, zorder=0)
    ax.set_xscale('log')
    ax.set_ylim(0, 1)
    ax.set_xlabel('position error (m)')
    ax.set_ylabel('share of frames within')
    ax.grid(alpha=0.3, which='both')
    ax.legend(fontsize=8)
    return _save(fig, out)


def latency_figure(evaluations: dict, out: str | Path) -> Path:
    """Wall time of every frame per method, with its median."""
    fig, ax = _pyplot().subplots(figsize=(7, 3.5), dpi=100)
    for name, evaluation in evaluations.items():
        ms = evaluation.frame_ms
        line, = ax.plot(ms, lw=0.8, label=f'{name} (median {np.median(ms):.1f} ms)')
        ax.axhline(np.median(ms), color=line.get_color(), lw=0.8, ls='--')
    ax.set_yscale('log')
    ax.set_xlabel('frame')
    ax.set_ylabel('time per frame (ms)')
    ax.grid(alpha=0.3, which='both')
    ax.legend(fontsize=8)
    return _save(fig, out)


def scaling_figure(rows: list[dict], out: str | Path) -> Path:
    """Frame time and model bytes against the number of reference images, per method."""
    fig, (left, right) = _pyplot().subplots(1, 2, figsize=(9, 3.5), dpi=100)
    for name in dict.fromkeys(r['method'] for r in rows):
        mine = [r for r in rows if r['method'] == name]
        sizes = [r['reference_images'] for r in mine]
        left.plot(sizes, [r['frame_ms_median'] for r in mine], marker='o', label=name)
        right.plot(sizes, [r['model_bytes'] / 1e6 for r in mine], marker='o', label=name)
    for ax, label in ((left, 'time per frame (ms)'), (right, 'model bytes, fp32 (MB)')):
        ax.set_xscale('log')
        ax.set_xlabel('reference images')
        ax.set_ylabel(label)
        ax.grid(alpha=0.3, which='both')
        ax.legend(fontsize=8)
    return _save(fig, out)


def levels_figure(searches: list, truths: list, route: np.ndarray, out: str | Path,
                  window_m: float = 60.0) -> Path:
    """ImPosing's candidates of every level for a few frames (the paper's Figure 2).

    ``searches``: per frame, :meth:`Localizer.search_levels` output; ``truths``: the true poses;
    ``route [M, 3]``: true positions drawn under level 0. Level 0 shows the whole map, later
    levels a ``window_m`` square around the true position; colour: score.
    """
    plt = _pyplot()
    levels = max(len(s) for s in searches)
    fig, axes = plt.subplots(len(searches), levels, figsize=(2.4 * levels, 2.5 * len(searches)),
                             dpi=100, squeeze=False)
    for row, (search, truth) in enumerate(zip(searches, truths)):
        for level, ax in enumerate(axes[row]):
            ax.set_xticks([])
            ax.set_yticks([])
            if level >= len(search):
                ax.axis('off')
                continue
            poses, scores = search[level]
            order = np.argsort(scores)
            if level == 0:
                ax.plot(route[:, 0], route[:, 1], color='0.8', lw=0.5)
            else:
                ax.set_xlim(truth[0] - window_m / 2, truth[0] + window_m / 2)
                ax.set_ylim(truth[1] - window_m / 2, truth[1] + window_m / 2)
            ax.scatter(poses[order, 0], poses[order, 1], c=scores[order], cmap='magma', s=2,
                       vmin=0, vmax=1)
            ax.scatter([truth[0]], [truth[1]], marker='*', color='cyan', s=60,
                       edgecolors='black', linewidths=0.5)
            ax.set_aspect('equal')
            if row == 0:
                ax.set_title(f'level {level}' + (' (map)' if level == 0 else
                                                 f' ({window_m:g} m)'), fontsize=8)
    return _save(fig, out)
