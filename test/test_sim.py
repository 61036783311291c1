"""Scene simulator: config strictness, odometry statistics, the tiny scene end to end."""

import io
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

from imposing_ros.geometry import pose_to_matrix
from imposing_ros.sim import bag as bagio
from imposing_ros.sim.config import load_scene, OdometryConfig, scene_from_dict, VehicleConfig

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / 'config' / 'scenes' / 'tiny.yaml'
HELSINKI = ROOT / 'config' / 'scenes' / 'helsinki.yaml'


# --- configuration ------------------------------------------------------------------------------

def test_scene_files_load():
    tiny = load_scene(TINY)
    assert tiny.max_frames == 50 and len(tiny.traversals) == 2
    helsinki = load_scene(HELSINKI)
    assert len(helsinki.traversals) >= 5
    assert helsinki.route.target_distinct_length_m >= 5000


def test_missing_scene_file(tmp_path):
    with pytest.raises(FileNotFoundError, match='nope.yaml'):
        load_scene(tmp_path / 'nope.yaml')


@pytest.mark.parametrize('text, message', [
    ('camera: {widht: 10}\n', r'bad\.yaml: unknown key camera\.widht'),
    ('colour: red\n', r'bad\.yaml: unknown key colour'),
    ('camera: {width: ten}\n', r'bad\.yaml: camera\.width: expected an integer'),
    ('camera: {width: 3}\n', r'bad\.yaml: camera\.width: 3 is outside'),
    ('traversals: [{name: a, preset: moonlight}]\n', r'bad\.yaml: traversals\[0\].*moonlight'),
    ('traversals: [{name: a, overrides: {fgo: 1}}]\n',
     r'bad\.yaml: unknown key traversals\[0\]\.overrides\.fgo'),
    ('traversals: [{name: a}, {name: a}]\n', r'bad\.yaml: traversals: names must be unique'),
    ('city: {bbox: [1, 2, 3]}\n', r'bad\.yaml: city\.bbox: expected a list of 4'),
    ('camera: [1, 2]\n', r'bad\.yaml: camera: expected a mapping'),
    ('camera: {width: 10\n', r'bad\.yaml: not valid YAML'),
    ('', r'bad\.yaml: empty scene file'),
])
def test_bad_scene_file(tmp_path, text, message):
    path = tmp_path / 'bad.yaml'
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        load_scene(path)


def test_defaults_are_the_dataclasses():
    config = scene_from_dict({'name': 'x'})
    assert config.odometry == OdometryConfig() and config.vehicle == VehicleConfig()
    assert config.intrinsics() == pytest.approx((120.0, 120.0, 120.0, 67.5))


# --- odometry -----------------------------------------------------------------------------------

def _test_trajectory(rate=50.0):
    from imposing_ros.sim.route import build_trajectory

    # A 600 m drive: straight, a right turn, straight, a left bend.
    pts = np.array([[0, 0], [200, 0], [200, -150], [320, -150], [400, -80]], float)
    offsets = np.full(len(pts), 1.6)
    return build_trajectory(pts, offsets, VehicleConfig(), rate, np.random.default_rng(0))


