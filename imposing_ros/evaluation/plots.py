"""Figures of an evaluation (matplotlib, no display needed)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np


def trajectory_figure(estimates: np.ndarray, truth: np.ndarray, errors_m: np.ndarray,
                      out: str | Path, title: str = '', max_error_m: float = 10.0) -> Path:
    """Map view: the true trajectory and each estimate coloured by its error; failures marked.

    ``estimates`` / ``truth [M, 7]`` (NaN rows: failures), ``errors_m [M]``. Written to ``out``
    (PNG or SVG by suffix) through a temporary file.
    """
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    from imposing_ros.utils import atomic_write_bytes

    estimates, truth = np.asarray(estimates, float), np.asarray(truth, float)
    errors = np.asarray(errors_m, float)
    ok = np.isfinite(estimates).all(axis=1)
    fig, ax = plt.subplots(figsize=(6, 7), dpi=100)
    ax.plot(truth[:, 0], truth[:, 1], color='0.75', lw=1.0, zorder=1, label='true trajectory')
    points = ax.scatter(estimates[ok, 0], estimates[ok, 1], c=np.minimum(errors[ok], max_error_m),
                        cmap='viridis_r', s=4, vmin=0, vmax=max_error_m, zorder=2,
                        label='estimates')
    if (~ok).any():
        ax.scatter(truth[~ok, 0], truth[~ok, 1], marker='x', color='red', s=10, zorder=3,
                   label=f'no pose ({int((~ok).sum())})')
    fig.colorbar(points, ax=ax, label=f'position error (m, clipped at {max_error_m:g})')
    ax.set_aspect('equal')
    ax.set_xlabel('x east (m)')
    ax.set_ylabel('y north (m)')
    ax.set_title(title, fontsize=9)
    ax.legend(loc='best', fontsize=8, markerscale=2)
    fig.tight_layout()
    out = Path(out)
    buffer = io.BytesIO()
    fig.savefig(buffer, format=out.suffix.lstrip('.') or 'png')
    plt.close(fig)
    return atomic_write_bytes(out, buffer.getvalue())
