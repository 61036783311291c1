"""rosbag2 reader on bags written here with rosbags.

Stamps, interpolation, drops, extrinsics, encodings, and clear errors for bad bags.
"""

import io
import math

import numpy as np
from PIL import Image
import pytest
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import get_typestore, Stores
from scipy.spatial.transform import Rotation, Slerp

from imposing_ros.data.datasets import open_dataset
from imposing_ros.data.rosbag import RosbagReader
from imposing_ros.geometry import pose_to_matrix, T_camera_optical

STORE = get_typestore(Stores.ROS2_KILTED)
T = STORE.types
S0 = 1_700_000_000


def header(ns, frame):
    return T['std_msgs/msg/Header'](
        stamp=T['builtin_interfaces/msg/Time'](sec=ns // 10**9, nanosec=ns % 10**9),
        frame_id=frame)


def pose_msg(x, yaw):
    q = Rotation.from_euler('z', yaw).as_quat()
    return T['geometry_msgs/msg/Pose'](
        position=T['geometry_msgs/msg/Point'](x=float(x), y=0.0, z=0.0),
        orientation=T['geometry_msgs/msg/Quaternion'](x=q[0], y=q[1], z=q[2], w=q[3]))


def image_array(k):
    rng = np.random.default_rng(k)
    return rng.integers(0, 255, (8, 12, 3), dtype=np.uint8)


def write_bag(path, storage=StoragePlugin.MCAP, pose_type='geometry_msgs/msg/PoseStamped',
              raw_encoding=None, image_times=None, pose_times=None, tf=True,
              image_frame='camera_optical_frame'):
    """Poses every 0.1 s moving 1 m/s along x and turning 0.1 rad/s; images in between."""
    image_times = image_times if image_times is not None else [0.05, 0.25, 0.52, 0.9]
    pose_times = pose_times if pose_times is not None else np.arange(0.0, 1.01, 0.1)
    with Writer(path, version=9, storage_plugin=storage) as writer:
        image_type = 'sensor_msgs/msg/Image' if raw_encoding else \
            'sensor_msgs/msg/CompressedImage'
        img_conn = writer.add_connection('/cam', image_type, typestore=STORE)
        pose_conn = writer.add_connection('/gt', pose_type, typestore=STORE)
        tf_conn = writer.add_connection('/tf_static', 'tf2_msgs/msg/TFMessage', typestore=STORE)
        if tf:
            transforms = [
                ('base_link', 'camera_link', [1.0, 0.0, 1.5], [0, 0, 0, 1]),
                ('camera_link', 'camera_optical_frame', [0.0, 0.0, 0.0],
                 Rotation.from_matrix(T_camera_optical()[:3, :3]).as_quat())]
            msgs = []
            for parent, child, t, q in transforms:
                msgs.append(T['geometry_msgs/msg/TransformStamped'](
                    header=header(S0 * 10**9, parent), child_frame_id=child,
                    transform=T['geometry_msgs/msg/Transform'](
                        translation=T['geometry_msgs/msg/Vector3'](x=t[0], y=t[1], z=t[2]),
                        rotation=T['geometry_msgs/msg/Quaternion'](x=q[0], y=q[1], z=q[2],
                                                                   w=q[3]))))
            writer.write(tf_conn, S0 * 10**9, STORE.serialize_cdr(
                T['tf2_msgs/msg/TFMessage'](transforms=msgs), 'tf2_msgs/msg/TFMessage'))
        for t in pose_times:
            ns = S0 * 10**9 + int(round(t * 1e9))
            pose = pose_msg(t, 0.1 * t)
            if pose_type.endswith('/PoseStamped'):
                msg = T[pose_type](header=header(ns, 'map'), pose=pose)
            elif pose_type.endswith('PoseWithCovarianceStamped'):
                msg = T[pose_type](header=header(ns, 'map'), pose=T[
                    'geometry_msgs/msg/PoseWithCovariance'](pose=pose, covariance=np.zeros(36)))
            else:
                msg = T[pose_type](
                    header=header(ns, 'map'), child_frame_id='base_link',
                    pose=T['geometry_msgs/msg/PoseWithCovariance'](pose=pose,
                                                                   covariance=np.zeros(36)),
                    twist=T['geometry_msgs/msg/TwistWithCovariance'](
                        twist=T['geometry_msgs/msg/Twist'](
                            linear=T['geometry_msgs/msg/Vector3'](x=0.0, y=0.0, z=0.0),
                            angular=T['geometry_msgs/msg/Vector3'](x=0.0, y=0.0, z=0.0)),
                        covariance=np.zeros(36)))
            writer.write(pose_conn, ns, STORE.serialize_cdr(msg, pose_type))
        for k, t in enumerate(image_times):
            ns = S0 * 10**9 + int(round(t * 1e9))
            rgb = image_array(k)
            if raw_encoding:
                data = rgb[:, :, ::-1] if raw_encoding == 'bgr8' else rgb
                if raw_encoding == 'mono8':
                    data = rgb[:, :, 0]
                channels = 1 if raw_encoding == 'mono8' else 3
                msg = T[image_type](header=header(ns, image_frame), height=8, width=12,
                                    encoding=raw_encoding, is_bigendian=0, step=12 * channels,
                                    data=np.ascontiguousarray(data).ravel())
            else:
                buf = io.BytesIO()
                Image.fromarray(rgb).save(buf, format='png')
                msg = T[image_type](header=header(ns, image_frame), format='png',
                                    data=np.frombuffer(buf.getvalue(), dtype=np.uint8))
            writer.write(img_conn, ns, STORE.serialize_cdr(msg, image_type))
    return path


def expected_camera(t):
    """Analytic T_map_camera (body frame) at time t: vehicle pose then the extrinsic."""
    vehicle = np.eye(4)
    vehicle[:3, :3] = Rotation.from_euler('z', 0.1 * t).as_matrix()
    vehicle[0, 3] = t
    extrinsic = np.eye(4)
    extrinsic[:3, 3] = [1.0, 0.0, 1.5]
    return vehicle @ extrinsic


@pytest.mark.parametrize('storage', [StoragePlugin.MCAP, StoragePlugin.SQLITE3])
@pytest.mark.parametrize('pose_type', ['geometry_msgs/msg/PoseStamped',
                                       'geometry_msgs/msg/PoseWithCovarianceStamped',
                                       'nav_msgs/msg/Odometry'])
def test_stamps_interpolation_and_extrinsic(tmp_path, storage, pose_type):
    bag = write_bag(tmp_path / 'bag', storage, pose_type)
    reader = open_dataset(bag)
    assert isinstance(reader, RosbagReader)
    frames = list(reader)
    assert [f.stamp_ns - S0 * 10**9 for f in frames] == [50_000_000, 250_000_000, 520_000_000,
                                                          900_000_000]
    for k, frame in enumerate(frames):
        t = (frame.stamp_ns - S0 * 10**9) * 1e-9
        assert np.allclose(pose_to_matrix(frame.pose), expected_camera(t), atol=1e-6)
        assert np.array_equal(frame.image, image_array(k))
    assert np.allclose(reader.poses, np.stack([f.pose for f in frames]), atol=1e-9)


def test_slerp_matches_scipy_between_samples(tmp_path):
    bag = write_bag(tmp_path / 'bag', pose_times=[0.0, 1.0], image_times=[0.3])
    reader = RosbagReader(bag, T_vehicle_camera=np.eye(4), max_gap_s=2.0)
    (frame,) = list(reader)
    ref = Slerp([0.0, 1.0], Rotation.from_euler('z', [[0.0], [0.1]]))([0.3])
    assert np.allclose(np.abs(frame.pose[3:] @ ref.as_quat()[0]), 1.0)
    assert frame.pose[0] == pytest.approx(0.3)


def test_images_far_from_poses_are_dropped_and_counted(tmp_path):
    bag = write_bag(tmp_path / 'bag', pose_times=[0.0, 0.1, 0.2, 0.8, 0.9],
                    image_times=[0.05, 0.5, 0.85, 1.5])
    reader = RosbagReader(bag, max_gap_s=0.2)
    frames = list(reader)
    assert len(frames) == 2
    assert reader.summary.images == 4 and reader.summary.kept == 2
    assert reader.summary.dropped == {'no pose within max_gap_s': 2}


@pytest.mark.parametrize('encoding', ['rgb8', 'bgr8', 'mono8'])
def test_raw_encodings(tmp_path, encoding):
    bag = write_bag(tmp_path / 'bag', raw_encoding=encoding, image_times=[0.5])
    (frame,) = list(RosbagReader(bag))
    rgb = image_array(0)
    expected = np.repeat(rgb[:, :, :1], 3, axis=2) if encoding == 'mono8' else rgb
    assert np.array_equal(frame.image, expected)


def test_explicit_extrinsic_and_missing_tf(tmp_path):
    bag = write_bag(tmp_path / 'bag', tf=False, image_frame='base_link')
    frames = list(RosbagReader(bag))  # camera frame is the pose's frame: identity
    assert np.allclose(frames[0].pose[:3], [0.05, 0, 0], atol=1e-9)
    bag2 = write_bag(tmp_path / 'bag2', tf=False)
    with pytest.raises(ValueError, match='no chain base_link -> camera_optical_frame'):
        list(RosbagReader(bag2))


def test_bad_bags_give_clear_errors(tmp_path):
    bag = write_bag(tmp_path / 'bag')
    with pytest.raises(ValueError, match=r'bag: image topic /nope not found'):
        RosbagReader(bag, image_topic='/nope')
    with pytest.raises(ValueError, match=r'pose topic /cam has type sensor_msgs/msg/Compressed'):
        RosbagReader(bag, pose_topic='/cam')
    with pytest.raises(FileNotFoundError):
        open_dataset(tmp_path / 'missing')
    with pytest.raises(ValueError, match='unknown rosbag option'):
        open_dataset(f'{bag}?colour=red')
    mcap = next(bag.glob('*.mcap'))
    truncated = tmp_path / 'truncated.mcap'
    truncated.write_bytes(mcap.read_bytes()[:200])
    with pytest.raises(ValueError, match='truncated.mcap: not a readable rosbag2'):
        open_dataset(truncated)
    empty = tmp_path / 'empty'
    with Writer(empty, version=9, storage_plugin=StoragePlugin.MCAP):
        pass
    with pytest.raises(ValueError, match='no topics'):
        open_dataset(empty)
    only_odd = tmp_path / 'odd'
    with Writer(only_odd, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        conn = writer.add_connection('/temp', 'std_msgs/msg/Float32', typestore=STORE)
        writer.write(conn, 1, STORE.serialize_cdr(T['std_msgs/msg/Float32'](data=1.0),
                                                  'std_msgs/msg/Float32'))
    with pytest.raises(ValueError, match='no image topic'):
        open_dataset(only_odd)
    with pytest.raises(ValueError, match='not a dataset'):
        open_dataset(tmp_path)


def test_key_changes_with_content(tmp_path):
    bag = write_bag(tmp_path / 'bag')
    key = RosbagReader(bag).cache_key()
    assert key == RosbagReader(bag).cache_key()
    assert key != RosbagReader(bag, max_gap_s=0.5).cache_key()
    assert math.isfinite(len(key))
