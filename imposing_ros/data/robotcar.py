"""Oxford RobotCar reader (Maddern et al., IJRR 2017) in its published on-disk layout.

Format facts (robotcar-dataset-sdk: ``python/interpolate_poses.py``, ``transform.py``,
``image.py``, ``camera_model.py``, ``build_pointcloud.py``; README)::

    ROOT/<YYYY-MM-DD-HH-MM-SS>/
      stereo.timestamps         # one line per frame: '<timestamp_us> <chunk>'
      stereo/centre/<timestamp_us>.png   # raw Bayer GBRG, 8-bit, one channel
      gps/ins.csv               # header; timestamp, ins_status, latitude, longitude, altitude,
                                #   northing, easting, down, utm_zone, velocity_north,
                                #   velocity_east, velocity_down, roll, pitch, yaw
      vo/vo.csv                 # header; source_timestamp, destination_timestamp, x, y, z,
                                #   roll, pitch, yaw (relative motion)
    EXTRINSICS/stereo.txt, ins.txt   # SDK 'extrinsics' folder: 'x y z roll pitch yaw'
    MODELS/stereo_narrow_left_distortion_lut.bin  # SDK 'models' (optional, undistortion)

Timestamps are UNIX microseconds. ``x y z roll pitch yaw`` become a transform with
``R = Rz(yaw) Ry(pitch) Rx(roll)`` (SDK ``euler_to_so3``); an extrinsics file gives the sensor's
pose in the vehicle frame (``build_pointcloud`` maps points ``poses @ inv(T_vehicle_ins) @
T_vehicle_sensor``). INS poses are ``(northing, easting, down)`` with that rotation: a
north-east-down frame, the vehicle axes being x forward, y right, z down.

Output, per the package conventions: the map is east-north-up with ``x = easting, y = northing,
z = -down`` (UTM metres: every date shares the frame, so train and test dates share the map), the
camera body frame is x forward, y left, z up. With ``D = diag(1, -1, -1)``::

    T_map_camera = T_enu_ned @ T_ned_ins(t) @ inv(T_vehicle_ins) @ T_vehicle_stereo @ D

``T_ned_ins(t)`` is interpolated at the image stamp (linear position, slerp rotation, as the
SDK's ``interpolate_poses``); images farther than ``max_gap_s`` from the INS samples around them,
or whose PNG is missing (chunks not downloaded), are dropped and counted. With
``pose_source='vo'`` the relative VO motions are chained from the first one (SDK
``interpolate_vo_poses``; the VO frame is the vehicle frame): the map is then the vehicle's FLU
frame at the start of each date, not shared across dates (for single-date use).

Images are demosaiced by 2x2 binning to half resolution (640x480 RGB from 1280x960 GBRG; the
model sees 135x240 anyway), and undistorted with the SDK's look-up table when ``models_dir`` is
given (the centre camera's model is ``stereo_narrow_left``, SDK ``camera_model``), sampled at the
half-resolution pixel centres. The paper (supplementary E.1) uses undistorted centre images.
"""

from __future__ import annotations

import csv
import logging
import math
from pathlib import Path

import numpy as np
from PIL import Image

from imposing_ros.data.frames import IndexedFrames
from imposing_ros.data.rosbag import PoseTrack, ReadSummary
from imposing_ros.data.splits import recordings
from imposing_ros.geometry import matrix_to_pose, pose_to_matrix

LOGGER = logging.getLogger('imposing_ros.data')

T_ENU_NED = np.array([[0.0, 1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0], [0.0, 0.0, -1.0, 0.0],
                      [0.0, 0.0, 0.0, 1.0]])
FRD_FLU = np.diag([1.0, -1.0, -1.0, 1.0])
INS_COLUMNS = ('timestamp', 'northing', 'easting', 'down', 'roll', 'pitch', 'yaw')
VO_COLUMNS = ('source_timestamp', 'destination_timestamp', 'x', 'y', 'z', 'roll', 'pitch', 'yaw')
LUT_NAME = 'stereo_narrow_left_distortion_lut.bin'
DROP_NO_POSE = 'no pose within max_gap_s'
DROP_NO_IMAGE = 'image file missing'


