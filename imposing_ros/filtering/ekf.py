"""Motion-model filter: an EKF fusing wheel odometry with global pose measurements (pure numpy).

State and why. ``[x, y, z, yaw]`` of base_link in the map (metres, radians): planar motion with
height. A road vehicle's roll and pitch are small, unobservable from wheel odometry and poorly
constrained by a single-image localizer, so estimating them would only add noise; the height
follows the measurements (slopes, bridges). Published roll and pitch are zero with the
configured variance.

Prediction. Odometry arrives as absolute poses in the odom frame; the filter applies the planar
increment between consecutive odometry poses (expressed in the previous base frame, so odom drift
does not matter), with noise growing with distance and rotation (AMCL's odometry model):
``sigma_forward = a_t * |d| + a_tr * |dyaw|``, ``sigma_lateral = a_lat * |d|``,
``sigma_yaw = a_r * |dyaw| + a_rt * |d|``, plus ``z`` and time random walks.

Update. A pose measurement (x, y, z, yaw block of its 6x6 ROS covariance) is fused when its
squared Mahalanobis distance is under ``mahalanobis_threshold`` (chi-square, 4 dof), rejected and
counted otherwise. A global localizer can be wrong, and so can the pose the filter started
from: after ``reinit_after_rejections`` measurements rejected in a row the filter restarts from
the latest one (a kidnapped robot, a wrong first fix), instead of refusing every later fix.

Lagged measurements (robot_localization's ``smooth_lagged_data``). The localizer's pose arrives
after later odometry: the filter keeps a history of inputs and states over ``history_s`` seconds;
a measurement older than the newest input rewinds to the last state before its stamp and replays
every later input, odometry interpolated at the measurement stamp. The result equals what timely
delivery gives. Measurements older than the history are dropped and counted.

Time. Stamps are integer nanoseconds (``builtin_interfaces/Time`` as ``sec * 10**9 + nanosec``:
exact, no float rounding at 1.7e9 s). Odometry up to ``odometry_jitter_s`` older than the latest
is slotted into the history (transport reordering); further back (a bag loop) it resets the
filter, and :meth:`MotionFilter.restart` does the same for a caller whose clock jumps back. A
measurement stamped more than ``max_future_s`` after the latest odometry is refused: fused, it
would hide every later odometry step and push real fixes out of the history.

Measurement covariance. A covariance singular in x, y, yaw (e.g. all zero) is refused: it would
make the fix exact (z may be 0: 2-D localizers leave it so). A usable one gets
``min_position_std`` / ``min_yaw_std`` added in quadrature, so an overconfident localizer cannot
pin the state.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
import logging
import math
from typing import NamedTuple

import numpy as np

LOGGER = logging.getLogger('imposing_ros.filtering')

# Indices of the filter state in the 6-vector (x, y, z, roll, pitch, yaw) of ROS covariances.
STATE_IN_POSE = (0, 1, 2, 5)


def wrap_angle(angle):
    """Angle(s) wrapped into [-pi, pi)."""
    return (np.asarray(angle) + math.pi) % (2 * math.pi) - math.pi


@dataclass(frozen=True)
class FilterConfig:
    """Filter settings; the node declares one parameter per field with these defaults."""

    # Odometry noise (AMCL-style): forward error per metre, per radian turned; lateral error per
    # metre; yaw error per radian turned, per metre driven.
    alpha_trans: float = 0.05
    alpha_trans_rot: float = 0.02
    alpha_lateral: float = 0.02
    alpha_rot: float = 0.05
    alpha_rot_trans: float = 0.005
    # Random walks per second: height (m) and a small planar term so a standing vehicle's
    # covariance still grows (m and rad).
    z_random_walk: float = 0.05
    xy_random_walk: float = 0.01
    yaw_random_walk: float = 0.002
    # Squared Mahalanobis distance above which a measurement is rejected (chi-square, 4 dof:
    # 18.47 keeps 99.9 % of consistent measurements).
    mahalanobis_threshold: float = 18.47
    # Measurements rejected in a row after which the filter restarts from the latest one
    # (0: never). Independent outliers rarely come 5 in a row; a wrong state always does.
    reinit_after_rejections: int = 5
    # Seconds of inputs kept to re-apply late measurements.
    history_s: float = 10.0
    # Variance (rad^2) published for the unestimated roll and pitch.
    roll_pitch_variance: float = 1e-3
    # Standard deviations added in quadrature to every measurement (m for x, y, z; rad for yaw).
    min_position_std: float = 0.05
    min_yaw_std: float = 0.005
    # Odometry this much older than the latest (s) is reordered into the history, not a reset.
    odometry_jitter_s: float = 0.5
    # Measurements stamped more than this after the latest odometry (s) are refused.
    max_future_s: float = 1.0

    def __post_init__(self):
        for name, value in self.__dict__.items():
            if not math.isfinite(value) or value < 0:
                raise ValueError(f'{name} must be finite and >= 0, got {value}')
        if self.mahalanobis_threshold <= 0 or self.history_s <= 0:
            raise ValueError('mahalanobis_threshold and history_s must be > 0')
        if int(self.reinit_after_rejections) != self.reinit_after_rejections:
            raise ValueError('reinit_after_rejections must be an integer')


class FilterState(NamedTuple):
    """Estimate at ``stamp_ns``: ``mean [x, y, z, yaw]`` and ``covariance (4, 4)``.

    ``last_fix_ns`` is the stamp of the latest fused measurement, ``rejected_in_row`` the
    measurements rejected since; both are part of the state so that a replay reproduces them.
    """

    stamp_ns: int
    mean: np.ndarray
    covariance: np.ndarray
    last_fix_ns: int | None = None
    rejected_in_row: int = 0

    def pose(self) -> np.ndarray:
        """``(x, y, z, qx, qy, qz, qw)`` with zero roll and pitch."""
        x, y, z, yaw = self.mean
        return np.array([x, y, z, 0.0, 0.0, math.sin(yaw / 2), math.cos(yaw / 2)])

    def pose_covariance(self, roll_pitch_variance: float) -> np.ndarray:
        """6x6 ROS-layout covariance (x, y, z, rot x, rot y, rot z)."""
        out = np.zeros((6, 6))
        index = np.array(STATE_IN_POSE)
        out[np.ix_(index, index)] = self.covariance
        out[3, 3] = out[4, 4] = roll_pitch_variance
        return out


class _Entry:
    """One input of the history and the filter's state right after it."""

    __slots__ = ('stamp_ns', 'kind', 'value', 'covariance', 'state', 'odom', 'verdict',
                 'restarted')

    def __init__(self, stamp_ns: int, kind: str, value: np.ndarray, covariance=None):
        self.stamp_ns, self.kind, self.value, self.covariance = stamp_ns, kind, value, covariance
        self.state: FilterState | None = None
        self.odom: tuple[int, np.ndarray] | None = None  # odometry pose at this stamp
        self.verdict: bool | None = None  # measurement fused (True) or rejected (False)
        self.restarted = False  # the filter restarted from this measurement

    @property
    def key(self) -> tuple[int, int]:
        """Time order; at equal stamps odometry first, so a measurement sees that motion."""
        return self.stamp_ns, 0 if self.kind == 'odom' else 1


