"""Plain folder dataset: images plus one CSV of poses.

Layout::

    DATASET/
      poses.csv        # header: timestamp,image,x,y,z,qx,qy,qz,qw
      images/...       # any layout; `image` is a path relative to DATASET

``timestamp``: seconds (float) or integer nanoseconds (an integer above 1e12 is read as ns).
``x, y, z`` in metres and ``qx, qy, qz, qw`` (ROS order) give ``T_map_camera`` of the camera body
frame (x forward, y left, z up; :mod:`imposing_ros.geometry`) in a metric map whose z axis points
up (gravity-aligned, REP-103). Poses of an optical frame (z forward, OpenCV / COLMAP) convert
with :func:`imposing_ros.geometry.optical_to_body_poses`; a folder whose poses do not look so
(camera z axis up in under half of the frames) is read with a warning saying why.
"""

from __future__ import annotations

import csv
from decimal import Decimal, InvalidOperation
import logging
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image

from imposing_ros.data.frames import Frame
from imposing_ros.geometry import up_share

LOGGER = logging.getLogger('imposing_ros.data')

COLUMNS = ('timestamp', 'image', 'x', 'y', 'z', 'qx', 'qy', 'qz', 'qw')


def parse_stamp(text: str) -> int:
    """Timestamp text -> integer nanoseconds (see module docstring)."""
    if text.strip().lstrip('-').isdigit() and abs(int(text)) > 10**12:
        return int(text)
    try:  # decimal arithmetic: a float loses the nanoseconds of a Unix time in seconds
        return int((Decimal(text.strip()) * 10**9).to_integral_value())
    except (InvalidOperation, OverflowError) as exc:
        raise ValueError(f'not a timestamp: {text!r}') from exc


def read_pose_csv(path: str | Path) -> list[tuple[int, str, np.ndarray]]:
    """Rows ``(stamp_ns, image_path, pose[7])`` of a poses CSV, validated."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'pose file not found: {path}')
    rows = []
    with open(path, newline='') as f:
        reader = csv.DictReader(f)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f'{path}: missing column(s) {", ".join(missing)}; '
                             f'expected {",".join(COLUMNS)}')
        for line, row in enumerate(reader, start=2):
            try:
                pose = np.array([float(row[c]) for c in COLUMNS[2:]])
                stamp = parse_stamp(row['timestamp'])
            except (TypeError, ValueError) as exc:
                raise ValueError(f'{path}:{line}: {exc}') from exc
            if not np.isfinite(pose).all() or np.linalg.norm(pose[3:]) < 1e-6:
                raise ValueError(f'{path}:{line}: pose must be finite with a non-zero quaternion')
            rows.append((stamp, row['image'], pose))
    if not rows:
        raise ValueError(f'{path}: no poses')
    return rows


def load_rgb(path: str | Path) -> np.ndarray:
    """Decode an image file into ``[H, W, 3]`` uint8 RGB."""
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert('RGB'))
    except (OSError, ValueError) as exc:
        raise ValueError(f'cannot read image {path}: {exc}') from exc


class PlainFolder:
    """Reader of the plain layout; iterating yields :class:`Frame` objects in CSV order."""

    def __init__(self, root: str | Path, csv_name: str = 'poses.csv'):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f'dataset folder not found: {self.root}')
        self.rows = read_pose_csv(self.root / csv_name)
        share = up_share(self.poses)
        if share < 0.5:
            LOGGER.warning('%s: the camera z axis points up in %.0f %% of the poses; the plain '
                           'layout wants camera body poses (x forward, z up) in a z-up map. '
                           'Optical-frame poses (z forward) convert with '
                           'imposing_ros.geometry.optical_to_body_poses; a y-down world must '
                           'be rotated to z up', self.root, 100 * share)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def poses(self) -> np.ndarray:
        """``[M, 7]`` poses without decoding images."""
        return np.stack([r[2] for r in self.rows])

    def __iter__(self) -> Iterator[Frame]:
        for stamp, name, pose in self.rows:
            path = self.root / name
            yield Frame(stamp, pose, load_rgb(path), source=str(path))

    def cache_key(self) -> str:
        """What identifies the content for :meth:`ImageCache.build`."""
        stat = (self.root / 'poses.csv').stat()
        return f'plain:{self.root.resolve()}:{stat.st_mtime_ns}:{len(self.rows)}'


def write_plain_folder(root: str | Path, frames, image_format: str = 'png') -> Path:
    """Write frames in the plain layout (used by tests and tools that export datasets)."""
    root = Path(root)
    (root / 'images').mkdir(parents=True, exist_ok=True)
    lines = [','.join(COLUMNS)]
    for i, frame in enumerate(frames):
        name = f'images/{i:06d}.{image_format}'
        Image.fromarray(frame.image).save(root / name)
        values = ','.join(f'{v:.9f}' for v in frame.pose)
        lines.append(f'{frame.stamp_ns},{name},{values}')
    (root / 'poses.csv').write_text('\n'.join(lines) + '\n')
    return root
