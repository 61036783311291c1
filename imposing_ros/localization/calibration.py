"""Fit the covariance a localizer publishes to its real errors: ``imposing-ros calibrate``.

The search reports the spread of its best candidates as the covariance; how that spread relates
to the real error depends on the model, so one factor per model is fitted on posed frames
(reference images of the scene, not the evaluation set): the factor that puts the true (x, y)
of 95 % of the frames inside the 95 % ellipse. It is stored in the checkpoint
(``covariance_scale``) and applied by every :class:`~imposing_ros.localization.localizer.Localizer`
loaded from it, so the node, ``evaluate`` and the demo publish the same covariance (one factor
for all the scenes of a model). The same command stores a few of the frames for int8
calibration (:mod:`imposing_ros.runtime.int8`), per scene; ``--images-only`` stores those alone,
for a scene with no traversal to spare for the fit (training frames serve for int8).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from imposing_ros.data.cache import resize_image
from imposing_ros.evaluation.metrics import CHI2_2DOF_95
from imposing_ros.localization.localizer import Localizer
from imposing_ros.model.checkpoint import load_model, read_checkpoint, save_checkpoint
from imposing_ros.runtime.int8 import CHECKPOINT_KEY, DEFAULT_CALIBRATION_FRAMES

LOGGER = logging.getLogger('imposing_ros.localization')
DEFAULT_FRAMES = 200


def xy_mahalanobis2(estimate: np.ndarray, truth: np.ndarray, covariance: np.ndarray) -> float:
    """Squared Mahalanobis distance of the true (x, y) under the (x, y) block of ``covariance``."""
    residual = np.asarray(truth, float)[:2] - np.asarray(estimate, float)[:2]
    return float(residual @ np.linalg.solve(np.asarray(covariance, float)[:2, :2], residual))


def fit_scale(distances2: np.ndarray, coverage: float = 0.95) -> float:
    """Factor on the covariance that puts ``coverage`` of the frames inside the 95 % ellipse.

    ``distances2``: squared (x, y) Mahalanobis distances at factor 1. Scaling the covariance by
    ``k`` divides them by ``k``.
    """
    d2 = np.asarray(distances2, float)
    d2 = d2[np.isfinite(d2)]
    if d2.size < 10:
        raise ValueError(f'need at least 10 localized frames to fit a covariance scale, got '
                         f'{d2.size}')
    return float(max(np.quantile(d2, coverage) / CHI2_2DOF_95, 1e-6))


def calibrate(model_path: str | Path, frames, out: str | Path, count: int = DEFAULT_FRAMES,
              scene: str | None = None, backend: str = 'torch',
              images_only: bool = False) -> tuple[Path, float | None, dict]:
    """Fit the covariance scale on ``count`` frames (evenly spaced) and write ``out``.

    With ``images_only`` only the int8 calibration images of ``scene`` are stored and the
    covariance scale is kept: int8 needs the images' value ranges, which training frames give
    as well as unseen ones, while the covariance needs errors on frames the model never saw.
    Returns (path written, fitted scale or None, figures at the fitted scale).
    """
    frames = list(frames)
    if not frames:
        raise ValueError('the calibration data yielded no frames')
    model, data = load_model(model_path)
    scene = model.default_scene(scene)
    scale, figures = None, {}
    if not images_only:
        scale, figures = _fit(model_path, scene, frames, count, backend)
    extra = {k: v for k, v in read_checkpoint(model_path).items()
             if k in ('train_config', 'epoch', 'history', 'covariance_scale', CHECKPOINT_KEY)}
    if scale is not None:
        extra['covariance_scale'] = scale
    # Images for int8 (backend auto builds its programs from them on a new machine): evenly
    # spaced calibration frames at the model's input size, uint8.
    pick = np.linspace(0, len(frames) - 1, min(DEFAULT_CALIBRATION_FRAMES, len(frames)))
    size = tuple(model.config.image_size)
    images = np.stack([resize_image(frames[i].image, size) for i in pick.round().astype(int)])
    extra[CHECKPOINT_KEY] = {**extra.get(CHECKPOINT_KEY, {}), scene: torch.from_numpy(images)}
    half = any(v.dtype == torch.float16 for v in data['state_dict'].values())
    path = save_checkpoint(out, model, data['seed'], half=half, **extra)
    LOGGER.info('%d int8 calibration images of scene %s stored', len(images), scene)
    return path, scale, figures


def _fit(model_path, scene: str, frames: list, count: int, backend: str) -> tuple[float, dict]:
    """(covariance scale, figures) fitted on ``count`` evenly spaced ``frames``."""
    index = np.unique(np.linspace(0, len(frames) - 1, min(count, len(frames))).round().astype(int))
    localizer = Localizer.from_checkpoint(model_path, scene, backend=backend)
    localizer.covariance_scale = 1.0  # fit from the raw spread
    distances, errors = [], []
    for i in tqdm(index, desc='calibrate', unit='frame', dynamic_ncols=True):
        result = localizer.localize(frames[i].image)
        if result.score <= 0:
            continue
        distances.append(xy_mahalanobis2(result.pose, frames[i].pose, result.covariance))
        errors.append(float(np.linalg.norm(result.pose[:2] - frames[i].pose[:2])))
    scale = fit_scale(np.asarray(distances))
    LOGGER.info('covariance scale %.3g fitted on %d frames of scene %s (median error %.2f m)',
                scale, len(distances), scene, float(np.median(errors)))
    return scale, {'frames': len(distances), 'median_error_m': float(np.median(errors)),
                   'covariance_scale': scale}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``imposing-ros calibrate``."""
    parser.add_argument('--model', required=True, help='checkpoint (.pt)')
    parser.add_argument('--data', required=True,
                        help='posed frames of the scene (reference data, not the evaluation set)')
    parser.add_argument('--out', help='checkpoint to write (default: overwrite --model)')
    parser.add_argument('--frames', type=int, default=DEFAULT_FRAMES,
                        help=f'frames used, evenly spaced (default {DEFAULT_FRAMES})')
    parser.add_argument('--scene', help='scene of a multi-scene model')
    parser.add_argument('--images-only', action='store_true',
                        help="store the scene's int8 calibration images only, keep the "
                             'covariance scale (training frames serve for int8)')


def run(args: argparse.Namespace) -> int:
    """Entry of ``imposing-ros calibrate``."""
    from imposing_ros.data.datasets import open_dataset

    if args.frames < 10:
        raise ValueError(f'--frames must be >= 10, got {args.frames}')
    path, scale, figures = calibrate(args.model, open_dataset(args.data), args.out or args.model,
                                     args.frames, args.scene, images_only=args.images_only)
    if scale is None:
        print(f'int8 calibration images stored, covariance scale kept -> {path}')
    else:
        print(f"covariance scale {scale:.4g} on {figures['frames']} frames -> {path}")
    return 0