def planar_pose(pose7) -> np.ndarray:
    """``[x, y, z, yaw]`` of a pose ``(x, y, z, qx, qy, qz, qw)``."""
    x, y, z, qx, qy, qz, qw = (float(v) for v in pose7)
    yaw = math.atan2(2.0 * (qw * qz + qx * qy), 1.0 - 2.0 * (qy * qy + qz * qz))
    return np.array([x, y, z, yaw])


def pose_block(covariance6) -> np.ndarray:
    """The (x, y, z, yaw) 4x4 block of a 6x6 ROS covariance."""
    index = np.array(STATE_IN_POSE)
    return np.asarray(covariance6, dtype=float).reshape(6, 6)[np.ix_(index, index)]


class MotionFilter:
    """EKF over ``[x, y, z, yaw]`` (module docstring). Not thread-safe: one caller at a time."""

    def __init__(self, config: FilterConfig | None = None):
        self.config = config or FilterConfig()
        self.dropped_old = 0
        self.resets = 0
        self.reset()

    def reset(self) -> None:
        """Forget the state and the history (counters are kept)."""
        self._entries: list[_Entry] = []  # time-ordered inputs within history_s
        self._base: FilterState | None = None  # state before the first kept entry
        self._base_odom: tuple[int, np.ndarray] | None = None
        self._last_odom_ns: int | None = None
        self._trimmed = [0, 0, 0]  # accepted, rejected, restarts among inputs folded into _base
        self._folded = False

    def restart(self) -> None:
        """Forget the state and the history after a backward time jump (counted in ``resets``)."""
        self.resets += 1
        self.reset()

    @property
    def accepted(self) -> int:
        """Measurements fused so far."""
        return self._trimmed[0] + sum(e.verdict is True for e in self._entries)

    @property
    def rejected(self) -> int:
        """Measurements rejected by the Mahalanobis test so far."""
        return self._trimmed[1] + sum(e.verdict is False for e in self._entries)

    @property
    def reinitializations(self) -> int:
        """Restarts from a measurement after ``reinit_after_rejections`` rejections in a row."""
        return self._trimmed[2] + sum(e.restarted for e in self._entries)

    @property
    def state(self) -> FilterState | None:
        """Latest estimate, or None before initialisation."""
        return self._entries[-1].state if self._entries else self._base

    @property
    def initialized(self) -> bool:
        """Whether a measurement (or an initial pose) has set the state."""
        return self.state is not None

    # --- inputs ---------------------------------------------------------------------------------

    def add_odometry(self, stamp_ns: int, pose7) -> None:
        """Odometry pose ``(x, y, z, qx, qy, qz, qw)`` of base_link in odom at ``stamp_ns``."""
        value = planar_pose(pose7)
        if not np.isfinite(value).all():
            raise ValueError('odometry pose is not finite')
        if self._last_odom_ns is not None:
            back_ns = self._last_odom_ns - stamp_ns
            if back_ns > int(self.config.odometry_jitter_s * 1e9):
                LOGGER.info('odometry went back in time by %.3f s: filter reset', back_ns * 1e-9)
                self.restart()
            elif back_ns >= 0:  # reordered in transport: slot it in, unless already known
                if back_ns > 0 and not any(e.kind == 'odom' and e.stamp_ns == stamp_ns
                                           for e in self._entries) and \
                        (not self._entries or stamp_ns > self._entries[0].stamp_ns):
                    self._insert(_Entry(stamp_ns, 'odom', value))
                return
        self._last_odom_ns = stamp_ns
        self._insert(_Entry(stamp_ns, 'odom', value))

    def add_pose(self, stamp_ns: int, pose7, covariance6) -> bool | None:
        """Global pose measurement of base_link in the map, possibly late.

        Returns True if fused, False if rejected by the Mahalanobis test (also when that
        rejection restarted the filter from it, see ``reinitializations``), None if dropped as
        older than the history. Raises ValueError for a non-finite pose or a covariance that is
        not symmetric positive semi-definite.
        """
        value = planar_pose(pose7)
        cov = pose_block(covariance6)
        if not (np.isfinite(value).all() and np.isfinite(cov).all()):
            raise ValueError('pose measurement or its covariance is not finite')
        cov = self._measurement_covariance(cov)
        if self._last_odom_ns is not None and \
                stamp_ns > self._last_odom_ns + int(self.config.max_future_s * 1e9):
            raise ValueError(f'pose stamped {(stamp_ns - self._last_odom_ns) * 1e-9:.3f} s after '
                             f'the latest odometry (max_future_s {self.config.max_future_s})')
        if self._folded and self._entries and stamp_ns < self._entries[0].stamp_ns:
            self.dropped_old += 1
            return None
        entry = _Entry(stamp_ns, 'pose', value, cov)
        self._insert(entry)
        return entry.verdict

    def initialize(self, stamp_ns: int, pose7, covariance6) -> None:
        """Set the state from a pose (e.g. RViz's initial pose), forgetting the history."""
        value, cov = planar_pose(pose7), pose_block(covariance6)
        if not (np.isfinite(value).all() and np.isfinite(cov).all()):
            raise ValueError('initial pose or its covariance is not finite')
        cov = self._measurement_covariance(cov)
        odom = self._entries[-1].odom if self._entries else self._base_odom
        last_odom_ns = self._last_odom_ns
        self.reset()
        self._last_odom_ns = last_odom_ns
        self._base = FilterState(stamp_ns, value, cov, last_fix_ns=stamp_ns)
        self._base_odom = odom

    def _measurement_covariance(self, cov: np.ndarray) -> np.ndarray:
        """Checked ``(4, 4)`` block with the configured floor added (ValueError if unusable)."""
        if not np.allclose(cov, cov.T, atol=1e-9 + 1e-6 * np.abs(cov).max()):
            raise ValueError('pose covariance is not symmetric')
        # x, y, yaw must carry an uncertainty; z may be 0 (2-D localizers such as AMCL).
        eigenvalues = np.linalg.eigvalsh(cov[np.ix_([0, 1, 3], [0, 1, 3])])
        if eigenvalues.min() <= 1e-12 * max(1.0, eigenvalues.max()) or cov[2, 2] < 0:
            raise ValueError('pose covariance is not positive definite (singular, e.g. all '
                             'zero): an exact fix is not plausible; publish the uncertainty')
        cfg = self.config
        return cov + np.diag([cfg.min_position_std ** 2] * 3 + [cfg.min_yaw_std ** 2])

    def predict(self, stamp_ns: int) -> FilterState | None:
        """Estimate at ``stamp_ns`` (at or after the latest input), with time noise only."""
        state = self.state
        if state is None:
            return None
        return self.predict_from(state, stamp_ns)

    # --- history --------------------------------------------------------------------------------

    def _insert(self, entry: _Entry) -> None:
        keys = [e.key for e in self._entries]
        index = bisect.bisect_right(keys, entry.key)
        self._entries.insert(index, entry)
        # Measurements after the previous odometry were interpolated without this input (or
        # not at all): replay them too.
        start = index
        while start > 0 and self._entries[start - 1].kind == 'pose':
            start -= 1
        self._replay(start)
        self._trim()

    def _replay(self, start: int) -> None:
        if start > 0:
            state, odom = self._entries[start - 1].state, self._entries[start - 1].odom
        else:
            state, odom = self._base, self._base_odom
        for i in range(start, len(self._entries)):
            entry = self._entries[i]
            if entry.kind == 'odom':
                if state is not None and odom is not None:
                    state = self._predict(state, odom[1], entry.value, entry.stamp_ns)
                odom = (entry.stamp_ns, entry.value)
            else:
                following = next((e for e in self._entries[i + 1:] if e.kind == 'odom'), None)
                if odom is not None and following is not None:
                    target = interpolate_planar(odom, (following.stamp_ns, following.value),
                                                entry.stamp_ns)
                    if state is not None:
                        state = self._predict(state, odom[1], target, entry.stamp_ns)
                    odom = (entry.stamp_ns, target)
                elif state is not None:  # no motion known yet past this stamp
                    state = self.predict_from(state, entry.stamp_ns)
                state, entry.verdict, entry.restarted = self._update(state, entry)
            entry.state, entry.odom = state, odom

    def _trim(self) -> None:
        """Fold inputs older than the history window into the base state."""
        horizon = self._entries[-1].stamp_ns - int(self.config.history_s * 1e9)
        while len(self._entries) > 1 and self._entries[0].stamp_ns < horizon:
            entry = self._entries.pop(0)
            self._base, self._base_odom = entry.state, entry.odom
            if entry.verdict is not None:
                self._trimmed[0 if entry.verdict else 1] += 1
                self._trimmed[2] += entry.restarted
            self._folded = True

    # --- the EKF --------------------------------------------------------------------------------

    def predict_from(self, state: FilterState, stamp_ns: int) -> FilterState:
        """``state`` carried to ``stamp_ns`` with time noise only."""
        dt = max(0, stamp_ns - state.stamp_ns) * 1e-9
        return state._replace(stamp_ns=max(stamp_ns, state.stamp_ns),
                              covariance=state.covariance + self._time_noise(dt))

    def _predict(self, state: FilterState, a: np.ndarray, b: np.ndarray,
                 stamp_ns: int) -> FilterState:
        """Apply the odometry increment from odom pose ``a`` to ``b`` (both [x, y, z, yaw])."""
        c, s = math.cos(a[3]), math.sin(a[3])
        dx_w, dy_w = b[0] - a[0], b[1] - a[1]
        dx, dy = c * dx_w + s * dy_w, -s * dx_w + c * dy_w  # increment in the old base frame
        dz, dyaw = b[2] - a[2], float(wrap_angle(b[3] - a[3]))
        x, y, z, yaw = state.mean
        cy, sy = math.cos(yaw), math.sin(yaw)
        mean = np.array([x + cy * dx - sy * dy, y + sy * dx + cy * dy, z + dz,
                         float(wrap_angle(yaw + dyaw))])
        jacobian = np.eye(4)
        jacobian[0, 3] = -sy * dx - cy * dy
        jacobian[1, 3] = cy * dx - sy * dy
        cfg = self.config
        dist = math.hypot(dx, dy)
        s_forward = cfg.alpha_trans * dist + cfg.alpha_trans_rot * abs(dyaw)
        s_lateral = cfg.alpha_lateral * dist
        s_yaw = cfg.alpha_rot * abs(dyaw) + cfg.alpha_rot_trans * dist
        rotation = np.array([[cy, -sy], [sy, cy]])
        noise = np.zeros((4, 4))
        noise[:2, :2] = rotation @ np.diag([s_forward ** 2, s_lateral ** 2]) @ rotation.T
        noise[3, 3] = s_yaw ** 2
        dt = max(0, stamp_ns - state.stamp_ns) * 1e-9
        covariance = jacobian @ state.covariance @ jacobian.T + noise + self._time_noise(dt)
        return state._replace(stamp_ns=stamp_ns, mean=mean,
                              covariance=0.5 * (covariance + covariance.T))

    def _time_noise(self, dt: float) -> np.ndarray:
        cfg = self.config
        return np.diag([cfg.xy_random_walk ** 2, cfg.xy_random_walk ** 2,
                        cfg.z_random_walk ** 2, cfg.yaw_random_walk ** 2]) * dt

    def _update(self, state: FilterState | None, entry: _Entry):
        """(state after the measurement, fused?, restarted from it?)."""
        if state is None:  # the first measurement initialises the filter
            return self._from_measurement(entry), True, False
        innovation = entry.value - state.mean
        innovation[3] = float(wrap_angle(innovation[3]))
        s = state.covariance + entry.covariance
        d2 = float(innovation @ np.linalg.solve(s, innovation))
        if d2 > self.config.mahalanobis_threshold:
            in_row = state.rejected_in_row + 1
            limit = int(self.config.reinit_after_rejections)
            if limit and in_row >= limit:
                LOGGER.info('%d measurements rejected in a row: restarting from the latest',
                            in_row)
                return self._from_measurement(entry), False, True
            return state._replace(rejected_in_row=in_row), False, False
        gain = state.covariance @ np.linalg.inv(s)
        mean = state.mean + gain @ innovation
        mean[3] = float(wrap_angle(mean[3]))
        # Joseph form keeps the covariance symmetric positive definite.
        i_k = np.eye(4) - gain
        covariance = i_k @ state.covariance @ i_k.T + gain @ entry.covariance @ gain.T
        return FilterState(state.stamp_ns, mean, 0.5 * (covariance + covariance.T),
                           last_fix_ns=entry.stamp_ns), True, False

    @staticmethod
    def _from_measurement(entry: _Entry) -> FilterState:
        return FilterState(entry.stamp_ns, entry.value.copy(), entry.covariance.copy(),
                           last_fix_ns=entry.stamp_ns)


def interpolate_planar(a, b, stamp_ns: int) -> np.ndarray:
    """Planar pose between ``a = (stamp, [x, y, z, yaw])`` and ``b`` at ``stamp_ns`` (linear)."""
    (ta, va), (tb, vb) = a, b
    if tb == ta:
        return vb.copy()
    f = min(max((stamp_ns - ta) / (tb - ta), 0.0), 1.0)
    out = va + f * (vb - va)
    out[3] = float(wrap_angle(va[3] + f * float(wrap_angle(vb[3] - va[3]))))
    return out
