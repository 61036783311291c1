"""``imposing-ros demo`` end to end on a tiny bag written here, with a tiny random model.

The demo starts ``imposing-ros run`` (the localizer) in a child process, replays the bag over
DDS with /clock, and prints a summary; nothing depends on the trained demo model.
"""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip('rclpy')
rosbags = pytest.importorskip('rosbags')
cv2 = pytest.importorskip('cv2')

from node_harness import build_tiny_checkpoint, write_params  # noqa: E402
from rosbags.typesys.stores import ros2_kilted as kilted  # noqa: E402

from imposing_ros.geometry import (  # noqa: E402
    matrix_to_quat_xyzw,
    pose_to_matrix,
    T_camera_optical,
)
from imposing_ros.nodes.demo import demo_parameters  # noqa: E402
from imposing_ros.nodes.demo_bags import BagInfo, GAP_NS, Playlist  # noqa: E402
from imposing_ros.nodes.demo_report import format_summary, summarize  # noqa: E402
from imposing_ros.runtime.select import CPU_AUTO_BACKENDS  # noqa: E402

FRAMES = 30
START_NS = 1_000 * 1_000_000_000
PERIOD_NS = 100_000_000  # 10 Hz
T_BASE_CAMERA_LINK = (1.0, 0.0, 1.5)


