"""Localizer: one image in, one pose with covariance out. No ROS here; nodes adapt it.

Global mode runs the paper's search from the map's initial candidates, whose codes are
computed once at load (they do not depend on the image). Tracking mode seeds the level-0
candidates from a prior pose and covariance (e.g. the motion filter's prediction) and runs
fewer levels.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
import time
from typing import NamedTuple

import numpy as np
import torch

from imposing_ros.geometry import check_poses, perturb_poses
from imposing_ros.localization.search import (
    draw_noise,
    hierarchical_search,
    SearchConfig,
    SearchResult,
)
from imposing_ros.model.checkpoint import load_model
from imposing_ros.model.imposing import ImPosing


def preprocess(image: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """``[H, W, 3]`` uint8 RGB -> ``[1, 3, h, w]`` float in [0, 1] at ``size = (h, w)``."""
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f'image must be an [H, W, 3] RGB array, got '
                         f'{getattr(image, "shape", type(image).__name__)}')
    if image.dtype != np.uint8:
        raise ValueError(f'image must be uint8, got {image.dtype}')
    if min(image.shape[:2]) < 8:
        raise ValueError(f'image is too small: {image.shape[1]}x{image.shape[0]} pixels')
    tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float() / 255
    if tuple(tensor.shape[-2:]) != tuple(size):
        tensor = torch.nn.functional.interpolate(tensor, size=size, mode='bilinear',
                                                 antialias=True, align_corners=False)
    return tensor


@torch.no_grad()
def search_batch(model: ImPosing, images: torch.Tensor, scene: str | None,
                 search: SearchConfig, seed: int = 0) -> SearchResult:
    """Global search for a batch of preprocessed images (training validation, evaluation)."""
    scene = model.default_scene(scene)
    device = images.device
    initial = model.maps[scene].initial_poses.to(device)
    codes0 = model.encode_poses(initial, scene)
    generator = torch.Generator(device=device).manual_seed(seed)
    noise = draw_noise(search, images.shape[0], generator, device)
    return hierarchical_search(model.encode_images(images, scene),
                               lambda p: model.encode_poses(p, scene), initial, search, noise,
                               initial_codes=codes0)


@dataclass(frozen=True)
class LocalizerConfig:
    """Run-time settings of :class:`Localizer` (the node exposes each as a parameter)."""

    search: SearchConfig = field(default_factory=SearchConfig)
    # Levels run in tracking mode (a prior seeds the candidates); paper K = 6 in global mode.
    tracking_levels: int = 3
    # Lower bound of the prior's standard deviation used to seed tracking candidates
    # (x, y, z m; roll, pitch, yaw deg): a very confident prior must still be searched around.
    tracking_min_sigma: tuple[float, ...] = (1.0, 1.0, 0.1, 0.5, 0.5, 2.0)
    # Seed of the candidate noise: the same image gives the same pose.
    seed: int = 0

    def __post_init__(self):
        if self.tracking_levels < 1:
            raise ValueError('tracking_levels must be >= 1')
        if len(self.tracking_min_sigma) != 6:
            raise ValueError('tracking_min_sigma needs 6 values')


class LocalizationResult(NamedTuple):
    """One frame's result, numpy float64.

    ``pose (7,)`` T_map_camera (camera body frame); ``covariance (6, 6)`` ROS layout;
    ``score`` best score in [0, 1]; ``candidates (M, 7)`` / ``candidate_scores (M,)`` the
    averaged top candidates, best first; ``mode`` 'global' or 'tracking'; ``timings_ms`` per stage.
    """

    pose: np.ndarray
    covariance: np.ndarray
    score: float
    candidates: np.ndarray
    candidate_scores: np.ndarray
    mode: str
    timings_ms: dict


class Localizer:
    """Holds a model on a device with its image-independent level-0 codes."""

    def __init__(self, model: ImPosing, scene: str | None = None,
                 config: LocalizerConfig | None = None, device: str | torch.device = 'cpu'):
        self.config = config or LocalizerConfig()
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.scene = model.default_scene(scene)
        self.image_size = tuple(model.config.image_size)
        self.initial_poses = model.maps[self.scene].initial_poses.to(self.device)
        n = self.config.search.num_candidates
        if len(self.initial_poses) != n:
            # The map stores its own level-0 set; a different N draws evenly from it.
            index = torch.linspace(0, len(self.initial_poses) - 1, n).round().long()
            self.initial_poses = self.initial_poses[index.to(self.device)]
        with torch.no_grad():
            self.initial_codes = model.encode_poses(self.initial_poses, self.scene)

    @classmethod
    def from_checkpoint(cls, path, scene: str | None = None,
                        config: LocalizerConfig | None = None,
                        device: str | torch.device = 'cpu') -> Localizer:
        """Load a checkpoint (raises CheckpointError naming the file on any problem)."""
        model, _ = load_model(path, 'cpu')
        return cls(model, scene, config, device)

    def _sync(self):
        if self.device.type == 'cuda':
            torch.cuda.synchronize(self.device)

    @torch.no_grad()
    def localize(self, image: np.ndarray, prior_pose: np.ndarray | None = None,
                 prior_covariance: np.ndarray | None = None) -> LocalizationResult:
        """Localize one ``[H, W, 3]`` uint8 RGB image, globally or around a prior.

        ``prior_pose (7,)`` T_map_camera and ``prior_covariance (6, 6)`` (ROS layout) select
        tracking mode.
        """
        timings = {}
        t0 = time.perf_counter()
        images = preprocess(image, self.image_size).to(self.device)
        self._sync()
        t1 = time.perf_counter()
        image_codes = self.model.encode_images(images, self.scene)
        self._sync()
        t2 = time.perf_counter()
        timings['preprocess'] = 1e3 * (t1 - t0)
        timings['image_encoder'] = 1e3 * (t2 - t1)
        cfg = self.config
        generator = torch.Generator(device=self.device).manual_seed(cfg.seed)
        if prior_pose is None:
            mode, search = 'global', cfg.search
            initial, initial_codes = self.initial_poses, self.initial_codes
        else:
            mode = 'tracking'
            search = replace(cfg.search, levels=cfg.tracking_levels)
            initial = self._prior_candidates(prior_pose, prior_covariance, search, generator)
            initial_codes = None
        noise = draw_noise(search, 1, generator, self.device)
        result = hierarchical_search(image_codes, lambda p: self.model.encode_poses(p, self.scene),
                                     initial, search, noise, initial_codes=initial_codes)
        self._sync()
        timings['search'] = 1e3 * (time.perf_counter() - t2)
        timings['total'] = 1e3 * (time.perf_counter() - t0)
        return LocalizationResult(
            result.pose[0].double().cpu().numpy(), result.covariance[0].double().cpu().numpy(),
            float(result.score[0]), result.candidates[0].double().cpu().numpy(),
            result.candidate_scores[0].double().cpu().numpy(), mode, timings)

    def _prior_candidates(self, pose, covariance, search: SearchConfig,
                          generator: torch.Generator) -> torch.Tensor:
        """Level-0 candidates drawn around a prior: ``[1, N, 7]``."""
        pose_t = torch.as_tensor(np.asarray(pose, dtype=np.float64), dtype=torch.float32)
        check_poses(pose_t, 'prior pose')
        covariance = np.asarray(covariance if covariance is not None else np.zeros((6, 6)))
        if covariance.shape != (6, 6) or not np.isfinite(covariance).all():
            raise ValueError('prior covariance must be a finite 6x6 matrix')
        std = np.sqrt(np.clip(np.diag(covariance), 0.0, None))
        floor = np.array(self.config.tracking_min_sigma, dtype=float)
        floor[3:] = np.deg2rad(floor[3:])
        sigma = torch.as_tensor(np.maximum(std, floor), dtype=torch.float32, device=self.device)
        n = search.num_candidates
        noise = torch.randn((1, n, 6), generator=generator, device=self.device)
        noise[:, 0] = 0.0  # keep the prior itself among the candidates
        center = pose_t.to(self.device).expand(1, n, 7)
        return perturb_poses(center, noise, sigma)
