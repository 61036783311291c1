"""4Seasons and RobotCar readers on tiny fixture trees in their published layouts; splits; specs.

Expected poses are computed here from the documented formats with explicit formulas (not by
calling the readers' helpers), so a wrong frame, order or sign in a reader fails a test.
"""

import dataclasses
import math
from pathlib import Path
import re

import numpy as np
from PIL import Image
import pytest
from scipy.spatial.transform import Rotation

from imposing_ros.data.datasets import open_dataset
from imposing_ros.data.fourseasons import FourSeasons, read_transformations
from imposing_ros.data.frames import Frame
from imposing_ros.data.plain import PlainFolder, write_plain_folder
from imposing_ros.data.robotcar import demosaic_gbrg_half, RobotCar
from imposing_ros.data.splits import recordings, SPLITS

# --- 4Seasons ---------------------------------------------------------------------------------

T0 = 1_602_074_877_621_449_728  # a 4Seasons-like keyframe timestamp (ns)


def quat_line(t, rotation):
    q = rotation.as_quat()
    return ','.join(f'{v:.12f}' for v in [*t, *q])


def write_recording(folder, keyframes, transforms, gnss_scale=1.0, images=True, extra_rows=()):
    """A 4Seasons recording: keyframes = [(stamp, t_w_cam, Rotation, scale)]."""
    (folder / 'undistorted_images' / 'cam0').mkdir(parents=True)
    (folder / 'undistorted_images' / 'cam1').mkdir(parents=True)
    (folder / 'KeyFrameData').mkdir()
    lines = ['# timestamp, translation (x y z), rotation (x y z w), scale, fusion_quality, v3']
    for k, (stamp, t, rot, scale) in enumerate(keyframes):
        lines.append(f'{stamp},{quat_line(t, rot)},{scale},2,1')
        if images:
            Image.fromarray(gray_image(k)).save(
                folder / 'undistorted_images' / 'cam0' / f'{stamp}.png')
    lines.extend(extra_rows)
    (folder / 'GNSSPoses.txt').write_text('\n'.join(lines) + '\n')
    text = []
    for name in ('transform_S_AS', 'TS_cam_imu', 'transform_w_gpsw', 'transform_gps_imu',
                 'transform_e_gpsw'):
        t, rot = transforms.get(name, ([0, 0, 0], Rotation.identity()))
        text += [f'# {name}: translation vector, rotation quaternion', quat_line(t, rot), '']
    text += ['# GNSS scale', f'{gnss_scale}']
    (folder / 'Transformations.txt').write_text('\n'.join(text) + '\n')
    (folder / 'times.txt').write_text('')
    return folder


def gray_image(k):
    return np.random.default_rng(k).integers(0, 255, (6, 10), dtype=np.uint8)


def expected_map_pose(t_w, r_w, scale, tr, ref_e):
    """Explicit chain of the 4Seasons tools, then ECEF -> reference gpsw, then optical -> body."""
    t_sas, r_sas = tr.get('transform_S_AS', ([0, 0, 0], Rotation.identity()))
    t_wg, r_wg = tr['transform_w_gpsw']
    t_e, r_e = tr['transform_e_gpsw']
    t_eref, r_eref = ref_e
    p_w = scale * (r_sas.apply(t_w) + np.asarray(t_sas))
    p_gpsw = r_wg.inv().apply(p_w - np.asarray(t_wg))
    r_gpsw = r_wg.inv() * r_sas * r_w
    p_map = r_eref.inv().apply(r_e.apply(p_gpsw) + np.asarray(t_e) - np.asarray(t_eref))
    r_map_optical = (r_eref.inv() * r_e * r_gpsw).as_matrix()
    return p_map, r_map_optical


def body_axes_match_optical(pose, r_map_optical):
    """Body x (forward) = optical z, body y (left) = -optical x, body z (up) = -optical y."""
    r_body = Rotation.from_quat(pose[3:]).as_matrix()
    return (np.allclose(r_body[:, 0], r_map_optical[:, 2], atol=1e-9)
            and np.allclose(r_body[:, 1], -r_map_optical[:, 0], atol=1e-9)
            and np.allclose(r_body[:, 2], -r_map_optical[:, 1], atol=1e-9))


