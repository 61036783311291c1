"""Hierarchical pose-candidate search (paper section 3.1, steps 2 and 5-7).

All tensor code is batched over images and candidates; the loop runs over levels only and never
reads a value back to the host, so one CUDA graph can capture it. Random numbers are drawn up
front (:func:`draw_noise`) from a seeded generator, or passed in (TensorRT turns an in-graph
``randn`` into a constant).
"""

from __future__ import annotations

from dataclasses import dataclass
import math
from typing import Callable, NamedTuple

import torch

from imposing_ros.geometry import (
    canonical_quat,
    perturb_poses,
    weighted_pose_covariance,
    weighted_quat_average,
    weighted_quat_average_power,
)
from imposing_ros.model.encoders import similarity

SCHEDULES = ('halve', 'inverse', 'constant')


@dataclass(frozen=True)
class SearchConfig:
    """Hyperparameters of the search; defaults are the paper's (section 4)."""

    # N: candidates scored at every level.
    num_candidates: int = 4096
    # K: levels, level 0 (initial candidates) included; K pose-encoder passes per frame.
    levels: int = 6
    # B: top-scored candidates kept as components of the Gaussian mixture (eq. 2).
    top_k: int = 100
    # Candidates of the last level averaged into the estimate (weights = scores).
    num_average: int = 256
    # v: per-axis standard deviation of the proposer (the paper calls it a variance):
    # x, y, z in metres (map axes, z up), roll, pitch, yaw in degrees (body frame).
    # The paper lists [8 m, 0.2 m, 8 m, 1, 5, 1 deg] with y as altitude; these are ROS axes.
    sigma: tuple[float, ...] = (8.0, 8.0, 0.2, 1.0, 1.0, 5.0)
    # How v shrinks for level k >= 1: 'halve' = v / 2^(k-1) (the paper's text, default: its
    # finest step, v/16 = 0.5 m at K = 6, is what reaches sub-metre accuracy), 'inverse' = v / k
    # (eq. 2 as printed), 'constant' = v at every level (no hierarchy; for ablations).
    schedule: str = 'halve'
    # Rotation averaging: 'eigh' (Markley, exact) or 'power' (no eigensolver, graph friendly).
    averaging: str = 'eigh'
    # Early stop: after a level, stop refining when the score-weighted mean of the top_k
    # candidates moved less than converge_m metres and converge_deg degrees since the previous
    # level. 0 = off (the paper: always K levels). On costs one host read per level, so it
    # cannot be captured in a CUDA graph.
    converge_m: float = 0.0
    converge_deg: float = 0.0
    # Translation refinement of the last level: this share of its candidates is drawn around
    # the best candidate of the level before, moved in translation only, with the last level's
    # translation sigma times refine_sigma_factor (the rest follow eq. 2). The estimate takes
    # its translation from the best of all the level's candidates, its rotation and covariance
    # from the eq. 2 ones (the refined share one rotation). Why: with eq. 3 one degree weighs as
    # much as tens of metres, so candidates that differ in rotation are ranked by rotation;
    # sharing one rotation, they are ranked by translation. With the eq. 3 oracle in a 2 km map
    # (test/test_search.py) 0.75 takes the median error from 1.12 m to 0.35 m; the trained demo
    # model gains little (docs/method.md). 0: the paper's search.
    refine_share: float = 0.75
    refine_sigma_factor: float = 4.0

    def __post_init__(self):
        if self.num_candidates < 1 or self.levels < 1:
            raise ValueError('num_candidates and levels must be >= 1')
        if not 1 <= self.top_k <= self.num_candidates:
            raise ValueError(f'top_k must be in [1, num_candidates], got {self.top_k}')
        if not 1 <= self.num_average <= self.num_candidates:
            raise ValueError(f'num_average must be in [1, num_candidates], got {self.num_average}')
        if len(self.sigma) != 6 or any(s < 0 or not math.isfinite(s) for s in self.sigma):
            raise ValueError(f'sigma must be 6 finite values >= 0, got {self.sigma}')
        if self.schedule not in SCHEDULES:
            raise ValueError(f'schedule must be one of {SCHEDULES}, got {self.schedule!r}')
        if self.averaging not in ('eigh', 'power'):
            raise ValueError(f"averaging must be 'eigh' or 'power', got {self.averaging!r}")
        if not (self.converge_m >= 0 and self.converge_deg >= 0):
            raise ValueError('converge_m and converge_deg must be >= 0 (0 = no early stop)')
        if not 0.0 <= self.refine_share <= 1.0:
            raise ValueError(f'refine_share must be in [0, 1], got {self.refine_share}')
        if not (math.isfinite(self.refine_sigma_factor) and self.refine_sigma_factor > 0):
            raise ValueError(f'refine_sigma_factor must be > 0, got {self.refine_sigma_factor}')

    @property
    def refined(self) -> int:
        """Candidates of the last level drawn by the translation refinement."""
        return int(round(self.refine_share * self.num_candidates))

    @property
    def early_stop(self) -> bool:
        """Whether refinement may stop before ``levels`` (see ``converge_m``)."""
        return self.converge_m > 0 or self.converge_deg > 0

    def level_sigma(self, level: int) -> torch.Tensor:
        """Proposer standard deviation ``[6]`` (m, m, m, rad, rad, rad) for ``level >= 1``."""
        if self.schedule == 'halve':
            factor = 0.5 ** (level - 1)
        elif self.schedule == 'inverse':
            factor = 1.0 / level
        else:
            factor = 1.0
        v = torch.tensor(self.sigma, dtype=torch.float32)
        v[3:] = torch.deg2rad(v[3:])
        return v * factor


