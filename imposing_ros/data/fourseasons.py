"""4Seasons reader (Wenzel et al., GCPR 2020) in its published on-disk layout.

Format facts (4seasons-dataset.com/documentation and the dataset's GitHub README; the pose chain
as in the dataset's Python tools, libartipy ``TransformationFrame``/``GPSPose``)::

    ROOT/recording_YYYY-MM-DD_HH-MM-SS/      # also found one level deeper: ROOT/*/recording_*
      GNSSPoses.txt          # '#' header; CSV per keyframe: timestamp_ns, tx, ty, tz, qx, qy,
                             #   qz, qw, scale, fusion_quality, v3 (last two unused here)
      Transformations.txt    # '# name: ...' lines, each followed by a CSV line
                             #   tx, ty, tz, qx, qy, qz, qw: transform_S_AS, TS_cam_imu,
                             #   transform_w_gpsw, transform_gps_imu, transform_e_gpsw;
                             #   then '# GNSS scale' and one number
      undistorted_images/cam0/<timestamp_ns>.png   # left camera, 8-bit grayscale
      (distorted_images/, KeyFrameData/, imu.txt, result.txt, times.txt, septentrio.nmea)

A GNSSPoses line is ``T_w_cam``, the cam0 *optical* frame (z forward, x right, y down) in the
visual world ``w`` with VIO scale. The scene ENU frame ``gpsw`` follows the tools' chain::

    p_gpsw = inv(transform_w_gpsw) @ (scale * (transform_S_AS @ p_w)),   R likewise unscaled

with ``scale`` the line's own scale column (the ``GNSS scale`` of Transformations.txt when the
column is absent). Each recording has its own ``gpsw`` origin, so recordings are put into one
map through ECEF: ``T_map = inv(T_e_gpsw[reference]) @ T_e_gpsw[recording]``. The reference is
the first training recording of the scene's split (so train and test share the map), or the
first recording given. The camera body frame (x forward) is ``T_map_optical @
inv(T_camera_optical())``.

The paper (supplementary E.3) uses the keyframes of the left camera only: one frame per
GNSSPoses line whose image exists. Lines with non-finite values and keyframes without an image
file are dropped and counted in :attr:`FourSeasons.summary`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from imposing_ros.data.frames import IndexedFrames
from imposing_ros.data.plain import load_rgb
from imposing_ros.data.rosbag import ReadSummary
from imposing_ros.data.splits import recordings, SPLITS
from imposing_ros.geometry import matrix_to_pose, pose_to_matrix, T_camera_optical

LOGGER = logging.getLogger('imposing_ros.data')

DROP_NO_IMAGE = 'keyframe image missing'
DROP_BAD_POSE = 'non-finite pose'


def find_recording(root: str | Path, recording: str) -> Path:
    """Folder of ``recording`` (id with or without ``recording_``) under ``root``."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f'4Seasons root not found: {root}')
    name = recording if recording.startswith('recording_') else f'recording_{recording}'
    for candidate in [root / name, *sorted(root.glob(f'*/{name}'))]:
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f'4Seasons recording {name} not found under {root} (looked for '
                            f'{root / name} and {root}/*/{name})')


def read_transformations(path: str | Path) -> dict:
    """Transformations.txt -> ``{name: 4x4}`` plus ``'GNSS scale'`` (float) when present."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'4Seasons transformations not found: {path}')
    result, name = {}, None
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        line = line.strip()
        if not line:
            continue
        if line.startswith('#'):
            name = line[1:].split(':')[0].strip()
            continue
        if name is None:
            raise ValueError(f'{path}:{number}: values before any "# name" line')
        try:
            values = [float(v) for v in line.split(',')]
        except ValueError as exc:
            raise ValueError(f'{path}:{number}: {exc}') from exc
        if name == 'GNSS scale':
            result[name] = values[0]
        elif len(values) == 7:
            result[name] = pose_to_matrix(values)
        else:
            raise ValueError(f'{path}:{number}: {name} needs 7 values (tx, ty, tz, qx, qy, qz, '
                             f'qw), got {len(values)}')
        name = None
    missing = [n for n in ('transform_S_AS', 'transform_w_gpsw', 'transform_e_gpsw')
               if n not in result]
    if missing:
        raise ValueError(f'{path}: missing {", ".join(missing)}')
    return result


def read_gnss_poses(path: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """GNSSPoses.txt -> (stamps ``[M]`` ns, ``T_w_cam`` ``[M, 7]``, scale ``[M]`` or NaN)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'4Seasons keyframe poses not found: {path}')
    stamps, poses, scales = [], [], []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith('#'):
            continue
        fields = line.split(',')
        try:
            stamps.append(int(fields[0]))
            values = [float(v) for v in fields[1:]]
        except ValueError as exc:
            raise ValueError(f'{path}:{number}: {exc}') from exc
        if len(values) < 7:
            raise ValueError(f'{path}:{number}: expected timestamp, tx, ty, tz, qx, qy, qz, qw '
                             f'[, scale, ...], got {len(fields)} fields')
        poses.append(values[:7])
        scales.append(values[7] if len(values) > 7 else np.nan)
    if not stamps:
        raise ValueError(f'{path}: no poses')
    return (np.asarray(stamps, dtype=np.int64), np.asarray(poses, dtype=np.float64),
            np.asarray(scales, dtype=np.float64))