def test_fourseasons_simple_scale_and_ecef_offset(tmp_path):
    ref_e = ([4172814.29, 857504.0, 4731704.6], Rotation.from_quat([0.2255, 0.2765, 0.7240,
                                                                    0.5904]))
    tr_a = {'transform_w_gpsw': ([0, 0, 0], Rotation.identity()), 'transform_e_gpsw': ref_e}
    # Recording b: its gpsw origin sits 10 m along the reference gpsw x axis.
    shift = ref_e[1].apply([10.0, 0.0, 0.0])
    tr_b = {'transform_w_gpsw': ([0, 0, 0], Rotation.identity()),
            'transform_e_gpsw': (np.asarray(ref_e[0]) + shift, ref_e[1])}
    write_recording(tmp_path / 'recording_2020-01-01_00-00-00',
                    [(T0, [1.0, 2.0, 3.0], Rotation.identity(), 2.0)], tr_a)
    write_recording(tmp_path / 'recording_2020-01-02_00-00-00',
                    [(T0 + 1, [1.0, 2.0, 3.0], Rotation.identity(), 2.0)], tr_b)
    reader = FourSeasons(tmp_path, ['2020-01-01_00-00-00', '2020-01-02_00-00-00'])
    frames = list(reader)
    assert [f.stamp_ns for f in frames] == [T0, T0 + 1]
    assert np.allclose(frames[0].pose[:3], [2.0, 4.0, 6.0], atol=1e-6)  # scale 2
    assert np.allclose(frames[1].pose[:3], [12.0, 4.0, 6.0], atol=1e-6)  # + 10 m in x
    # Identity optical rotation in an ENU map: the camera looks up (+z) with its image x east.
    r_body = Rotation.from_quat(frames[0].pose[3:]).as_matrix()
    assert np.allclose(r_body[:, 0], [0, 0, 1], atol=1e-9)
    assert np.allclose(r_body[:, 1], [-1, 0, 0], atol=1e-9)
    assert np.array_equal(frames[0].image, np.repeat(gray_image(0)[:, :, None], 3, axis=2))
    assert np.allclose(reader.poses, np.stack([f.pose for f in frames]))
    assert len(reader) == 2


def test_fourseasons_full_chain_matches_explicit_formula(tmp_path):
    rng = np.random.default_rng(3)
    ref_e = ([4172814.29, 857504.0, 4731704.6], Rotation.from_euler('xyz', [0.3, -0.2, 1.1]))
    transforms = {
        'transform_S_AS': ([0.0, 0.0, 0.0], Rotation.from_quat([0.00059, -0.005845, 0.005162,
                                                               0.999969])),
        'transform_w_gpsw': ([0.32, -0.03, 0.16], Rotation.from_euler('z', 0.25)),
        'transform_e_gpsw': ([4172900.0, 857400.0, 4731600.0],
                             Rotation.from_euler('xyz', [0.31, -0.21, 1.12])),
        'TS_cam_imu': ([0.175, 0.004, -0.058], Rotation.from_quat([-0.0072, 0.7086, -0.7055,
                                                                  -0.0024])),
    }
    keyframes = [(T0 + k * 10**8, rng.normal(0, 20, 3), Rotation.random(random_state=k),
                  0.97 + 0.01 * k) for k in range(3)]
    write_recording(tmp_path / 'recording_2020-01-01_00-00-00', [], {
        'transform_w_gpsw': ([0, 0, 0], Rotation.identity()), 'transform_e_gpsw': ref_e})
    write_recording(tmp_path / 'recording_2020-01-02_00-00-00', keyframes, transforms)
    reader = FourSeasons(tmp_path, ['2020-01-02_00-00-00'], reference='2020-01-01_00-00-00')
    frames = list(reader)
    assert len(frames) == 3
    for frame, (_, t_w, r_w, scale) in zip(frames, keyframes):
        p_map, r_map_optical = expected_map_pose(t_w, r_w, scale, transforms, ref_e)
        assert np.allclose(frame.pose[:3], p_map, atol=1e-5)
        assert body_axes_match_optical(frame.pose, r_map_optical)


