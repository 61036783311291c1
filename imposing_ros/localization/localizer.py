"""Localizer: one image in, one pose with covariance out. No ROS here; nodes adapt it.

Global mode runs the paper's search from the map's initial candidates, whose codes are
computed once at load (they do not depend on the image). Tracking mode seeds the level-0
candidates from a prior pose and covariance (e.g. the motion filter's prediction) and runs
fewer levels. The networks run on an inference backend (:mod:`imposing_ros.runtime.backends`:
``auto`` = TensorRT on CUDA; on a CPU int8 where its programs are cached, else fp32 or bf16,
whichever is faster here by measurement).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
import logging
import math
import time
from typing import Callable, NamedTuple

import numpy as np
import torch

from imposing_ros.geometry import check_poses
from imposing_ros.localization.search import (
    draw_noise,
    hierarchical_search,
    level0_scores,
    SearchConfig,
    SearchResult,
    unit_codes,
)
from imposing_ros.model.checkpoint import load_model
from imposing_ros.model.imposing import ImPosing
from imposing_ros.model.preprocess import preprocess
from imposing_ros.runtime.backends import Backend
from imposing_ros.runtime.int8 import stored_calibration_images
from imposing_ros.runtime.select import DEFAULT_BACKEND, DEFAULT_INDUCTOR, select_backend

LOGGER = logging.getLogger('imposing_ros.localization')


@torch.no_grad()
def search_batch(model: ImPosing, images: torch.Tensor, scene: str | None,
                 search: SearchConfig, seed: int = 0) -> SearchResult:
    """Global search for a batch of preprocessed images (training validation, evaluation)."""
    scene = model.default_scene(scene)
    device = images.device
    initial = model.maps[scene].initial_poses.to(device)
    generator = torch.Generator(device=device).manual_seed(seed)
    noise = draw_noise(search, images.shape[0], generator, device)
    return hierarchical_search(model.encode_images(images, scene),
                               lambda p: model.encode_poses(p, scene), initial, search, noise)


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
    # On CUDA, capture the global search in one CUDA graph (imposing_ros.runtime.graphs).
    cuda_graph: bool = True
    # Centre-crop camera images to the model's aspect ratio instead of stretching them (for a
    # camera other than the training one; training stretches, so its own camera needs none).
    image_crop: bool = False

    def __post_init__(self):
        if self.tracking_levels < 1:
            raise ValueError('tracking_levels must be >= 1')
        if len(self.tracking_min_sigma) != 6:
            raise ValueError('tracking_min_sigma needs 6 values')


class LocalizationResult(NamedTuple):
    """One frame's result, numpy float64.

    ``pose (7,)`` T_map_camera (camera body frame); ``covariance (6, 6)`` ROS layout;
    ``score`` best score in [0, 1]; ``candidates (M, 7)`` / ``candidate_scores (M,)`` the
    averaged top candidates, best first; ``mode`` 'global' or 'tracking'; ``timings_ms`` per stage;
    ``levels`` levels run (fewer than configured after an early stop).
    """

    pose: np.ndarray
    covariance: np.ndarray
    score: float
    candidates: np.ndarray
    candidate_scores: np.ndarray
    mode: str
    timings_ms: dict
    levels: int = 0


class Localizer:
    """Holds a model's inference backend on a device, with its level-0 candidates and codes.

    ``initial_poses [M, 7]`` replaces the map's level-0 set (e.g. every reference pose: their
    codes are computed here once, so a larger set costs one matrix product per frame).
    ``backend`` is a name of :data:`~imposing_ros.runtime.backends.BACKENDS` or a built backend;
    ``inductor``, ``engine_cache`` and ``calibration_images`` (int8, see
    :func:`~imposing_ros.runtime.select.select_backend`) are passed to it.
    """

    def __init__(self, model: ImPosing, scene: str | None = None,
                 config: LocalizerConfig | None = None, device: str | torch.device = 'cpu',
                 backend: str | Backend = DEFAULT_BACKEND,
                 initial_poses: torch.Tensor | None = None, inductor: str = DEFAULT_INDUCTOR,
                 engine_cache: str | None = None, covariance_scale: float = 1.0,
                 calibration_images=None):
        if not (math.isfinite(covariance_scale) and covariance_scale > 0):
            raise ValueError(f'covariance_scale must be finite and > 0, got {covariance_scale}')
        # Factor on the candidates' spread, fitted per model (imposing-ros calibrate).
        self.covariance_scale = float(covariance_scale)
        self.config = config or LocalizerConfig()
        self.device = torch.device(device)
        self.scene = model.default_scene(scene)
        self.image_size = tuple(model.config.image_size)
        n = self.config.search.num_candidates
        if isinstance(backend, Backend):
            self.backend = backend
        else:
            self.backend = select_backend(backend, model.eval(), self.scene, self.device, n,
                                          cache_dir=engine_cache, inductor=inductor,
                                          levels=self.config.search.levels,
                                          calibration_images=calibration_images)
        if initial_poses is None:
            initial_poses = model.maps[self.scene].initial_poses
            if len(initial_poses) != n:
                # The map stores its own level-0 set; a different N draws evenly from it.
                index = torch.linspace(0, len(initial_poses) - 1, n).round().long()
                initial_poses = initial_poses[index]
        check_poses(initial_poses, 'initial_poses')
        self.initial_poses = initial_poses.float().to(self.device)
        with torch.no_grad():  # unit codes only: level 0 is one product with them per frame
            self.initial_unit = unit_codes(self.backend.encode_poses(self.initial_poses))
        # The noise of a search depends on the seed only (the same image and prior give the
        # same pose): drawn once here, not per frame. Tracking: the unit offsets of the level-0
        # candidates around the prior (the first one 0: the prior itself is a candidate), then
        # the search's noise, from one generator.
        self._global_noise = draw_noise(self.config.search, 1, self._generator(), self.device)
        # No translation refinement in tracking: its deviation is a multiple of the last
        # level's, which after 3 levels is still 4 m (the demo: 1.58 m with it, 1.45 m without).
        self._tracking_search = replace(self.config.search, levels=self.config.tracking_levels,
                                        refine_share=0.0)
        generator = self._generator()
        self._prior_noise = torch.randn((1, n, 6), generator=generator, device=self.device)
        self._prior_noise[:, 0] = 0.0
        self._tracking_noise = draw_noise(self._tracking_search, 1, generator, self.device)
        self._graph = None
        self._aspect_warned = False
        if (self.config.cuda_graph and self.device.type == 'cuda' and self.backend.graph_safe
                and not self.config.search.early_stop):
            from imposing_ros.runtime.graphs import try_capture

            self._graph = try_capture(self.backend, self.initial_poses, self.initial_unit,
                                      self.config.search, self._global_noise, model.config.dim)

    def _generator(self) -> torch.Generator:
        return torch.Generator(device=self.device).manual_seed(self.config.seed)

    @classmethod
    def from_checkpoint(cls, path, scene: str | None = None,
                        config: LocalizerConfig | None = None,
                        device: str | torch.device = 'cpu',
                        backend: str = DEFAULT_BACKEND, inductor: str = DEFAULT_INDUCTOR,
                        engine_cache: str | None = None) -> Localizer:
        """Load a checkpoint (raises CheckpointError naming the file on any problem).

        ``backend``, ``inductor`` and ``engine_cache`` (TensorRT programs) choose how it runs
        (:func:`imposing_ros.runtime.backends.select_backend`).
        """
        model, data = load_model(path, 'cpu')
        scene = model.default_scene(scene)
        return cls(model, scene, config, device, backend, inductor=inductor,
                   engine_cache=engine_cache,
                   covariance_scale=float(data.get('covariance_scale', 1.0)),
                   calibration_images=stored_calibration_images(data, scene))

    @property
    def backend_name(self) -> str:
        """The concrete backend (what ``auto`` resolved to)."""
        return self.backend.name

    def _check_aspect(self, image: np.ndarray) -> None:
        """Warn once when images are stretched to the model's aspect ratio."""
        shape = getattr(image, 'shape', ())
        if self._aspect_warned or self.config.image_crop or len(shape) < 2 or \
                min(shape[:2]) == 0:
            return
        height, width = self.image_size
        ratio = (shape[1] / shape[0]) / (width / height)
        if not 0.9 < ratio < 1.1:
            self._aspect_warned = True
            LOGGER.warning('images of %dx%d pixels (aspect %.2f) are stretched to the model input '
                           '%dx%d (aspect %.2f): fine for a model trained on this camera '
                           '(training stretches them the same way); for one trained on '
                           'another, crop them (image_crop)', shape[1], shape[0],
                           shape[1] / shape[0], width, height, width / height)

    def _sync(self):
        if self.device.type == 'cuda':
            torch.cuda.synchronize(self.device)

    @torch.no_grad()
    def localize(self, image: np.ndarray, prior_pose: np.ndarray | None = None,
                 prior_covariance: np.ndarray | None = None,
                 on_stage: Callable[[str], None] | None = None) -> LocalizationResult:
        """Localize one ``[H, W, 3]`` uint8 RGB image, globally or around a prior.

        ``prior_pose (7,)`` T_map_camera and ``prior_covariance (6, 6)`` (ROS layout) select
        tracking mode. ``on_stage`` is called with a stage name after each stage (benchmarks).
        """
        stage = on_stage or (lambda name: None)
        timings = {}
        t0 = time.perf_counter()
        self._check_aspect(image)
        images = preprocess(image, self.image_size, self.config.image_crop).to(self.device)
        self._sync()
        stage('preprocess')
        t1 = time.perf_counter()
        image_codes = self.backend.encode_images(images)
        self._sync()
        stage('image_encoder')
        t2 = time.perf_counter()
        timings['preprocess'] = 1e3 * (t1 - t0)
        timings['image_encoder'] = 1e3 * (t2 - t1)
        cfg = self.config
        initial_scores = None
        if prior_pose is None:
            mode, search, noise = 'global', cfg.search, self._global_noise
            initial = self.initial_poses
            if self._graph is None:
                initial_scores = level0_scores(image_codes, self.initial_unit)
        else:
            mode, search, noise = 'tracking', self._tracking_search, self._tracking_noise
            initial = self.prior_candidates(prior_pose, prior_covariance)
            stage('prior_candidates')
        backend = self.backend
        if mode == 'global' and self._graph is not None:
            result = self._graph(image_codes)
            stage('search (CUDA graph)')
        else:
            result = hierarchical_search(image_codes, backend.encode_poses, initial, search,
                                         noise, steps=backend.steps,
                                         on_stage=on_stage, initial_scores=initial_scores)
        self._sync()
        timings['search'] = 1e3 * (time.perf_counter() - t2)
        timings['total'] = 1e3 * (time.perf_counter() - t0)
        covariance = result.covariance[0].double().cpu().numpy() * self.covariance_scale
        return LocalizationResult(
            result.pose[0].double().cpu().numpy(), covariance,
            float(result.score[0]), result.candidates[0].double().cpu().numpy(),
            result.candidate_scores[0].double().cpu().numpy(), mode, timings, result.levels)

    @torch.no_grad()
    def search_levels(self, image: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """The global search's candidates and scores of every level, level 0 first.

        ``[(poses [N, 7], scores [N]), ...]``: what the paper's Figure 2 draws.
        """
        images = preprocess(image, self.image_size, self.config.image_crop).to(self.device)
        levels = []
        hierarchical_search(
            self.backend.encode_images(images), self.backend.encode_poses, self.initial_poses,
            self.config.search, self._global_noise, steps=self.backend.steps,
            on_level=lambda k, poses, scores: levels.append(
                (poses[0].double().cpu().numpy(), scores[0].double().cpu().numpy())))
        return levels

    def prior_candidates(self, pose, covariance) -> torch.Tensor:
        """Level-0 candidates ``[1, N, 7]`` drawn around a prior (the first one is the prior).

        ``pose (7,)`` T_map_camera, ``covariance (6, 6)`` ROS layout (None: the floor
        ``tracking_min_sigma`` alone).
        """
        pose_t = torch.as_tensor(np.asarray(pose, dtype=np.float64), dtype=torch.float32)
        check_poses(pose_t, 'prior pose')
        covariance = np.asarray(covariance if covariance is not None else np.zeros((6, 6)))
        if covariance.shape != (6, 6) or not np.isfinite(covariance).all():
            raise ValueError('prior covariance must be a finite 6x6 matrix')
        std = np.sqrt(np.clip(np.diag(covariance), 0.0, None))
        sigma = torch.as_tensor(np.maximum(std, self._tracking_floor()), dtype=torch.float32,
                                device=self.device)
        center = pose_t.to(self.device).expand(1, self._prior_noise.shape[1], 7)
        return self.backend.steps.perturb(center, self._prior_noise, sigma)

    @torch.no_grad()
    def warm_up(self) -> None:
        """One global and one tracking search on a blank image.

        What compiles on first use (inductor's programs, each variant of the search's compiled
        steps: with and without the refinement, expanded or per-image level-0 candidates)
        compiles here, not on a node's first frames, which would be skipped meanwhile.
        """
        height, width = self.image_size
        image = np.zeros((height, width, 3), np.uint8)
        result = self.localize(image)
        self.localize(image, result.pose, np.diag(np.square(self._tracking_floor())))

    def _tracking_floor(self) -> np.ndarray:
        """``tracking_min_sigma`` in metres and radians ``(6,)``."""
        floor = np.array(self.config.tracking_min_sigma, dtype=float)
        floor[3:] = np.deg2rad(floor[3:])
        return floor