def test_trajectory_is_smooth_and_stops_at_turns():
    traj = _test_trajectory()
    assert traj.s[-1] > 550
    dt = np.diff(traj.t)
    assert np.allclose(dt, 0.02)
    accel = np.diff(traj.speed) / dt
    assert np.abs(accel).max() < 2.5  # within the configured limits (+ sampling slack)
    assert traj.speed.max() < VehicleConfig().max_speed_mps * 1.11
    assert np.abs(np.diff(traj.yaw)).max() < 0.05  # no heading jumps
    # The vehicle stands still somewhere in the middle (the right turn), not only at the ends.
    middle = traj.speed[len(traj.t) // 5:-len(traj.t) // 5]
    assert (middle < 0.05).any()
    # Right-hand traffic: on the first straight (heading +x) the lane is right of y = 0.
    first = (traj.xy[:, 0] > 20) & (traj.xy[:, 0] < 150)
    assert np.allclose(traj.xy[first, 1], -1.6, atol=0.1)


def test_turns_only_images_the_corners_at_the_asked_spacing():
    from imposing_ros.sim.route import frame_indices

    traj = _test_trajectory()
    every = frame_indices(traj, 3.0)
    dense = frame_indices(traj, 1.5, turns_only=True)
    assert abs(np.median(np.diff(traj.s[every])) - 3.0) < 0.05
    # Only the right turn and the left bend are imaged, every 1.5 m driven.
    assert 0 < len(dense) < len(every) / 2
    assert abs(np.median(np.diff(traj.s[dense])) - 1.5) < 0.05
    window = 6.0
    for k in dense:
        near = np.abs(traj.s - traj.s[k]) <= window + 0.5
        assert np.ptp(traj.yaw[near]) > np.radians(10.0) - 1e-3
    # The straights between are not imaged.
    straight = (traj.xy[:, 0] > 40) & (traj.xy[:, 0] < 160) & (np.abs(traj.xy[:, 1]) < 5)
    assert not straight[dense].any()


@pytest.mark.parametrize('value', [0.0, -1.0, float('nan')])
def test_traversal_spacing_is_checked(value):
    with pytest.raises(ValueError, match='frame_spacing_m'):
        scene_from_dict({'traversals': [{'name': 'a', 'frame_spacing_m': value}]})


def test_odometry_noise_and_drift_statistics():
    from imposing_ros.sim.odometry import drift_bound, simulate_odometry

    config = OdometryConfig()
    traj = _test_trajectory(config.rate_hz)
    moving = np.abs(traj.speed) > 1e-3
    errors, scales, biases, speed_res, yaw_res = [], [], [], [], []
    for seed in range(200):
        odo = simulate_odometry(traj, config, np.random.default_rng(seed))
        scales.append(odo.scale_error)
        biases.append(odo.yaw_bias)
        speed_res.append((odo.speed - traj.speed * (1 + odo.scale_error))[moving])
        yaw_res.append((odo.yaw_rate - traj.yaw_rate - odo.yaw_bias)[moving])
        # Express the odometry in map: odom starts at the first ground-truth pose.
        yaw0 = traj.yaw[0]
        rot = np.array([[math.cos(yaw0), -math.sin(yaw0)], [math.sin(yaw0), math.cos(yaw0)]])
        end = traj.xy[0] + rot @ odo.xy[-1]
        errors.append(np.linalg.norm(end - traj.xy[-1]))
        assert odo.var_xy[-1] > odo.var_xy[len(odo.var_xy) // 2] > 0  # covariance grows
    speed_res, yaw_res = np.concatenate(speed_res), np.concatenate(yaw_res)
    # White noise matches the configured standard deviations (hundreds of thousands of samples).
    assert np.std(speed_res) == pytest.approx(config.speed_noise_std, rel=0.03)
    assert np.std(yaw_res) == pytest.approx(config.yaw_rate_noise_std, rel=0.03)
    assert abs(np.mean(speed_res)) < 0.01 * config.speed_noise_std * 10
    # Per-traversal scale error and bias: 200 draws, std within 20 % of the configured value.
    assert np.std(scales) == pytest.approx(config.speed_scale_std, rel=0.2)
    assert np.std(biases) == pytest.approx(config.yaw_rate_bias_std, rel=0.2)
    # Drift is bounded and the published covariance is consistent: not overconfident, and
    # not absurdly pessimistic.
    errors = np.array(errors)
    bound = drift_bound(traj.s[-1], traj.t[-1], config)
    assert errors.max() < bound
    rms = math.sqrt(np.mean(errors ** 2))
    predicted = math.sqrt(2 * odo.var_xy[-1])
    assert 0.2 * predicted < rms < predicted * 1.2
    assert np.median(errors) > 0.01  # the noise is really there


def test_odometry_zero_noise_is_exact():
    from imposing_ros.sim.odometry import simulate_odometry

    config = OdometryConfig(speed_noise_std=0.0, speed_scale_std=0.0, yaw_rate_noise_std=0.0,
                            yaw_rate_bias_std=0.0)
    traj = _test_trajectory(config.rate_hz)
    odo = simulate_odometry(traj, config, np.random.default_rng(0))
    yaw0 = traj.yaw[0]
    rot = np.array([[math.cos(yaw0), -math.sin(yaw0)], [math.sin(yaw0), math.cos(yaw0)]])
    end = traj.xy[0] + rot @ odo.xy[-1]
    assert np.linalg.norm(end - traj.xy[-1]) < 0.05 * 1e-2 * traj.s[-1] + 0.05


# --- tiny scene, end to end ---------------------------------------------------------------------

def _egl_reason():
    os.environ.setdefault('MUJOCO_GL', 'egl')
    try:
        import mujoco

        model = mujoco.MjModel.from_xml_string('<mujoco><worldbody/></mujoco>')
        renderer = mujoco.Renderer(model, 16, 16)
        renderer.close()
    except Exception as exc:  # noqa: BLE001 - any failure means no offscreen GL here
        return f'no EGL offscreen rendering ({type(exc).__name__}: {exc}); ' \
               'install libegl1 libegl-mesa0 libgl1-mesa-dri'
    return None


@pytest.fixture(scope='module')
def tiny_bags(tmp_path_factory):
    reason = _egl_reason()
    if reason:
        pytest.skip(reason)
    from imposing_ros.sim.generate import generate

    out = tmp_path_factory.mktemp('tiny')
    results = generate(load_scene(TINY), out, workers=2)
    return out, {r.name: r for r in results}


def _read(path: Path):
    from rosbags.highlevel import AnyReader

    messages = {}
    types = {}
    with AnyReader([path]) as reader:
        for conn in reader.connections:
            types[conn.topic] = conn.msgtype
        for conn, stamp, raw in reader.messages():
            msg = reader.deserialize(raw, conn.msgtype)
            messages.setdefault(conn.topic, []).append((stamp, msg))
    return types, messages


def _ns(stamp) -> int:
    return stamp.sec * 10**9 + stamp.nanosec


def test_tiny_bag_topics_counts_types(tiny_bags):
    out, results = tiny_bags
    assert sorted(p.name for p in out.iterdir()) == ['day', 'winter']  # no temp folders left
    types, messages = _read(out / 'day')
    assert types == {
        '/camera/image_raw/compressed': 'sensor_msgs/msg/CompressedImage',
        '/camera/camera_info': 'sensor_msgs/msg/CameraInfo',
        '/odom': 'nav_msgs/msg/Odometry',
        '/ground_truth/pose': 'geometry_msgs/msg/PoseStamped',
        '/tf_static': 'tf2_msgs/msg/TFMessage',
    }
    images = messages['/camera/image_raw/compressed']
    infos = messages['/camera/camera_info']
    odom, truth = messages['/odom'], messages['/ground_truth/pose']
    assert len(images) == len(infos) == 50 == results['day'].frames
    assert len(odom) == len(truth) == results['day'].samples
    # 50 Hz, exactly, in the header and the bag timestamps.
    truth_ns = [_ns(m.header.stamp) for _, m in truth]
    assert np.all(np.diff(truth_ns) == 20_000_000)
    assert [t for t, _ in truth] == truth_ns
    assert [_ns(m.header.stamp) for _, m in odom] == truth_ns
    # Every image stamp is a ground-truth stamp, to the nanosecond; camera_info alongside.
    image_ns = [_ns(m.header.stamp) for _, m in images]
    assert set(image_ns) <= set(truth_ns)
    assert image_ns == [_ns(m.header.stamp) for _, m in infos]
    # Images every ~3 m.
    xy = {_ns(m.header.stamp): (m.pose.position.x, m.pose.position.y) for _, m in truth}
    steps = np.linalg.norm(np.diff([xy[t] for t in image_ns], axis=0), axis=1)
    assert np.median(steps) == pytest.approx(3.0, abs=0.2)
    # Frames and formats.
    _, first = images[0]
    assert first.format == 'jpeg' and first.header.frame_id == 'camera_optical_frame'
    from PIL import Image

    assert Image.open(io.BytesIO(bytes(first.data))).size == (240, 135)
    info = infos[0][1]
    assert (info.width, info.height) == (240, 135)
    assert info.header.frame_id == 'camera_optical_frame'
    assert odom[0][1].header.frame_id == 'odom' and odom[0][1].child_frame_id == 'base_link'
    assert truth[0][1].header.frame_id == 'map'
    cov = np.asarray(odom[-1][1].pose.covariance).reshape(6, 6)
    assert cov[0, 0] > 0 and cov[5, 5] > 0 and np.allclose(cov, cov.T)
    (_, tf), = messages['/tf_static']
    frames = [(t.header.frame_id, t.child_frame_id) for t in tf.transforms]
    assert frames == [('base_link', 'camera_link'), ('camera_link', 'camera_optical_frame')]
    meta = json.loads((out / 'day' / 'scene.json').read_text())
    assert meta['map']['frame'] == 'map' and 'tmerc' in meta['map']['projection']
    assert meta['condition']['season'] == 'summer' and meta['camera']['cx'] == 118.0


def _tf_chain(tf_msg) -> np.ndarray:
    matrix = np.eye(4)
    for t in tf_msg.transforms:  # base_link -> camera_link -> camera_optical_frame, in order
        tr, q = t.transform.translation, t.transform.rotation
        matrix = matrix @ pose_to_matrix([tr.x, tr.y, tr.z, q.x, q.y, q.z, q.w])
    return matrix


def test_ground_truth_agrees_with_rendered_camera(tiny_bags):
    """Project the scene's magenta markers with the bag's pose, tf and K; find them in images."""
    from PIL import Image

    out, _ = tiny_bags
    markers = np.array(json.loads((out / 'day' / 'scene.json').read_text())['markers'])
    assert len(markers) >= 5
    _, messages = _read(out / 'day')
    truth = {_ns(m.header.stamp): m.pose for _, m in messages['/ground_truth/pose']}
    T_base_optical = _tf_chain(messages['/tf_static'][0][1])  # noqa: N806
    info = messages['/camera/camera_info'][0][1]
    K = np.asarray(info.k).reshape(3, 3)  # noqa: N806
    predicted = found = 0
    errors = []
    for _, msg in messages['/camera/image_raw/compressed']:
        pose = truth[_ns(msg.header.stamp)]
        p, q = pose.position, pose.orientation
        T_map_optical = pose_to_matrix([p.x, p.y, p.z, q.x, q.y, q.z, q.w]) @ T_base_optical  # noqa: N806,E501
        local = (np.linalg.inv(T_map_optical) @ np.c_[markers, np.ones(len(markers))].T)[:3].T
        image = np.asarray(Image.open(io.BytesIO(bytes(msg.data))).convert('RGB')).astype(int)
        magenta = (image[..., 0] > 150) & (image[..., 2] > 150) & (image[..., 1] < 110)
        for x, y, z in local:
            if not 4.0 < z < 30.0:
                continue
            u, v = K[0, 0] * x / z + K[0, 2], K[1, 1] * y / z + K[1, 2]
            r = K[0, 0] * 0.3 / z  # marker radius in pixels
            if not (r + 3 < u < 240 - r - 3 and r + 3 < v < 135 - r - 3):
                continue
            predicted += 1
            win = int(r + 4)
            rows, cols = np.nonzero(magenta[int(v) - win:int(v) + win + 1,
                                            int(u) - win:int(u) + win + 1])
            if len(rows) < 3:
                continue
            found += 1
            # Pixel (i, j) covers [j, j+1) x [i, i+1): its centre is at j + 0.5.
            cu = cols.mean() + int(u) - win + 0.5
            cv = rows.mean() + int(v) - win + 0.5
            errors.append(math.hypot(cu - u, cv - v))
    assert predicted >= 20
    assert found >= 0.85 * predicted
    assert np.median(errors) < 0.75 and np.max(errors) < 2.5


def test_conditions_differ_at_identical_poses(tiny_bags):
    from imposing_ros.sim.generate import prepare
    from imposing_ros.sim.render import FrameRenderer
    from imposing_ros.sim.scene import build_model

    config = load_scene(TINY)
    city, _, _, _, markers = prepare(config)
    out, _ = tiny_bags
    _, messages = _read(out / 'day')
    T_base_optical = _tf_chain(messages['/tf_static'][0][1])  # noqa: N806
    poses = []
    for _, m in messages['/ground_truth/pose'][::400][:4]:
        p, q = m.pose.position, m.pose.orientation
        poses.append(pose_to_matrix([p.x, p.y, p.z, q.x, q.y, q.z, q.w]) @ T_base_optical)
    renders = {}
    for trav in config.traversals:
        model, cull_info = build_model(city, config, trav.condition(), trav.seed, markers)
        renderer = FrameRenderer(model, cull_info, 240, 135, config.render.view_distance_m)
        renders[trav.name] = [renderer.render(T).astype(int) for T in poses]
        again = [renderer.render(T).astype(int) for T in poses]
        renderer.close()
        assert all(np.array_equal(a, b) for a, b in zip(renders[trav.name], again))
    for day, winter in zip(renders['day'], renders['winter']):
        assert np.abs(day - winter).mean() > 8.0


def test_same_seed_identical_bytes(tiny_bags, tmp_path):
    """A second run (one process instead of two workers) writes byte-identical bags."""
    from imposing_ros.sim.generate import generate

    out, _ = tiny_bags
    generate(load_scene(TINY), tmp_path, traversals=['day'], workers=1)
    first = sorted(p.name for p in (out / 'day').iterdir())
    assert first == sorted(p.name for p in (tmp_path / 'day').iterdir())
    for name in first:
        assert (out / 'day' / name).read_bytes() == (tmp_path / 'day' / name).read_bytes(), name


def test_cli_refuses_bad_scene(tmp_path, capsys):
    from imposing_ros import cli

    path = tmp_path / 'scene.yaml'
    path.write_text('render: {wrokers: 2}\n')
    assert cli.main(['sim', '--scene', str(path), '--out', str(tmp_path / 'out')]) == 2
    err = capsys.readouterr().err
    assert 'scene.yaml' in err and 'render.wrokers' in err
    assert not (tmp_path / 'out').exists()


def test_bag_constants_match_conventions():
    assert bagio.OPTICAL_FRAME.endswith('optical_frame')
    assert (bagio.MAP_FRAME, bagio.ODOM_FRAME, bagio.BASE_FRAME) == ('map', 'odom', 'base_link')