def gpsw_from_world(transforms: dict, scale: float) -> np.ndarray:
    """4x4 similarity ``p_gpsw = inv(T_w_gpsw) @ (scale * (T_S_AS @ p_w))`` (module doc)."""
    scaling = np.diag([scale, scale, scale, 1.0])
    return np.linalg.inv(transforms['transform_w_gpsw']) @ scaling @ transforms['transform_S_AS']


def camera_poses(gnss_poses: np.ndarray, scales: np.ndarray, transforms: dict,
                 T_map_gpsw: np.ndarray) -> np.ndarray:  # noqa: N803 (transform name)
    """Body-frame ``T_map_camera`` ``[M, 7]`` of GNSSPoses rows (module docstring chain)."""
    default = transforms.get('GNSS scale', 1.0)
    body = np.linalg.inv(T_camera_optical())
    out = []
    for pose, scale in zip(gnss_poses, scales):
        s = scale if np.isfinite(scale) else default
        sim = T_map_gpsw @ gpsw_from_world(transforms, s)
        t_world_cam = pose_to_matrix(pose)
        matrix = np.eye(4)
        matrix[:3, 3] = sim[:3, :3] @ t_world_cam[:3, 3] + sim[:3, 3]
        rotation = sim[:3, :3] / s  # the similarity's rotation, without its scale
        matrix[:3, :3] = rotation @ t_world_cam[:3, :3]
        out.append(matrix_to_pose(matrix @ body))
    return np.stack(out) if out else np.zeros((0, 7))


class FourSeasons(IndexedFrames):
    """Keyframes (left camera) of 4Seasons recordings in one map; see the module docstring."""

    def __init__(self, root: str | Path, recording_ids: list[str],
                 reference: str | None = None, camera: str = 'cam0'):
        if not recording_ids:
            raise ValueError('FourSeasons: no recordings given')
        self.root = Path(root)
        self.camera = camera
        self.folders = [find_recording(self.root, r) for r in recording_ids]
        reference_folder = find_recording(self.root, reference) if reference else \
            self.folders[0]
        self.reference = reference_folder.name
        T_e_ref = read_transformations(  # noqa: N806 (transform name)
            reference_folder / 'Transformations.txt')['transform_e_gpsw']
        self.summary = ReadSummary()
        self.rows: list[tuple[int, Path, np.ndarray]] = []
        for folder in self.folders:
            transforms = read_transformations(folder / 'Transformations.txt')
            stamps, poses, scales = read_gnss_poses(folder / 'GNSSPoses.txt')
            T_map_gpsw = np.linalg.solve(T_e_ref, transforms['transform_e_gpsw'])  # noqa: N806
            finite = np.isfinite(poses).all(axis=1) & \
                (np.linalg.norm(np.nan_to_num(poses[:, 3:]), axis=1) > 1e-6)
            camera_all = np.full_like(poses, np.nan)
            camera_all[finite] = camera_poses(poses[finite], scales[finite], transforms,
                                              T_map_gpsw)
            for stamp, pose, ok in zip(stamps, camera_all, finite):
                self.summary.images += 1
                image = folder / 'undistorted_images' / camera / f'{stamp}.png'
                if not ok:
                    self.summary.drop(DROP_BAD_POSE)
                elif not image.is_file():
                    self.summary.drop(DROP_NO_IMAGE)
                else:
                    self.summary.kept += 1
                    self.rows.append((int(stamp), image, pose))
        if self.summary.dropped:
            LOGGER.info('4Seasons %s: %s', ', '.join(f.name for f in self.folders), self.summary)
        if not self.rows:
            raise ValueError(f'4Seasons {", ".join(str(f) for f in self.folders)}: no keyframe '
                             f'with both a pose and an image ({self.summary})')

    @classmethod
    def from_split(cls, root: str | Path, scene: str, part: str, **options) -> FourSeasons:
        """Recordings of ``4seasons/<scene>`` for ``part`` (splits module), map of its train[0]."""
        ids = recordings('4seasons', scene, part)
        options.setdefault('reference', SPLITS[f'4seasons/{scene}']['train'][0])
        return cls(root, ids, **options)

    def load_image(self, path: Path) -> np.ndarray:
        """The keyframe image, RGB."""
        return load_rgb(path)

    def cache_key(self) -> str:
        """What identifies the content for :meth:`ImageCache.build`."""
        parts = []
        for folder in self.folders:
            stat = (folder / 'GNSSPoses.txt').stat()
            parts.append(f'{folder.resolve()}:{stat.st_mtime_ns}:{stat.st_size}')
        return f'4seasons:{self.reference}:{self.camera}:{len(self.rows)}:{"|".join(parts)}'
