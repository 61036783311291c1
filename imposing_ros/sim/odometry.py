"""Simulated wheel odometry: noisy speed and yaw rate integrated in the ``odom`` frame.

Model (unicycle, per sample k at rate r, dt = 1 / r):

* measured speed ``v_k (1 + e_s) + n_v``, with a wheel-radius scale error ``e_s ~ N(0, s_s^2)``
  drawn once per traversal and white noise ``n_v ~ N(0, s_v^2)``;
* measured yaw rate ``w_k + b + n_w``, with a constant bias ``b ~ N(0, s_b^2)`` and white noise
  ``n_w ~ N(0, s_w^2)``;
* the pose integrates these with the midpoint rule, starting at the identity: ``odom`` is where
  base_link was at the first sample (REP-105: continuous, drifting, no jumps).

The covariance published with each message propagates these statistics to first order (diagonal
in x, y of the odom frame, yaw). Written by hand: it is the model, not something a library offers.
"""

from __future__ import annotations

from dataclasses import dataclass
import math

import numpy as np

from imposing_ros.sim.config import OdometryConfig
from imposing_ros.sim.route import Trajectory


@dataclass
class Odometry:
    """Odometry states at every trajectory sample (odom frame)."""

    xy: np.ndarray        # [K, 2]
    yaw: np.ndarray       # [K]
    speed: np.ndarray     # [K] measured forward speed
    yaw_rate: np.ndarray  # [K] measured yaw rate
    var_xy: np.ndarray    # [K] variance of x and of y (m^2)
    var_yaw: np.ndarray   # [K] rad^2
    scale_error: float
    yaw_bias: float


def simulate_odometry(traj: Trajectory, config: OdometryConfig,
                      rng: np.random.Generator) -> Odometry:
    """Noisy odometry for a trajectory (module docstring)."""
    k = len(traj.t)
    dt = 1.0 / config.rate_hz
    scale = float(rng.normal(0.0, config.speed_scale_std))
    bias = float(rng.normal(0.0, config.yaw_rate_bias_std))
    moving = np.abs(traj.speed) > 1e-3  # a standing vehicle's wheels do not tick
    speed = traj.speed * (1 + scale) + rng.normal(0.0, config.speed_noise_std, k) * moving
    yaw_rate = traj.yaw_rate + (bias + rng.normal(0.0, config.yaw_rate_noise_std, k)) * moving
    yaw = np.zeros(k)
    xy = np.zeros((k, 2))
    yaw[1:] = np.cumsum((yaw_rate[1:] + yaw_rate[:-1]) / 2 * dt)
    mid = (yaw[1:] + yaw[:-1]) / 2
    step = (speed[1:] + speed[:-1]) / 2 * dt
    xy[1:, 0] = np.cumsum(step * np.cos(mid))
    xy[1:, 1] = np.cumsum(step * np.sin(mid))
    # First-order variances: yaw error grows with the white noise (random walk) and the bias
    # (linear); the position error with the speed errors and the heading error times distance.
    t = traj.t - traj.t[0]
    n_moving = np.cumsum(moving)
    var_yaw = (config.yaw_rate_noise_std * dt) ** 2 * n_moving / 2 \
        + (config.yaw_rate_bias_std * t) ** 2
    dist = np.concatenate([[0.0], np.cumsum(np.abs(step))])
    var_along = (config.speed_noise_std * dt) ** 2 * n_moving / 2 \
        + (config.speed_scale_std * dist) ** 2
    # Cross-track error from heading errors, which are correlated in time: bounded by the
    # coherent sum of step * sigma_yaw (conservative).
    sigma_cross = np.concatenate([[0.0], np.cumsum(np.abs(step) * np.sqrt(var_yaw[:-1]))])
    var_cross = sigma_cross ** 2
    var_xy = var_along + var_cross
    return Odometry(xy, yaw, speed, yaw_rate, var_xy, var_yaw, scale, bias)


def drift_bound(distance_m: float, duration_s: float, config: OdometryConfig,
                sigmas: float = 3.0) -> float:
    """Conservative position drift bound (m) after driving ``distance_m`` in ``duration_s``.

    ``sigmas`` standard deviations of the scale error times distance, plus the heading error
    (bias over the duration and the white noise random walk) times distance.
    """
    yaw = config.yaw_rate_bias_std * duration_s \
        + config.yaw_rate_noise_std * math.sqrt(duration_s / config.rate_hz)
    return sigmas * (config.speed_scale_std * distance_m + yaw * distance_m
                     + config.speed_noise_std * math.sqrt(duration_s / config.rate_hz))