def test_fourseasons_missing_scale_column_uses_gnss_scale(tmp_path):
    folder = write_recording(tmp_path / 'recording_2020-01-01_00-00-00', [], {
        'transform_w_gpsw': ([0, 0, 0], Rotation.identity()),
        'transform_e_gpsw': ([1e6, 0, 0], Rotation.identity())}, gnss_scale=0.5)
    Image.fromarray(gray_image(0)).save(folder / 'undistorted_images' / 'cam0' / f'{T0}.png')
    with open(folder / 'GNSSPoses.txt', 'a') as f:
        f.write(f'{T0},4.0,0.0,0.0,0,0,0,1\n')
    (frame,) = list(FourSeasons(tmp_path, ['2020-01-01_00-00-00']))
    assert np.allclose(frame.pose[:3], [2.0, 0.0, 0.0], atol=1e-9)


def test_fourseasons_drops_are_counted(tmp_path):
    tr = {'transform_w_gpsw': ([0, 0, 0], Rotation.identity()),
          'transform_e_gpsw': ([1e6, 0, 0], Rotation.identity())}
    folder = write_recording(
        tmp_path / 'recording_2020-01-01_00-00-00',
        [(T0 + k, [k, 0, 0], Rotation.identity(), 1.0) for k in range(3)], tr,
        extra_rows=[f'{T0 + 7},nan,nan,nan,nan,nan,nan,nan,nan,0,0'])
    (folder / 'undistorted_images' / 'cam0' / f'{T0 + 1}.png').unlink()
    reader = FourSeasons(tmp_path, ['2020-01-01_00-00-00'])
    assert [f.stamp_ns for f in reader] == [T0, T0 + 2]
    assert reader.summary.images == 4 and reader.summary.kept == 2
    assert reader.summary.dropped == {'keyframe image missing': 1, 'non-finite pose': 1}


def test_fourseasons_bad_input_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match='recording_2020-01-01_00-00-00 not found'):
        FourSeasons(tmp_path, ['2020-01-01_00-00-00'])
    folder = write_recording(tmp_path / 'recording_2020-01-01_00-00-00',
                             [(T0, [0, 0, 0], Rotation.identity(), 1.0)],
                             {'transform_w_gpsw': ([0, 0, 0], Rotation.identity()),
                              'transform_e_gpsw': ([1e6, 0, 0], Rotation.identity())})
    (folder / 'GNSSPoses.txt').write_text('# header\n123,1,2,3\n')
    with pytest.raises(ValueError, match=r'GNSSPoses.txt:2: expected timestamp'):
        FourSeasons(tmp_path, ['2020-01-01_00-00-00'])
    (folder / 'GNSSPoses.txt').write_text('# header\n')
    with pytest.raises(ValueError, match=r'GNSSPoses.txt: no poses'):
        FourSeasons(tmp_path, ['2020-01-01_00-00-00'])
    (folder / 'Transformations.txt').write_text('# transform_S_AS: t, q\n0,0,0,0,0,0,1\n')
    with pytest.raises(ValueError, match=r'Transformations.txt: missing transform_w_gpsw'):
        read_transformations(folder / 'Transformations.txt')
    (folder / 'Transformations.txt').unlink()
    with pytest.raises(FileNotFoundError, match='Transformations.txt'):
        FourSeasons(tmp_path, ['2020-01-01_00-00-00'])


def build_scene(root, scene):
    """Every recording of a 4Seasons scene split, one keyframe each, recording k at x = k."""
    split = SPLITS[f'4seasons/{scene}']
    ids = split['train'] + split['test']
    for k, rec in enumerate(ids):
        # The reference gpsw (train[0]) at ECEF (1e6, 0, 0); recording k 100*k m further.
        tr = {'transform_w_gpsw': ([0, 0, 0], Rotation.identity()),
              'transform_e_gpsw': ([1e6 + 100.0 * k, 0, 0], Rotation.identity())}
        parent = root / scene if k % 2 else root  # both documented depths
        write_recording(parent / f'recording_{rec}', [(T0 + k, [k, 0, 0], Rotation.identity(),
                                                         1.0)], tr)
    return ids


