"""The one record every dataset reader yields: a posed image; the index of file readers."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class Frame:
    """A camera image with its pose.

    ``stamp_ns``: acquisition time, integer nanoseconds. ``pose``: ``(tx, ty, tz, qx, qy, qz, qw)``
    float64, ``T_map_camera`` of the camera *body* frame (x forward, y left, z up; see
    :mod:`imposing_ros.geometry`). ``image``: ``[H, W, 3]`` uint8 RGB. ``source``: where it came
    from (file and topic or path), for error messages.
    """

    stamp_ns: int
    pose: np.ndarray
    image: np.ndarray
    source: str = ''

    def __post_init__(self):
        self.pose = np.asarray(self.pose, dtype=np.float64)
        if self.pose.shape != (7,) or not np.isfinite(self.pose).all():
            raise ValueError(f'{self.source or "frame"}: pose must be 7 finite values '
                             f'(tx, ty, tz, qx, qy, qz, qw), got {self.pose!r}')
        norm = np.linalg.norm(self.pose[3:])
        if norm < 1e-6:
            raise ValueError(f'{self.source or "frame"}: zero quaternion')
        self.pose[3:] /= norm
        if self.image.ndim != 3 or self.image.shape[2] != 3 or self.image.dtype != np.uint8:
            raise ValueError(f'{self.source or "frame"}: image must be [H, W, 3] uint8 RGB, '
                             f'got {self.image.shape} {self.image.dtype}')


class IndexedFrames:
    """Base of the readers that index their frames at construction, decoding images lazily.

    A subclass fills ``self.rows`` with (stamp ns, image file, pose ``(7,)``) and implements
    :meth:`load_image`.
    """

    rows: list[tuple[int, Path, np.ndarray]]

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def poses(self) -> np.ndarray:
        """``[M, 7]`` poses without decoding images."""
        return np.stack([r[2] for r in self.rows])

    @property
    def stamps(self) -> np.ndarray:
        """``[M]`` image stamps (ns)."""
        return np.asarray([r[0] for r in self.rows], dtype=np.int64)

    def load_image(self, path: Path) -> np.ndarray:
        """``[H, W, 3]`` uint8 RGB of one row's file."""
        raise NotImplementedError(f'{type(self).__name__} does not implement load_image')

    def __iter__(self) -> Iterator[Frame]:
        for stamp, path, pose in self.rows:
            yield Frame(stamp, pose, self.load_image(path), source=str(path))