def write_bag(path, road):
    """Compressed images, ground truth (base_link in map), /tf_static and /odom."""
    from rosbags.rosbag2 import Writer
    from rosbags.typesys import get_typestore, Stores

    store = get_typestore(Stores.ROS2_KILTED)
    m = store.types
    vector3, quat = kilted.geometry_msgs__msg__Vector3, kilted.geometry_msgs__msg__Quaternion

    def header(ns, frame):
        stamp = kilted.builtin_interfaces__msg__Time(sec=ns // 10**9, nanosec=ns % 10**9)
        return kilted.std_msgs__msg__Header(stamp=stamp, frame_id=frame)

    def tf(parent, child, matrix):
        q = matrix_to_quat_xyzw(matrix[:3, :3])
        return m['geometry_msgs/msg/TransformStamped'](
            header=header(START_NS, parent), child_frame_id=child,
            transform=m['geometry_msgs/msg/Transform'](
                translation=vector3(x=matrix[0, 3], y=matrix[1, 3], z=matrix[2, 3]),
                rotation=quat(x=q[0], y=q[1], z=q[2], w=q[3])))

    link = np.eye(4)
    link[:3, 3] = T_BASE_CAMERA_LINK
    with Writer(path, version=9) as writer:
        image_c = writer.add_connection('/camera/image_raw/compressed',
                                        'sensor_msgs/msg/CompressedImage', typestore=store)
        truth_c = writer.add_connection('/ground_truth/pose', 'geometry_msgs/msg/PoseStamped',
                                        typestore=store)
        tf_c = writer.add_connection('/tf_static', 'tf2_msgs/msg/TFMessage', typestore=store)
        odom_c = writer.add_connection('/odom', 'nav_msgs/msg/Odometry', typestore=store)
        tfs = m['tf2_msgs/msg/TFMessage'](transforms=[
            tf('base_link', 'camera_link', link),
            tf('camera_link', 'camera_optical_frame', T_camera_optical())])
        writer.write(tf_c, START_NS, store.serialize_cdr(tfs, 'tf2_msgs/msg/TFMessage'))
        for i in range(FRAMES):
            ns = START_NS + i * PERIOD_NS
            x = 20.0 + 1.0 * i
            camera = road.pose(x, True)
            base = camera.copy()
            base[:3] -= T_BASE_CAMERA_LINK
            ok, jpeg = cv2.imencode('.jpg', road.image(x, True)[:, :, ::-1])
            image = m['sensor_msgs/msg/CompressedImage'](
                header=header(ns, 'camera_optical_frame'), format='jpeg',
                data=np.frombuffer(jpeg.tobytes(), np.uint8))
            writer.write(image_c, ns,
                         store.serialize_cdr(image, 'sensor_msgs/msg/CompressedImage'))
            position = kilted.geometry_msgs__msg__Point(x=base[0], y=base[1], z=base[2])
            pose = kilted.geometry_msgs__msg__Pose(
                position=position, orientation=quat(x=base[3], y=base[4], z=base[5], w=base[6]))
            truth = m['geometry_msgs/msg/PoseStamped'](header=header(ns, 'map'), pose=pose)
            writer.write(truth_c, ns, store.serialize_cdr(truth, 'geometry_msgs/msg/PoseStamped'))
            odom = m['nav_msgs/msg/Odometry'](
                header=header(ns, 'odom'), child_frame_id='base_link',
                pose=m['geometry_msgs/msg/PoseWithCovariance'](pose=pose,
                                                               covariance=np.zeros(36)),
                twist=m['geometry_msgs/msg/TwistWithCovariance'](
                    twist=m['geometry_msgs/msg/Twist'](linear=vector3(x=10.0, y=0.0, z=0.0),
                                                       angular=vector3(x=0.0, y=0.0, z=0.0)),
                    covariance=np.zeros(36)))
            writer.write(odom_c, ns, store.serialize_cdr(odom, 'nav_msgs/msg/Odometry'))
    return path


@pytest.fixture(scope='module')
def tiny_bag(tmp_path_factory):
    folder = tmp_path_factory.mktemp('demo')
    model, road = build_tiny_checkpoint(folder / 'tiny.pt')
    bag = write_bag(folder / 'traversal', road)
    # Compiled as in production (the node tests' SMALL_SEARCH runs eager).
    params = write_params(folder / 'params.yaml', {'tracking.levels': 2, 'inductor': 'auto'})
    return model, bag, params, folder


def test_bag_info_reads_extrinsic_and_truth(tiny_bag):
    _, bag, _, _ = tiny_bag
    info = BagInfo(bag)
    assert info.images == FRAMES and info.compressed
    assert info.image_frame == 'camera_optical_frame'
    expected = np.eye(4)
    expected[:3, 3] = T_BASE_CAMERA_LINK
    assert np.allclose(info.extrinsic, expected @ T_camera_optical())
    params = demo_parameters(info)['/**/imposing_localizer']['ros__parameters']
    assert params['image_transport'] == 'compressed'
    assert params['image_topic'] == '/camera/image_raw'
    assert params['camera_extrinsic.optical'] is True
    assert np.allclose(params['camera_extrinsic.xyz'], T_BASE_CAMERA_LINK)
    # The rpy given back to the node rebuilds the optical rotation.
    from imposing_ros.geometry import rpy_matrix
    assert np.allclose(rpy_matrix(*params['camera_extrinsic.rpy']), T_camera_optical()[:3, :3])
    # A ground-truth stamp halfway between two samples interpolates the position.
    mid = info.truth_at(START_NS + PERIOD_NS // 2)
    assert math.isclose(mid[0, 3], 20.5 - 1.0, abs_tol=1e-6)


def test_summary_counts_errors_and_failures(tiny_bag):
    _, bag, _, _ = tiny_bag
    info = Playlist([bag])
    sent = {START_NS + i * PERIOD_NS: 10.0 + i for i in range(FRAMES)}
    poses = []
    localized = [i for i in range(FRAMES) if i % 4 != 3]  # 3 frames of 4, 2 m off in y
    for i in localized:
        stamp = START_NS + i * PERIOD_NS
        matrix = info.truth_at(stamp).copy()
        matrix[1, 3] += 2.0
        poses.append((10.0 + i + 0.05, stamp, matrix, 'map'))
    diagnostics = {'processing median since configure (ms)': '40.25', 'frames skipped': '0',
                   'frames processed': str(FRAMES - 2)}
    s = summarize(info, sent, poses, diagnostics)
    assert s['poses'] == len(localized) and s['frames_with_truth'] == FRAMES
    assert s['missed'] == FRAMES - len(localized)
    assert math.isclose(s['median_error_m'], 2.0, abs_tol=1e-6)
    assert math.isclose(s['latency_ms']['p50'], 50.0, abs_tol=1e-3)
    # One image a second played; poses come as often, less the skipped fourth frames.
    assert s['images_per_s'] == pytest.approx(1.0)
    assert s['poses_per_s'] == pytest.approx((len(localized) - 1) / (localized[-1] - localized[0]))
    assert s['localizer processing median since configure (ms)'] == '40.25'
    # Throughput apart from refusals: the share of the images the node processed, at their pace.
    assert s['frames_processed_per_s'] == pytest.approx((FRAMES - 2) / FRAMES)
    assert f'{(FRAMES - 2) / FRAMES:.1f} frames/s processed' in format_summary(s)
    assert s['latency_p50_over_processing'] == pytest.approx(50.0 / 40.25)
    assert 'latency p50 / localizer processing median: 1.24' in format_summary(s)
    # Misses count in every recall: 3 of 4 frames are within 5 m.
    assert s['recall']['5.0m/10.0deg'] == pytest.approx(len(localized) / FRAMES)
    assert s['recall']['1.0m/5.0deg'] == 0.0
    # With half the frames missed the median is a miss too, not the median of the poses.
    half = [p for p in poses if (p[1] - START_NS) // PERIOD_NS % 2 == 0]
    assert summarize(info, sent, half, {})['median_error_m'] == math.inf


def test_playlist_restamps_later_bags_and_counts_wrong_maps_as_misses(tiny_bag):
    """Two bags in sequence: the second follows the first; a pose in another map is a miss."""
    _, bag, _, _ = tiny_bag
    info = Playlist([bag, bag])
    first, second = info.bags
    assert info.offsets[1] == first.end_ns + GAP_NS - second.start_ns
    assert info.images == 2 * FRAMES
    later = START_NS + info.offsets[1]  # the second bag's first image, as played
    assert info.bag_index(later) == 1 and info.bag_index(later - GAP_NS) == 0
    assert np.allclose(info.truth_at(later), info.truth_at(START_NS))
    info.map_frames = ['map_a', 'map_b']
    sent, poses = {}, []
    for k, offset in enumerate(info.offsets):
        for i in range(FRAMES):
            stamp = START_NS + i * PERIOD_NS + offset
            sent[stamp] = float(i)
            # The second bag's first 4 images are still localized in the first bag's map.
            frame = 'map_a' if k == 0 or i < 4 else 'map_b'
            poses.append((i + 0.05, stamp, info.truth_at(stamp), frame))
    s = summarize(info, sent, poses, {})
    assert s['frames_with_truth'] == 2 * FRAMES and s['missed'] == 4
    a, b = s['bags']
    assert a['missed'] == 0 and 'frames_to_switch' not in a
    assert b['missed'] == 4 and b['frames_to_switch'] == 4
    assert b['median_error_m'] == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError, match='no bag'):
        Playlist([])


@pytest.mark.ros
@pytest.mark.slow
def test_demo_end_to_end(tiny_bag):
    """The bag twice over DDS, with a Foxglove client on the live view (``demo --foxglove``)."""
    model, bag, params, folder = tiny_bag
    out, log = folder / 'summary.json', folder / 'demo.log'
    port = _free_port()
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONUNBUFFERED='1')
    with open(log, 'w') as sink:
        proc = subprocess.Popen(
            [sys.executable, '-m', 'imposing_ros.cli', 'demo', '--model', str(model), '--bag',
             str(bag), str(bag), '--params', str(params), '--use-filter', 'false', '--json',
             str(out), '--foxglove', str(port)],
            stdout=sink, stderr=subprocess.STDOUT, text=True, env=env)
        try:
            received = _watch_live_view(proc, port, timeout_s=240)
            proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    output = log.read_text()
    assert proc.returncode == 0, output[-3000:]
    assert f'frames: {2 * FRAMES} images played' in output
    assert 'frame failed' not in output, output[-3000:]
    summary = json.loads(out.read_text())
    # The bag twice: the second pass restamped after the first (deserialized, re-published).
    assert summary['images_sent'] == 2 * FRAMES
    # 10 Hz replay, ~30 ms per frame: nearly every frame is localized.
    assert FRAMES <= summary['poses'] <= 2 * FRAMES
    assert summary['frames_with_truth'] == 2 * FRAMES
    assert [b['frames_with_truth'] for b in summary['bags']] == [FRAMES, FRAMES]
    assert summary['bags'][1]['missed'] < FRAMES // 2  # the restamped bag is localized too
    assert math.isfinite(summary['median_error_m'])
    assert summary['latency_ms']['p50'] > 0
    assert summary['localizer backend'] in CPU_AUTO_BACKENDS  # auto: timed at load
    # The client connected during the run received the run's messages.
    for topic in ('/camera/image_raw/compressed', '/imposing_localizer/pose',
                  '/imposing_localizer/candidates', '/ground_truth/pose'):
        assert received.get(topic, 0) > 0, received


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _watch_live_view(proc, port, timeout_s):
    """Messages per topic a Foxglove client on ``proc``'s live view receives until it ends.

    The client subscribes to every channel the server advertises.
    """
    import time

    from websockets.sync.client import connect

    counts, topics = {}, {}
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            ws = connect(f'ws://127.0.0.1:{port}', subprotocols=['foxglove.sdk.v1'],
                         open_timeout=2)
            break
        except OSError:
            assert proc.poll() is None and time.monotonic() < deadline, 'no live view'
            time.sleep(0.5)
    with ws:
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                data = ws.recv(timeout=1)
            except TimeoutError:
                continue
            except Exception:  # the demo ended and closed the server
                break
            if isinstance(data, str):
                op = json.loads(data)
                if op['op'] == 'advertise':
                    new = [c for c in op['channels'] if c['id'] not in topics.values()]
                    topics.update({c['topic']: c['id'] for c in new})
                    ws.send(json.dumps({'op': 'subscribe', 'subscriptions': [
                        {'id': c['id'], 'channelId': c['id']} for c in new]}))
            elif data[0] == 0x01:  # message data: subscription id, log time, payload
                sub = int.from_bytes(data[1:5], 'little')
                counts[sub] = counts.get(sub, 0) + 1
    return {topic: counts.get(i, 0) for topic, i in topics.items()}


@pytest.mark.ros
@pytest.mark.slow
def test_node_publishes_what_evaluate_computes(tiny_bag):
    """Global mode, fp32: the node publishes evaluate's camera poses through the extrinsic.

    The bag's camera frame is optical; the node and the library must not disagree.
    """
    import torch

    from imposing_ros.data.datasets import open_dataset
    from imposing_ros.evaluation.cli import evaluate
    from imposing_ros.localization.localizer import LocalizerConfig
    from imposing_ros.localization.search import SearchConfig

    model, bag, _, folder = tiny_bag
    params = write_params(folder / 'global.yaml', {'tracking.enabled': False,
                                                   'backend': 'torch', 'inductor': 'off'})
    frames_csv = folder / 'frames.csv'
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONUNBUFFERED='1')
    proc = subprocess.run(
        [sys.executable, '-m', 'imposing_ros.cli', 'demo', '--model', str(model), '--bag',
         str(bag), '--params', str(params), '--use-filter', 'false', '--csv', str(frames_csv)],
        capture_output=True, text=True, env=env, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = [line.split(',') for line in frames_csv.read_text().splitlines()[1:]]
    published = {int(r[0]): np.array(r[1:8], float) for r in rows if r[1]}
    assert len(rows) == FRAMES and len(published) >= FRAMES // 2

    config = LocalizerConfig(search=SearchConfig(num_candidates=256, levels=3, top_k=16,
                                                 num_average=32))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the node (OMP_NUM_THREADS=1): the same arithmetic
    try:
        result = evaluate(model, open_dataset(str(bag)), config=config, backend='torch',
                          inductor='off')
    finally:
        torch.set_num_threads(threads)
    t_base_camera = BagInfo(bag).extrinsic @ np.linalg.inv(T_camera_optical())
    for stamp, estimate in zip(result.stamps_ns, result.estimates):
        if stamp not in published:
            continue
        expected = pose_to_matrix(estimate) @ np.linalg.inv(t_base_camera)
        assert np.allclose(pose_to_matrix(published[stamp]), expected, atol=1e-4), stamp


def test_demo_without_model_fails_clearly(tmp_path):
    proc = subprocess.run(
        [sys.executable, '-m', 'imposing_ros.cli', 'demo', '--model', str(tmp_path / 'no.pt'),
         '--bag', str(tmp_path / 'bag')], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert f'model {tmp_path / "no.pt"} not found' in proc.stderr
    assert not (tmp_path / 'bag').exists()  # failed before simulating anything