def test_fourseasons_split_selection_and_spec(tmp_path):
    ids = build_scene(tmp_path, 'business_campus')
    train = open_dataset(f'4seasons:{tmp_path}:business_campus:train')
    test = open_dataset(f'4seasons:{tmp_path}:business_campus:test')
    everything = open_dataset(f'4seasons:{tmp_path}:business_campus:all')
    assert isinstance(train, FourSeasons)
    assert [f.name for f in train.folders] == [f'recording_{r}' for r in ids[:2]]
    assert [f.name for f in test.folders] == [f'recording_{ids[2]}']
    assert len(everything) == 3
    # One map: recording k sits at 101 * k (100 k of ECEF offset + k of pose), in every part.
    assert np.allclose(train.poses[:, 0], [0.0, 101.0], atol=1e-6)
    assert np.allclose(test.poses[:, 0], [202.0], atol=1e-6)
    assert train.reference == test.reference == f'recording_{ids[0]}'
    assert train.cache_key() != test.cache_key()
    assert open_dataset(f'4seasons:{tmp_path}:business_campus:test?reference={ids[2]}'
                        ).poses[0, 0] == pytest.approx(2.0)
    with pytest.raises(ValueError, match="unknown 4seasons scene 'nope'"):
        open_dataset(f'4seasons:{tmp_path}:nope:train')
    with pytest.raises(ValueError, match="unknown split part 'val'"):
        open_dataset(f'4seasons:{tmp_path}:business_campus:val')
    with pytest.raises(ValueError, match='expected 4seasons:ROOT:SCENE:PART'):
        open_dataset(f'4seasons:{tmp_path}')
    with pytest.raises(ValueError, match='unknown 4seasons option'):
        open_dataset(f'4seasons:{tmp_path}:business_campus:train?colour=1')
    with pytest.raises(FileNotFoundError, match='4Seasons root not found'):
        open_dataset(f'4seasons:{tmp_path / "nope"}:business_campus:train')


# --- RobotCar ---------------------------------------------------------------------------------

US0 = 1_403_774_000_000_000  # microseconds


def bayer_from_rgb(rgb):
    """GBRG mosaic (G B / R G per 2x2 cell) whose 2x2 binning is exactly ``rgb``."""
    h, w, _ = rgb.shape
    raw = np.zeros((2 * h, 2 * w), dtype=np.uint8)
    raw[0::2, 0::2] = rgb[:, :, 1]
    raw[1::2, 1::2] = rgb[:, :, 1]
    raw[0::2, 1::2] = rgb[:, :, 2]
    raw[1::2, 0::2] = rgb[:, :, 0]
    return raw


def colour_image(k):
    return np.random.default_rng(100 + k).integers(0, 255, (4, 6, 3), dtype=np.uint8)


def write_date(root, date, ins_rows, image_us, missing=(), vo_rows=None):
    """ins_rows: (t_us, northing, easting, down, roll, pitch, yaw)."""
    folder = root / date
    (folder / 'stereo' / 'centre').mkdir(parents=True)
    (folder / 'gps').mkdir()
    (folder / 'stereo.timestamps').write_text(''.join(f'{t} 1\n' for t in image_us))
    for k, t in enumerate(image_us):
        if t not in missing:
            Image.fromarray(bayer_from_rgb(colour_image(k))).save(
                folder / 'stereo' / 'centre' / f'{t}.png')
    lines = ['timestamp,ins_status,latitude,longitude,altitude,northing,easting,down,utm_zone,'
             'velocity_north,velocity_east,velocity_down,roll,pitch,yaw']
    for t, n, e, d, roll, pitch, yaw in ins_rows:
        lines.append(f'{t},INS_SOLUTION_GOOD,51.76,-1.26,110.0,{n},{e},{d},30U,0,0,0,'
                     f'{roll},{pitch},{yaw}')
    (folder / 'gps' / 'ins.csv').write_text('\n'.join(lines) + '\n')
    if vo_rows is not None:
        (folder / 'vo').mkdir()
        vo = ['source_timestamp,destination_timestamp,x,y,z,roll,pitch,yaw']
        vo += [','.join(str(v) for v in row) for row in vo_rows]
        (folder / 'vo' / 'vo.csv').write_text('\n'.join(vo) + '\n')
    return folder


def write_extrinsics(root, ins='-1.0 0.5 -1.2 0 0 0', stereo='0 0 0 0 0 0'):
    (root / 'extrinsics').mkdir(exist_ok=True)
    (root / 'extrinsics' / 'ins.txt').write_text(ins + '\n')
    (root / 'extrinsics' / 'stereo.txt').write_text(stereo + '\n')