class SearchNoise(NamedTuple):
    """Random inputs of one search.

    ``uniform [K-1, B, N]`` picks mixture components, ``normal [K-1, B, N, 6]`` moves the picked
    poses.
    """

    uniform: torch.Tensor
    normal: torch.Tensor


class SearchResult(NamedTuple):
    """Output of :func:`hierarchical_search` for ``B`` images.

    ``pose [B, 7]`` metres + quaternion (x, y, z, w); ``covariance [B, 6, 6]`` ROS layout;
    ``score [B]`` best final score in [0, 1] (confidence); ``candidates [B, M, 7]`` and
    ``candidate_scores [B, M]``: the averaged top candidates, best first; ``levels``: levels
    run (fewer than configured after an early stop).
    """

    pose: torch.Tensor
    covariance: torch.Tensor
    score: torch.Tensor
    candidates: torch.Tensor
    candidate_scores: torch.Tensor
    levels: int = 0


def draw_noise(config: SearchConfig, batch: int, generator: torch.Generator | None = None,
               device: torch.device | str = 'cpu', levels: int | None = None) -> SearchNoise:
    """Random inputs for a search of ``batch`` images (seeded through ``generator``)."""
    levels = config.levels if levels is None else levels
    shape = (max(levels - 1, 0), batch, config.num_candidates)
    uniform = torch.rand(shape, generator=generator, device=device)
    normal = torch.randn((*shape, 6), generator=generator, device=device)
    return SearchNoise(uniform, normal)


