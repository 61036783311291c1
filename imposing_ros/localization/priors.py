"""Which prior seeds the next search: an initial pose, the motion filter's prior, or none.

Thread-safe: inputs arrive on other threads than the frames. An initial pose is used once and
wins over the filter's prior; a relocalization request or a failed frame makes the next frame
global; a filter prior is used while tracking is on and it is recent enough at the image stamp.
Poses are ``T_map_base`` 4x4 with a 6x6 covariance (ROS layout) in the map of ``scene``. No ROS.
"""

from __future__ import annotations

from dataclasses import dataclass
import threading

import numpy as np


@dataclass(frozen=True)
class Prior:
    """A base pose with its covariance, in the map of ``scene`` ('' single-scene)."""

    matrix: np.ndarray
    covariance: np.ndarray
    scene: str = ''


class PriorBook:
    """The pending seeds of the next search (module docstring)."""

    def __init__(self):
        self._lock = threading.Lock()
        self.forget()

    def forget(self) -> None:
        """Drop every pending seed (configure, clock jump back, scene switch)."""
        with self._lock:
            self._global = False
            self._initial: Prior | None = None
            self._filter: tuple[int, Prior] | None = None

    def set_filter_prior(self, stamp_ns: int, prior: Prior) -> None:
        """The motion filter's latest prior, stamped ``stamp_ns``."""
        with self._lock:
            self._filter = (stamp_ns, prior)

    def forget_filter_prior(self) -> None:
        """Drop the filter's prior (it was of another scene's map)."""
        with self._lock:
            self._filter = None

    def set_initial_pose(self, prior: Prior) -> None:
        """An operator's pose: the next frame searches around it (supersedes a global request)."""
        with self._lock:
            self._initial, self._global = prior, False

    def request_global(self) -> None:
        """The next frame runs a global search (relocalization, a failed or low-score frame)."""
        with self._lock:
            self._global, self._initial = True, None

    def take(self, stamp_ns: int, use_filter: bool, filter_timeout_s: float) -> Prior | None:
        """The seed of a frame stamped ``stamp_ns``, or ``None`` for a global search."""
        with self._lock:
            if self._global:
                self._global, self._initial = False, None
                return None
            seed, self._initial = self._initial, None
            if seed is None and use_filter and self._filter is not None:
                filter_ns, prior = self._filter
                if abs(stamp_ns - filter_ns) * 1e-9 <= filter_timeout_s:
                    seed = prior
            return seed
