"""A small analytic scene whose images depend on the camera pose, for tests and benchmarks.

Not a simulator (that is :mod:`imposing_ros.sim`): a straight two-way road of ``length`` metres
along x, lined with a seeded 1-D texture on each side. The image of a camera at ``x`` looking
along +x (or -x) shows the texture a few metres ahead, so the position along the road and the
heading can be read back from the pixels, while neighbouring places look alike. Generating a
frame takes microseconds.
"""

from __future__ import annotations

import math

import numpy as np

from imposing_ros.data.frames import Frame


class SyntheticRoad:
    """Posed images along a straight road (see module docstring)."""

    def __init__(self, length: float = 200.0, size: tuple[int, int] = (32, 64), seed: int = 0):
        self.length, self.size = float(length), size
        rng = np.random.default_rng(seed)
        # Per side (0: heading +x, 1: heading -x) a texture: sums of random sines over x, per
        # colour channel; wavelengths 4 to 60 m.
        self.freqs = 2 * math.pi / rng.uniform(4.0, 60.0, size=(2, 3, 6))
        self.phases = rng.uniform(0, 2 * math.pi, size=(2, 3, 6))

    def pose(self, x: float, forward: bool) -> np.ndarray:
        """Pose (T_map_camera) at ``x`` on the lane of the heading (right-hand traffic)."""
        yaw = 0.0 if forward else math.pi
        y = -2.0 if forward else 2.0
        return np.array([x, y, 1.5, 0.0, 0.0, math.sin(yaw / 2), math.cos(yaw / 2)])

    def image(self, x: float, forward: bool) -> np.ndarray:
        """``[H, W, 3]`` uint8: columns show the road side at 2 to 30 m ahead of ``x``."""
        height, width = self.size
        side = 0 if forward else 1
        ahead = np.linspace(2.0, 30.0, width)
        xs = x + ahead if forward else x - ahead
        tex = np.sin(xs[:, None, None] * self.freqs[side] + self.phases[side]).mean(-1)
        column = 0.5 + 0.45 * tex[None]  # [1, W, 3]
        rows = np.linspace(1.0, 0.4, height)[:, None, None]  # darker towards the road
        return (255 * np.clip(rows * column, 0, 1)).astype(np.uint8)

    def frames(self, count: int, seed: int = 0, jitter: float = 0.0):
        """``count`` frames at random positions and headings (uniform ``jitter`` m along x)."""
        rng = np.random.default_rng(seed)
        for i in range(count):
            x = float(rng.uniform(0.0, self.length))
            forward = bool(rng.integers(2))
            yield Frame(i * 10**8, self.pose(x, forward), self.image(x, forward),
                        source=f'synthetic:{i}')

    def reference_poses(self, spacing: float = 1.0) -> np.ndarray:
        """Poses every ``spacing`` metres along both lanes ``[M, 7]``."""
        xs = np.arange(0.0, self.length, spacing)
        return np.stack([self.pose(x, f) for f in (True, False) for x in xs])