def sample_mixture(centers: torch.Tensor, weights: torch.Tensor, uniform: torch.Tensor,
                   normal: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Draw candidates from the Gaussian mixture of eq. 2, without host synchronisation.

    Args:
        centers: ``[B, C, 7]`` mixture components (top-scored poses).
        weights: ``[B, C]`` non-negative mixture weights (normalised here; all-zero -> uniform).
        uniform: ``[B, N]`` in [0, 1): component choice by inverse CDF.
        normal: ``[B, N, 6]`` standard normal: offsets scaled by ``sigma [6]``.

    Returns:
        ``[B, N, 7]`` candidates.
    """
    weights = weights + 1e-12  # an all-zero row degrades to a uniform choice
    cdf = weights.cumsum(dim=-1)
    cdf = cdf / cdf[..., -1:]
    # The component of each draw: how many CDF entries lie at or below it, which is
    # torch.searchsorted(cdf, uniform, right=True); counted, it compiles into one vectorised loop
    # where searchsorted is a binary search per draw (a level's mixture sampling, 4096 draws of
    # 100 components, AVX-512 Xeon, compiled: 0.19 against 0.41 ms, this and perturb_poses'
    # rewrite together).
    index = (uniform[..., None] >= cdf[..., None, :]).sum(dim=-1)
    index = index.clamp_max(centers.shape[1] - 1)
    picked = torch.gather(centers, 1, index[..., None].expand(*index.shape, 7))
    return perturb_poses(picked, normal, sigma.to(centers))


def refine_translation(best: torch.Tensor, normal: torch.Tensor,
                       sigma: torch.Tensor) -> torch.Tensor:
    """Candidates ``[B, M, 7]`` around ``best [B, 7]``, moved in translation only.

    ``normal [B, M, 6]`` standard normal (its rotation part is unused), ``sigma [6]``: the
    translation deviations are ``sigma[:3]``. Every candidate keeps ``best``'s rotation.
    """
    translation = best[:, None, :3] + normal[..., :3] * sigma[:3]
    rotation = best[:, None, 3:].expand(-1, normal.shape[1], 4)
    return torch.cat([translation, rotation], dim=-1)


def level_sigmas(config: SearchConfig, levels: int) -> torch.Tensor:
    """Proposer deviations ``[levels - 1, 6]`` of levels 1 .. levels - 1."""
    if levels < 2:
        return torch.zeros((0, 6))
    return torch.stack([config.level_sigma(level) for level in range(1, levels)])


def unit_codes(codes: torch.Tensor) -> torch.Tensor:
    """Codes ``[M, d]`` scaled to unit length, float32: cached once for :func:`level0_scores`."""
    return torch.nn.functional.normalize(codes.float(), dim=-1)


def level0_scores(image_codes: torch.Tensor, unit: torch.Tensor) -> torch.Tensor:
    """Eq. 1 against cached unit codes ``[M, d]``: one product, ``[B, M]``.

    Equal to :func:`~imposing_ros.model.encoders.similarity` without normalising the ``M``
    codes on every frame (for a level-0 set of all reference poses that pass costs more than
    the product).
    """
    image = torch.nn.functional.normalize(image_codes.float(), dim=-1)
    return (image @ unit.transpose(0, 1)).relu()


def gather_poses(poses: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Poses ``[B, N, 7]`` picked by ``index [B, M]`` -> ``[B, M, 7]``."""
    return torch.gather(poses, 1, index[..., None].expand(*index.shape, poses.shape[-1]))


def propose_level(scores: torch.Tensor, candidates: torch.Tensor, uniform: torch.Tensor,
                  normal: torch.Tensor, sigma: torch.Tensor, top_k: int, refined: int = 0,
                  refine_factor: float = 1.0) -> torch.Tensor:
    """The next level's candidates ``[B, N, 7]`` from this level's ``candidates [B, N, 7]``.

    The ``top_k`` best-scored candidates (``scores [B, N]``) are the components of eq. 2's
    mixture; ``uniform [B, N]`` and ``normal [B, N, 6]`` are the level's noise, ``sigma [6]``
    its deviations. ``refined > 0`` (the last level, ``SearchConfig.refine_share``): the first
    ``refined`` candidates are drawn around the best one in translation only, with
    ``sigma * refine_factor`` (:func:`refine_translation`).
    """
    top_scores, top_index = scores.topk(top_k, dim=1)
    centers = gather_poses(candidates, top_index)
    drawn = sample_mixture(centers, top_scores, uniform[:, refined:], normal[:, refined:], sigma)
    if not refined:
        return drawn
    moved = refine_translation(centers[:, 0], normal[:, :refined], sigma * refine_factor)
    return torch.cat([moved, drawn], dim=1)


def estimate_pose(candidates: torch.Tensor, scores: torch.Tensor, num_average: int,
                  averaging: str = 'eigh', refined: int = 0) -> SearchResult:
    """The estimate from the last level's ``candidates [B, N, 7]`` and ``scores [B, N]``.

    The score-weighted average of the ``num_average`` best (paper step 7). ``refined``: the
    first ``refined`` candidates came from the translation refinement (:func:`propose_level`);
    they share one rotation, so the rotation and the covariance come from the other (eq. 2)
    candidates, refined in rotation too, around the estimate, as the paper's search would give
    them; the translation from all.
    """
    if not refined or refined >= candidates.shape[1]:
        return average_top(candidates, scores, num_average, averaging)
    top, top_scores, norm = _top_weighted(candidates, scores, num_average)
    rest = average_top(candidates[:, refined:], scores[:, refined:], num_average, averaging)
    translation = (norm[..., None] * top[..., :3]).sum(dim=1)
    pose = torch.cat([translation, rest.pose[:, 3:]], dim=-1)
    covariance = weighted_pose_covariance(rest.candidates, rest.candidate_scores + 1e-12, pose)
    return SearchResult(pose, _floored(covariance), top_scores[:, 0], top, top_scores, 1)


class SearchSteps(NamedTuple):
    """What the search does between two pose encodings, replaceable as a whole.

    ``score(image_codes [B, d], pose_codes [B, N, d]) -> [B, N]`` (eq. 1), ``propose`` (as
    :func:`propose_level`), ``estimate`` (as :func:`estimate_pose`) and ``perturb`` (as
    :func:`~imposing_ros.geometry.perturb_poses`: tracking's level-0 candidates around a prior;
    eager it costs more than a level's proposer, the Euler-angle conversion being a few dozen
    small ops). Eager by default; backends that compile pass compiled ones (each is then one or
    two C++ loops instead of a hundred small ops:
    :func:`imposing_ros.runtime.backends.compiled_search_steps`); tests pass an oracle score.

    ``encode_score(image_codes [B, d], poses [B, N, 7]) -> [B, N]``, optional: a backend's pose
    encoding and eq. 1 in one program, the codes scored where they are made instead of written
    out and read back (int8: :class:`imposing_ros.runtime.int8.Int8Backend`); None: the search
    encodes, then calls ``score``.
    """

    score: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = similarity
    propose: Callable[..., torch.Tensor] = propose_level
    estimate: Callable[..., SearchResult] = estimate_pose
    perturb: Callable[..., torch.Tensor] = perturb_poses
    encode_score: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None


def hierarchical_search(image_codes: torch.Tensor,
                        encode_poses: Callable[[torch.Tensor], torch.Tensor],
                        initial_poses: torch.Tensor,
                        config: SearchConfig,
                        noise: SearchNoise,
                        steps: SearchSteps | None = None,
                        on_stage: Callable[[str], None] | None = None,
                        sigmas: torch.Tensor | None = None,
                        initial_scores: torch.Tensor | None = None,
                        on_level: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None,
                        ) -> SearchResult:
    """Localize ``B`` images by scoring candidates level by level.

    Args:
        image_codes: ``[B, d]`` outputs of the image encoder.
        encode_poses: maps poses in metres ``[B, N, 7]`` to codes ``[B, N, d]``.
        initial_poses: level-0 candidates, ``[N, 7]`` shared by all images (global mode) or
            ``[B, N, 7]`` per image (tracking mode).
        config: search hyperparameters.
        noise: random inputs from :func:`draw_noise` (``levels - 1`` entries are used).
        steps: scoring, proposing and estimating (:class:`SearchSteps`; eager by default, a
            backend's compiled ones in the localizer).
        on_stage: called with a stage name after each stage (``level0``,
            ``level1/topk+sample``, ``level1/encode``, ``level1/score`` or, with
            ``steps.encode_score``, ``level1/encode+score``, ...); benchmarks time stages with
            it. None in production: no extra work, no synchronisation.
        sigmas: ``[K - 1, 6]`` proposer deviations of levels 1.. on the device (default: from
            ``config``); passing them keeps host-to-device copies out of a captured CUDA graph.
        initial_scores: ``[B, N]`` level-0 scores of shared ``initial_poses``, computed by the
            caller from unit codes cached once (:func:`level0_scores`: they do not depend on
            the image); without them level 0 encodes and scores ``initial_poses``.
        on_level: called with ``(level, candidates [B, N, 7], scores [B, N])`` after each
            level is scored (figures of the search; None in production).

    Returns:
        :class:`SearchResult`.
    """
    steps = SearchSteps() if steps is None else steps
    if sigmas is None:
        sigmas = level_sigmas(config, noise.uniform.shape[0] + 1).to(image_codes.device)
    stage = on_stage or (lambda name: None)
    batch = image_codes.shape[0]
    if initial_poses.ndim == 2:
        if initial_scores is None:
            initial_scores = steps.score(image_codes, encode_poses(initial_poses))
        scores = initial_scores
        candidates = initial_poses.expand(batch, *initial_poses.shape)
    else:
        candidates = initial_poses
        scores = _encode_and_score(image_codes, candidates, encode_poses, steps)
    stage('level0')
    if on_level is not None:
        on_level(0, candidates, scores)
    levels = noise.uniform.shape[0] + 1
    top_k = min(config.top_k, scores.shape[1])
    refined = min(config.refined, noise.uniform.shape[-1])
    last_mean = None
    level = 0
    last_refined = 0  # candidates of the last level run drawn by the translation refinement
    for level in range(1, levels):
        if config.early_stop:
            top_scores, top_index = scores.topk(top_k, dim=1)
            mean = _weighted_mean_pose(gather_poses(candidates, top_index), top_scores)
            if last_mean is not None and _converged(last_mean, mean, config):
                level -= 1  # this level is not run
                break
            last_mean = mean
        last_refined = refined if level == levels - 1 else 0
        candidates = steps.propose(scores, candidates, noise.uniform[level - 1],
                                   noise.normal[level - 1], sigmas[level - 1], top_k,
                                   last_refined, config.refine_sigma_factor)
        stage(f'level{level}/topk+sample')
        scores = _encode_and_score(image_codes, candidates, encode_poses, steps, stage,
                                   f'level{level}/')
        if on_level is not None:
            on_level(level, candidates, scores)
    result = steps.estimate(candidates, scores, config.num_average, config.averaging,
                            last_refined)
    stage('average+covariance')
    return result._replace(levels=level + 1)


def _encode_and_score(image_codes: torch.Tensor, poses: torch.Tensor, encode_poses: Callable,
                      steps: SearchSteps, stage: Callable[[str], None] = lambda name: None,
                      prefix: str = '') -> torch.Tensor:
    """Scores ``[B, N]`` of ``poses [B, N, 7]``, in one call where the steps offer one.

    ``stage`` is told ``prefix + 'encode+score'``, or ``'encode'`` then ``'score'``.
    """
    if steps.encode_score is not None:
        scores = steps.encode_score(image_codes, poses)
        stage(prefix + 'encode+score')
        return scores
    codes = encode_poses(poses)
    stage(prefix + 'encode')
    scores = steps.score(image_codes, codes)
    stage(prefix + 'score')
    return scores


def _floored(covariance: torch.Tensor) -> torch.Tensor:
    """Positive definite when all candidates coincide (numerical floor, not a prior)."""
    return covariance + 1e-9 * torch.eye(6, dtype=covariance.dtype, device=covariance.device)


def _weighted_mean_pose(poses: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Cheap score-weighted mean ``[B, 7]`` of ``poses [B, M, 7]`` (for convergence tests).

    Quaternions are sign-aligned with the best one and averaged linearly: accurate for the
    nearby rotations of the top candidates, without an eigensolver.
    """
    w = (weights + 1e-12) / (weights + 1e-12).sum(dim=1, keepdim=True)
    quats = poses[..., 3:]
    dot = (quats * quats[:, :1]).sum(dim=-1, keepdim=True)
    quat = (w[..., None] * torch.where(dot < 0, -quats, quats)).sum(dim=1)
    translation = (w[..., None] * poses[..., :3]).sum(dim=1)
    return torch.cat([translation, quat / quat.norm(dim=-1, keepdim=True)], dim=-1)


def _converged(previous: torch.Tensor, current: torch.Tensor, config: SearchConfig) -> bool:
    """Whether every image's mean pose moved less than the tolerances (one host read)."""
    moved_m = (current[:, :3] - previous[:, :3]).norm(dim=-1)
    dot = (current[:, 3:] * previous[:, 3:]).sum(dim=-1).abs().clamp(max=1.0)
    moved_deg = torch.rad2deg(2 * torch.acos(dot))
    ok = torch.ones_like(moved_m, dtype=torch.bool)
    if config.converge_m > 0:
        ok &= moved_m < config.converge_m
    if config.converge_deg > 0:
        ok &= moved_deg < config.converge_deg
    return bool(ok.all())


def average_top(candidates: torch.Tensor, scores: torch.Tensor, num_average: int,
                averaging: str = 'eigh') -> SearchResult:
    """Score-weighted average of the ``num_average`` best candidates (paper step 7).

    ``averaging``: rotation average by ``'eigh'`` (Markley) or ``'power'`` (no eigensolver).
    """
    top, top_scores, norm = _top_weighted(candidates, scores, num_average)
    translation = (norm[..., None] * top[..., :3]).sum(dim=1)
    if averaging == 'eigh':
        quat = weighted_quat_average(top[..., 3:], norm)
    else:
        quat = weighted_quat_average_power(top[..., 3:], norm)
    pose = torch.cat([translation, canonical_quat(quat)], dim=-1)
    covariance = _floored(weighted_pose_covariance(top, norm, pose))
    return SearchResult(pose, covariance, top_scores[:, 0], top, top_scores, 1)


def _top_weighted(candidates: torch.Tensor, scores: torch.Tensor, count: int):
    """The ``count`` best candidates ``[B, M, 7]``, their scores and normalised weights."""
    top_scores, top_index = scores.topk(min(count, scores.shape[1]), dim=1)
    weights = top_scores + 1e-12
    return (gather_poses(candidates, top_index), top_scores,
            weights / weights.sum(dim=1, keepdim=True))