def se3_from_xyzrpy(values) -> np.ndarray:
    """4x4 from ``x y z roll pitch yaw`` with ``R = Rz(yaw) Ry(pitch) Rx(roll)`` (SDK)."""
    x, y, z, roll, pitch, yaw = (float(v) for v in values)
    cr, sr, cp, sp, cy, sy = (math.cos(roll), math.sin(roll), math.cos(pitch), math.sin(pitch),
                              math.cos(yaw), math.sin(yaw))
    rx = np.array([[1, 0, 0], [0, cr, -sr], [0, sr, cr]])
    ry = np.array([[cp, 0, sp], [0, 1, 0], [-sp, 0, cp]])
    rz = np.array([[cy, -sy, 0], [sy, cy, 0], [0, 0, 1]])
    matrix = np.eye(4)
    matrix[:3, :3] = rz @ ry @ rx
    matrix[:3, 3] = (x, y, z)
    return matrix


def read_extrinsic(path: str | Path) -> np.ndarray:
    """An SDK extrinsics file (``x y z roll pitch yaw``) -> ``T_vehicle_sensor`` 4x4."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"RobotCar extrinsics file not found: {path} (the SDK's "
                                f'extrinsics folder; pass extrinsics_dir)')
    try:
        values = [float(v) for v in path.read_text().split()]
    except ValueError as exc:
        raise ValueError(f'{path}: {exc}') from exc
    if len(values) != 6:
        raise ValueError(f'{path}: expected 6 values (x y z roll pitch yaw), got {len(values)}')
    return se3_from_xyzrpy(values)


def _read_csv(path: Path, columns: tuple) -> list[dict]:
    if not path.is_file():
        raise FileNotFoundError(f'RobotCar pose file not found: {path}')
    with open(path, newline='') as f:
        reader = csv.DictReader(f)
        names = [n.strip() for n in reader.fieldnames or []]
        missing = [c for c in columns if c not in names]
        if missing:
            raise ValueError(f'{path}: missing column(s) {", ".join(missing)}')
        reader.fieldnames = names
        rows = list(reader)
    if not rows:
        raise ValueError(f'{path}: no rows')
    return rows


def read_ins(path: str | Path) -> PoseTrack:
    """gps/ins.csv -> track of ``T_enu_ins`` (stamps in ns); see the module docstring."""
    path = Path(path)
    stamps, poses = [], []
    for number, row in enumerate(_read_csv(path, INS_COLUMNS), start=2):
        try:
            stamps.append(int(row['timestamp']) * 1000)
            ned = se3_from_xyzrpy([row[c] for c in INS_COLUMNS[1:]])
        except (TypeError, ValueError) as exc:
            raise ValueError(f'{path}:{number}: {exc}') from exc
        poses.append(matrix_to_pose(T_ENU_NED @ ned))
    return PoseTrack.build(stamps, poses, str(path))


def read_vo(path: str | Path) -> PoseTrack:
    """vo/vo.csv -> track of ``T_start_vehicle`` (FLU axes) chained from the first motion."""
    path = Path(path)
    rows = _read_csv(path, VO_COLUMNS)
    stamps, poses = [], []
    current = np.eye(4)
    for number, row in enumerate(rows, start=2):
        try:
            if not stamps:
                stamps.append(int(row['destination_timestamp']) * 1000)
                poses.append(matrix_to_pose(FRD_FLU @ current @ FRD_FLU))
            current = current @ se3_from_xyzrpy([row[c] for c in VO_COLUMNS[2:]])
            stamps.append(int(row['source_timestamp']) * 1000)
        except (TypeError, ValueError) as exc:
            raise ValueError(f'{path}:{number}: {exc}') from exc
        poses.append(matrix_to_pose(FRD_FLU @ current @ FRD_FLU))
    return PoseTrack.build(stamps, poses, str(path))


def read_image_stamps(folder: Path) -> np.ndarray:
    """stereo.timestamps of a date folder -> stamps ``[N]`` in microseconds."""
    path = folder / 'stereo.timestamps'
    if not path.is_file():
        raise FileNotFoundError(f'RobotCar image timestamps not found: {path}')
    stamps = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if line.strip():
            try:
                stamps.append(int(line.split()[0]))
            except ValueError as exc:
                raise ValueError(f'{path}:{number}: {exc}') from exc
    if not stamps:
        raise ValueError(f'{path}: no timestamps')
    return np.asarray(stamps, dtype=np.int64)


def demosaic_gbrg_half(raw: np.ndarray) -> np.ndarray:
    """Half-resolution RGB of a GBRG Bayer mosaic ``[H, W]`` by 2x2 binning.

    In each 2x2 cell the pattern is ``G B / R G``: R and B are taken as they are, G is the mean
    of the two greens.
    """
    h, w = raw.shape[0] // 2 * 2, raw.shape[1] // 2 * 2
    raw = raw[:h, :w].astype(np.uint16)
    green = (raw[0::2, 0::2] + raw[1::2, 1::2] + 1) // 2
    return np.stack([raw[1::2, 0::2], green, raw[0::2, 1::2]], axis=2).astype(np.uint8)


def read_lut(path: str | Path, full_shape: tuple[int, int]) -> np.ndarray:
    """SDK distortion LUT -> ``[2, H, W]`` (row, col) of the distorted pixel for each pixel."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'RobotCar camera model LUT not found: {path}')
    lut = np.fromfile(path, dtype=np.float64)
    h, w = full_shape
    if lut.size != 2 * h * w:
        raise ValueError(f'{path}: LUT of {lut.size} values does not fit {h}x{w} images')
    xy = lut.reshape(2, h * w)  # (x, y) of the distorted pixel, one column per pixel
    return np.stack([xy[1].reshape(h, w), xy[0].reshape(h, w)])