def test_robotcar_ins_lever_arm_and_axes_hand_computed(tmp_path):
    # Heading north (yaw 0) at 10 m/s; INS 1 m behind, 0.5 m right, 1.2 m above the camera.
    rows = [(US0 + k * 20_000, 100.0 + 0.2 * k, 50.0, -2.0, 0.0, 0.0, 0.0) for k in range(6)]
    write_date(tmp_path, '2014-06-26-09-24-58', rows, [US0 + 30_000])
    write_extrinsics(tmp_path)
    reader = RobotCar(tmp_path, ['2014-06-26-09-24-58'])
    (frame,) = list(reader)
    assert frame.stamp_ns == (US0 + 30_000) * 1000
    # Camera NED = INS NED + (1 north, -0.5 east, +1.2 down); INS northing at 30 ms = 100.3.
    assert np.allclose(frame.pose[:3], [49.5, 101.3, 0.8], atol=1e-9)
    r_body = Rotation.from_quat(frame.pose[3:]).as_matrix()
    assert np.allclose(r_body[:, 0], [0, 1, 0], atol=1e-9)  # forward = north
    assert np.allclose(r_body[:, 1], [-1, 0, 0], atol=1e-9)  # left = west
    assert np.allclose(r_body[:, 2], [0, 0, 1], atol=1e-9)  # up
    assert np.array_equal(frame.image, colour_image(0))


