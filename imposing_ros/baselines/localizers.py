"""Baselines behind the :class:`~imposing_ros.localization.localizer.Localizer` interface.

``localize(image) -> LocalizationResult`` like ImPosing's, so ``evaluate`` and ``benchmark``
treat every method alike; :func:`open_localizer` opens any checkpoint by its ``method``.
Baselines run eagerly in fp32 on the CPU or the given device (no compiled backends).
"""

from __future__ import annotations

import time

import numpy as np
import torch

from imposing_ros.baselines.models import load_baseline, PoseRegressor, RetrievalNet
from imposing_ros.geometry import canonical_quat, weighted_pose_covariance
from imposing_ros.localization.localizer import LocalizationResult, Localizer
from imposing_ros.model.checkpoint import read_checkpoint
from imposing_ros.model.preprocess import preprocess
from imposing_ros.runtime.select import DEFAULT_BACKEND, DEFAULT_INDUCTOR


def open_localizer(path, scene: str | None = None, config=None, device: str = 'cpu',
                   backend: str = DEFAULT_BACKEND, inductor: str = DEFAULT_INDUCTOR,
                   engine_cache: str | None = None, top_k: int = 1):
    """The localizer of checkpoint ``path``: ImPosing's or a baseline's (by its ``method``).

    ``config``, ``backend``, ``inductor`` and ``engine_cache`` apply to ImPosing; ``top_k`` to
    retrieval (poses averaged).
    """
    method = read_checkpoint(path).get('method', 'imposing')
    if method == 'imposing':
        return Localizer.from_checkpoint(path, scene, config, device, backend, inductor,
                                         engine_cache)
    model, _ = load_baseline(path, device)
    model.default_scene(scene)
    if isinstance(model, RetrievalNet):
        return RetrievalLocalizer(model, top_k)
    return RegressionLocalizer(model)


class _BaselineLocalizer:
    """Shared part: preprocessing and timing."""

    backend_name = 'torch (eager fp32)'

    def __init__(self, model):
        self.model = model.eval()
        self.device = next(model.parameters()).device
        self.image_size = tuple(model.config.image_size)
        self.scene = model.scene

    def _encode(self, image: np.ndarray):
        t0 = time.perf_counter()
        images = preprocess(image, self.image_size).to(self.device)
        t1 = time.perf_counter()
        return images, {'preprocess': 1e3 * (t1 - t0)}, t0


class RetrievalLocalizer(_BaselineLocalizer):
    """Nearest database images by descriptor cosine; pose of the best (or mean of ``top_k``).

    The covariance is the score-weighted spread of the 10 best database poses around the
    estimate (0 when they coincide, plus a small floor): what retrieval itself says about its
    ambiguity, not a calibrated figure.
    """

    SPREAD_K = 10

    def __init__(self, model: RetrievalNet, top_k: int = 1):
        super().__init__(model)
        if len(model.db_descriptors) == 0:
            raise ValueError('this retrieval model has no database (train it to the end, or '
                             'use its last.pt)')
        if top_k < 1:
            raise ValueError(f'top_k must be >= 1, got {top_k}')
        self.top_k = top_k
        self.db_descriptors = model.db_descriptors
        self.db_poses = model.db_poses

    @property
    def database_size(self) -> int:
        """Reference images in the database."""
        return len(self.db_descriptors)

    @torch.no_grad()
    def localize(self, image: np.ndarray, prior_pose=None, prior_covariance=None,
                 on_stage=None) -> LocalizationResult:
        """Localize one ``[H, W, 3]`` uint8 RGB image (priors are ignored: global only)."""
        images, timings, t0 = self._encode(image)
        t1 = time.perf_counter()
        code = self.model(images)[0]
        t2 = time.perf_counter()
        scores = self.db_descriptors @ code
        k = min(max(self.top_k, self.SPREAD_K), len(scores))
        top_scores, top_index = scores.topk(k)
        top = self.db_poses[top_index]
        weights = top_scores[:self.top_k].clamp_min(0) + 1e-6
        pose = _mean_pose(top[:self.top_k], weights)
        covariance = weighted_pose_covariance(top, top_scores.clamp_min(0) + 1e-6, pose)
        covariance = covariance + 1e-6 * torch.eye(6)
        t3 = time.perf_counter()
        timings.update(image_encoder=1e3 * (t2 - t1), search=1e3 * (t3 - t2),
                       total=1e3 * (t3 - t0))
        return LocalizationResult(pose.double().numpy(), covariance.double().numpy(),
                                  float(top_scores[0].clamp_min(0)), top.double().numpy(),
                                  top_scores.double().numpy(), 'global', timings, 1)


class RegressionLocalizer(_BaselineLocalizer):
    """Absolute pose regression: one forward pass gives the pose.

    APR has no notion of its own uncertainty: the covariance is NaN (no calibration figure)
    and the score is 1 (no failure by score).
    """

    def __init__(self, model: PoseRegressor):
        super().__init__(model)

    @torch.no_grad()
    def localize(self, image: np.ndarray, prior_pose=None, prior_covariance=None,
                 on_stage=None) -> LocalizationResult:
        """Localize one ``[H, W, 3]`` uint8 RGB image (priors are ignored)."""
        images, timings, t0 = self._encode(image)
        t1 = time.perf_counter()
        pose = self.model.predict(images)[0].double()
        t2 = time.perf_counter()
        timings.update(image_encoder=1e3 * (t2 - t1), search=0.0, total=1e3 * (t2 - t0))
        return LocalizationResult(pose.numpy(), np.full((6, 6), np.nan), 1.0,
                                  pose.numpy()[None], np.ones(1), 'global', timings, 0)


def _mean_pose(poses: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted mean ``[7]`` of ``poses [K, 7]``.

    Positions averaged, quaternions sign-aligned with the best one and normalised (accurate for
    the nearby rotations of close matches).
    """
    w = weights / weights.sum()
    quats = poses[:, 3:]
    quats = torch.where((quats * quats[:1]).sum(-1, keepdim=True) < 0, -quats, quats)
    quat = canonical_quat((w[:, None] * quats).sum(0))
    return torch.cat([(w[:, None] * poses[:, :3]).sum(0), quat])