def undistort_half(image: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """Undistort a half-resolution image with a full-resolution LUT ``[2, H, W]``."""
    from scipy.ndimage import map_coordinates

    # Half-res pixel (i, j) covers full-res pixels 2i..2i+1: sample the LUT at its centre and
    # map the distorted full-res coordinate c back to half-res (c - 0.5) / 2.
    centre = (lut[:, 0::2, 0::2] + lut[:, 1::2, 1::2]) / 2
    coords = (centre - 0.5) / 2
    coords = coords[:, :image.shape[0], :image.shape[1]]
    channels = [map_coordinates(image[:, :, c].astype(np.float64), coords, order=1,
                                mode='nearest') for c in range(3)]
    return np.clip(np.rint(np.stack(channels, axis=2)), 0, 255).astype(np.uint8)


class RobotCar(IndexedFrames):
    """Centre stereo images of RobotCar dates with INS (or VO) poses; see the module docstring."""

    def __init__(self, root: str | Path, dates: list[str], pose_source: str = 'ins',
                 extrinsics_dir: str | Path | None = None, models_dir: str | Path | None = None,
                 max_gap_s: float = 0.1):
        if not dates:
            raise ValueError('RobotCar: no dates given')
        if pose_source not in ('ins', 'vo'):
            raise ValueError(f'RobotCar: pose_source must be ins or vo, got {pose_source!r}')
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f'RobotCar root not found: {self.root}')
        self.pose_source = pose_source
        self.max_gap_ns = int(max_gap_s * 1e9)
        extrinsics = Path(extrinsics_dir) if extrinsics_dir else self.root / 'extrinsics'
        T_vehicle_stereo = read_extrinsic(extrinsics / 'stereo.txt')  # noqa: N806
        if pose_source == 'ins':
            T_vehicle_ins = read_extrinsic(extrinsics / 'ins.txt')  # noqa: N806
            T_source_camera = np.linalg.solve(T_vehicle_ins, T_vehicle_stereo)  # noqa: N806
        else:
            T_source_camera = T_vehicle_stereo  # noqa: N806 (VO frame = vehicle frame)
        # read_ins tracks T_enu_ins with the INS's own FRD axes: right-multiply by D to reach
        # the FLU camera body. read_vo tracks FLU vehicle axes: conjugate the FRD extrinsic.
        self.T_source_camera = (FRD_FLU @ T_source_camera @ FRD_FLU if pose_source == 'vo'
                                else T_source_camera @ FRD_FLU)
        self.models_dir = Path(models_dir) if models_dir else None
        self._lut = None
        self.dates = list(dates)
        self.summary = ReadSummary()
        self.rows: list[tuple[int, Path, np.ndarray]] = []
        for date in self.dates:
            self._add_date(date)
        if self.summary.dropped:
            LOGGER.info('RobotCar %s: %s', ', '.join(self.dates), self.summary)
        if not self.rows:
            raise ValueError(f'RobotCar {self.root} {", ".join(self.dates)}: no image with a '
                             f'pose ({self.summary})')

    def _add_date(self, date: str) -> None:
        folder = self.root / date
        if not folder.is_dir():
            raise FileNotFoundError(f'RobotCar date folder not found: {folder}')
        stamps_us = read_image_stamps(folder)
        track = read_ins(folder / 'gps' / 'ins.csv') if self.pose_source == 'ins' else \
            read_vo(folder / 'vo' / 'vo.csv')
        poses, valid = track.at(stamps_us * 1000, self.max_gap_ns)
        for stamp, pose, ok in zip(stamps_us, poses, valid):
            self.summary.images += 1
            image = folder / 'stereo' / 'centre' / f'{stamp}.png'
            if not ok:
                self.summary.drop(DROP_NO_POSE)
            elif not image.is_file():
                self.summary.drop(DROP_NO_IMAGE)
            else:
                self.summary.kept += 1
                camera = pose_to_matrix(pose) @ self.T_source_camera
                self.rows.append((int(stamp) * 1000, image, matrix_to_pose(camera)))

    @classmethod
    def from_split(cls, root: str | Path, scene: str, part: str, **options) -> RobotCar:
        """Dates of ``robotcar/<scene>`` (loop, full) for ``part`` (splits module)."""
        return cls(root, recordings('robotcar', scene, part), **options)

    def load_image(self, path: Path) -> np.ndarray:
        """Demosaiced (and, with ``models_dir``, undistorted) ``[H, W, 3]`` uint8 RGB."""
        try:
            with Image.open(path) as img:
                raw = np.asarray(img)
        except (OSError, ValueError) as exc:
            raise ValueError(f'cannot read image {path}: {exc}') from exc
        if raw.ndim == 3:  # already colour (a pre-processed copy): keep it
            return np.ascontiguousarray(raw[:, :, :3].astype(np.uint8))
        full_shape = raw.shape
        image = demosaic_gbrg_half(raw)
        if self.models_dir is not None:
            if self._lut is None:
                self._lut = read_lut(self.models_dir / LUT_NAME, full_shape)
            image = undistort_half(image, self._lut)
        return image

    def cache_key(self) -> str:
        """What identifies the content for :meth:`ImageCache.build`."""
        parts = []
        for date in self.dates:
            stat = (self.root / date / 'stereo.timestamps').stat()
            parts.append(f'{(self.root / date).resolve()}:{stat.st_mtime_ns}')
        return (f'robotcar:{self.pose_source}:{self.models_dir}:{len(self.rows)}:'
                f'{np.round(self.T_source_camera, 9).tolist()}:{"|".join(parts)}')