def test_robotcar_slerp_of_heading_and_drops(tmp_path):
    # Yaw 0 -> 0.2 rad between two INS samples (turning from north towards east).
    rows = [(US0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0), (US0 + 50_000, 0.0, 0.0, 0.0, 0.0, 0.0, 0.2),
            (US0 + 100_000, 0.0, 0.0, 0.0, 0.0, 0.0, 0.2), (US0 + 500_000, 0, 0, 0, 0, 0, 0.2)]
    images = [US0 + 25_000, US0 + 75_000, US0 + 300_000, US0 + 900_000, US0 + 90_000]
    write_date(tmp_path, '2014-06-23-15-41-25', rows, images, missing={US0 + 90_000})
    write_extrinsics(tmp_path, ins='0 0 0 0 0 0')
    reader = RobotCar(tmp_path, ['2014-06-23-15-41-25'], max_gap_s=0.1)
    frames = list(reader)
    assert [f.stamp_ns // 1000 for f in frames] == [US0 + 25_000, US0 + 75_000]
    forward = Rotation.from_quat(frames[0].pose[3:]).as_matrix()[:, 0]
    assert np.allclose(forward, [math.sin(0.1), math.cos(0.1), 0.0], atol=1e-9)
    assert reader.summary.images == 5 and reader.summary.kept == 2
    assert reader.summary.dropped == {'no pose within max_gap_s': 2, 'image file missing': 1}


def test_robotcar_roll_pitch_yaw_order(tmp_path):
    roll, pitch, yaw = 0.1, -0.05, 1.0
    rows = [(US0, 10.0, 20.0, -3.0, roll, pitch, yaw), (US0 + 20_000, 10.0, 20.0, -3.0, roll,
                                                        pitch, yaw)]
    write_date(tmp_path, '2014-06-23-15-36-04', rows, [US0 + 10_000])
    write_extrinsics(tmp_path, ins='0 0 0 0 0 0')
    (frame,) = list(RobotCar(tmp_path, ['2014-06-23-15-36-04']))
    r_ned_frd = Rotation.from_euler('ZYX', [yaw, pitch, roll]).as_matrix()  # Rz Ry Rx
    enu_ned = np.array([[0, 1, 0], [1, 0, 0], [0, 0, -1]])
    expected = enu_ned @ r_ned_frd @ np.diag([1, -1, -1])
    assert np.allclose(Rotation.from_quat(frame.pose[3:]).as_matrix(), expected, atol=1e-9)
    assert np.allclose(frame.pose[:3], [20.0, 10.0, 3.0], atol=1e-9)


def test_robotcar_vo_chain(tmp_path):
    rows = [(US0, 0, 0, 0, 0, 0, 0), (US0 + 10**6, 0, 0, 0, 0, 0, 0)]
    vo = [(US0 + 100_000, US0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0),
          (US0 + 200_000, US0 + 100_000, 1.0, 0.0, 0.0, 0.0, 0.0, 0.5)]
    write_date(tmp_path, '2014-06-26-08-53-56', rows, [US0 + 150_000, US0 + 200_000],
               vo_rows=vo)
    write_extrinsics(tmp_path)
    frames = list(RobotCar(tmp_path, ['2014-06-26-08-53-56'], pose_source='vo'))
    # Halfway along the second motion: 1.5 m forward (x), FRD yaw 0.25 = FLU yaw -0.25.
    assert np.allclose(frames[0].pose[:3], [1.5, 0.0, 0.0], atol=1e-9)
    assert Rotation.from_quat(frames[0].pose[3:]).as_euler('xyz')[2] == pytest.approx(-0.25)
    assert np.allclose(frames[1].pose[:3], [2.0, 0.0, 0.0], atol=1e-9)


def test_robotcar_demosaic_and_lut_undistortion(tmp_path):
    rgb = colour_image(0)
    assert np.array_equal(demosaic_gbrg_half(bayer_from_rgb(rgb)), rgb)
    rows = [(US0, 0, 0, 0, 0, 0, 0), (US0 + 20_000, 0, 0, 0, 0, 0, 0)]
    write_date(tmp_path, '2014-12-02-15-30-08', rows, [US0 + 10_000])
    write_extrinsics(tmp_path)
    models = tmp_path / 'models'
    models.mkdir()
    rows_full, cols_full = np.mgrid[0:8, 0:12].astype(np.float64)
    # SDK layout: 2 x N doubles, the distorted x (column) then y (row) of each pixel.
    shifted = np.stack([(cols_full + 2).ravel(), rows_full.ravel()])
    shifted.tofile(models / 'stereo_narrow_left_distortion_lut.bin')
    (frame,) = list(RobotCar(tmp_path, ['2014-12-02-15-30-08'], models_dir=models))
    # A 2-pixel full-resolution shift is one half-resolution column; the edge repeats.
    assert np.array_equal(frame.image[:, :-1], rgb[:, 1:])
    assert np.array_equal(frame.image[:, -1], rgb[:, -1])
    np.zeros(10).tofile(models / 'stereo_narrow_left_distortion_lut.bin')
    with pytest.raises(ValueError, match='does not fit 8x12'):
        list(RobotCar(tmp_path, ['2014-12-02-15-30-08'], models_dir=models))


def test_robotcar_split_spec_and_bad_input(tmp_path):
    dates = SPLITS['robotcar/full']['train'] + SPLITS['robotcar/full']['test']
    for k, date in enumerate(dates):
        write_date(tmp_path, date, [(US0, 1000.0 * k, 0, 0, 0, 0, 0),
                                    (US0 + 20_000, 1000.0 * k, 0, 0, 0, 0, 0)], [US0 + 10_000])
    with pytest.raises(FileNotFoundError, match=r'extrinsics.stereo.txt'):
        open_dataset(f'robotcar:{tmp_path}:full:train')
    write_extrinsics(tmp_path, ins='0 0 0 0 0 0')
    train = open_dataset(f'robotcar:{tmp_path}:full:train')
    test = open_dataset(f'robotcar:{tmp_path}:full:test?max_gap=0.05')
    assert isinstance(train, RobotCar) and train.dates == dates[:2] and test.dates == dates[2:]
    assert np.allclose(train.poses[:, 1], [0.0, 1000.0]) and np.allclose(test.poses[:, 1], 2000)
    assert test.max_gap_ns == 50_000_000
    with pytest.raises(ValueError, match='pose_source must be ins or vo'):
        open_dataset(f'robotcar:{tmp_path}:full:train?poses=gps')
    with pytest.raises(FileNotFoundError, match=r'vo.vo.csv'):
        open_dataset(f'robotcar:{tmp_path}:full:train', pose_source='vo')
    with pytest.raises(FileNotFoundError, match='2014-06-26-09-24-58'):
        open_dataset(f'robotcar:{tmp_path}:loop:train')
    (tmp_path / dates[0] / 'gps' / 'ins.csv').write_text('timestamp,northing\n1,2\n')
    with pytest.raises(ValueError, match=r'ins.csv: missing column\(s\) easting'):
        open_dataset(f'robotcar:{tmp_path}:full:train')
    (tmp_path / 'extrinsics' / 'ins.txt').write_text('1 2 3\n')
    with pytest.raises(ValueError, match=r'ins.txt: expected 6 values'):
        open_dataset(f'robotcar:{tmp_path}:full:test')


# --- splits and the plain folder through open_dataset ----------------------------------------

def test_splits_follow_the_paper():
    counts = {'neighborhood': 6, 'office_loop': 5, 'countryside': 3, 'business_campus': 2,
              'city_loop': 2, 'old_town': 3}  # training sequences of the paper's Table 2
    for scene, n in counts.items():
        split = SPLITS[f'4seasons/{scene}']
        assert len(split['train']) == n and len(split['test']) == 1
        for rec in split['train'] + split['test']:
            assert re.fullmatch(r'20(20|21)-\d\d-\d\d_\d\d-\d\d-\d\d', rec), rec
    assert SPLITS['4seasons/neighborhood']['test'] == ['2021-05-10_18-32-32']
    assert SPLITS['4seasons/city_loop']['test'] == ['2021-02-25_11-09-49']
    assert SPLITS['robotcar/loop'] == {
        'train': ['2014-06-26-09-24-58', '2014-06-23-15-41-25'],
        'test': ['2014-06-26-08-53-56', '2014-06-23-15-36-04']}
    assert SPLITS['robotcar/full'] == {'train': ['2014-11-28-12-07-13', '2014-12-02-15-30-08'],
                                       'test': ['2014-12-09-13-21-02']}
    for split in SPLITS.values():
        assert not set(split['train']) & set(split['test'])
    assert recordings('robotcar', 'full', 'all') == ['2014-11-28-12-07-13',
                                                     '2014-12-02-15-30-08',
                                                     '2014-12-09-13-21-02']
    with pytest.raises(ValueError, match='known: loop, full'):
        recordings('robotcar', 'city', 'train')


def test_open_dataset_plain_folder(tmp_path):
    frames = [Frame(10**9 * (k + 1), [k, 0, 0, 0, 0, 0, 1], colour_image(k)) for k in range(2)]
    root = write_plain_folder(tmp_path / 'plain', frames)
    reader = open_dataset(root)
    assert isinstance(reader, PlainFolder)
    assert np.allclose(reader.poses[:, 0], [0, 1])
    with pytest.raises(ValueError, match='options are not understood for plain folders'):
        open_dataset(f'{root}?image=/x')
    with pytest.raises(FileNotFoundError, match='dataset not found'):
        open_dataset(Path(tmp_path / 'missing'))


def test_plain_folder_says_when_poses_are_not_body_frame_z_up(tmp_path, caplog):
    from imposing_ros.data.plain import PlainFolder, write_plain_folder
    from imposing_ros.data.synthetic import SyntheticRoad
    from imposing_ros.geometry import (
        matrix_to_pose,
        optical_to_body_poses,
        pose_to_matrix,
        T_camera_optical,
        up_share,
    )

    road = SyntheticRoad(length=50.0, size=(16, 32))
    frames = list(road.frames(6, seed=1))
    body = np.stack([f.pose for f in frames])
    assert up_share(body) == 1.0
    # The same cameras written as optical-frame poses (what OpenCV / COLMAP give).
    optical = np.stack([matrix_to_pose(pose_to_matrix(p) @ T_camera_optical()) for p in body])
    assert up_share(optical) == 0.0
    assert np.allclose(optical_to_body_poses(optical), body, atol=1e-9)
    with caplog.at_level('WARNING', logger='imposing_ros.data'):
        good = write_plain_folder(tmp_path / 'good', frames)
        PlainFolder(good)
        assert 'points up' not in caplog.text
        bad = write_plain_folder(tmp_path / 'bad', [dataclasses.replace(f, pose=p)
                                                      for f, p in zip(frames, optical)])
        PlainFolder(bad)
    assert 'camera z axis points up in 0 %' in caplog.text
    assert 'optical_to_body_poses' in caplog.text
