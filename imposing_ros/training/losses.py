"""Target scores (eq. 3) and the L1 score loss (eq. 5) of paper section 3.2."""

from __future__ import annotations

import torch

from imposing_ros.geometry import rotation_distance


def target_scores(true_poses: torch.Tensor, candidates: torch.Tensor, scale: float,
                  lambda_t: float = 5.0, lambda_r: float = 0.1) -> torch.Tensor:
    """Eq. 3: ``ReLU(1 - lambda_t * ||t - t_c|| / scale - lambda_r * G(q, q_c))``.

    Units: the translation distance is in *normalised* map units (metres / ``scale``, see
    :class:`~imposing_ros.geometry.MapNormalization`), so ``lambda_t = 5`` zeroes the score at
    ``scale / 5`` metres; ``G`` is the geodesic angle in *degrees*, so ``lambda_r = 0.1`` zeroes
    it at 10 degrees.

    Args:
        true_poses: ``[B, 7]`` in metres.
        candidates: ``[B, N, 7]`` (or ``[N, 7]`` shared) in metres.
        scale: metres per normalised unit of the map.

    Returns:
        ``[B, N]`` target scores in [0, 1].
    """
    true = true_poses[:, None, :]
    dt = (candidates[..., :3] - true[..., :3]).norm(dim=-1) / scale
    dr = torch.rad2deg(rotation_distance(candidates[..., 3:], true[..., 3:]))
    return (1.0 - lambda_t * dt - lambda_r * dr).relu()


def score_loss(predicted: list[torch.Tensor], targets: list[torch.Tensor]) -> torch.Tensor:
    """Eq. 5: L1 between predicted and target scores.

    Mean over candidates (and images), summed over levels. Both lists hold one ``[B, N]`` tensor
    per level.
    """
    if len(predicted) != len(targets) or not predicted:
        raise ValueError('predicted and targets need one [B, N] tensor per level')
    return sum((p - t).abs().mean() for p, t in zip(predicted, targets))
