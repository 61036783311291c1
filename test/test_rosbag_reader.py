"""rosbag2 reader on bags written here with rosbags.

Stamps, interpolation, drops, extrinsics, encodings, and clear errors for bad bags.
"""

import io
import math

import numpy as np
from PIL import Image
import pytest
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import get_types_from_msg, get_typestore, Stores
from scipy.spatial.transform import Rotation, Slerp

from imposing_ros.data.datasets import open_dataset
from imposing_ros.data.pose_track import PoseTrack, slerp
from imposing_ros.data.rosbag import header_from_cdr, read_poses, RosbagReader
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


def transform_msg(ns, parent, child, t, q):
    return T['geometry_msgs/msg/TransformStamped'](
        header=header(ns, parent), child_frame_id=child,
        transform=T['geometry_msgs/msg/Transform'](
            translation=T['geometry_msgs/msg/Vector3'](x=float(t[0]), y=float(t[1]),
                                                       z=float(t[2])),
            rotation=T['geometry_msgs/msg/Quaternion'](x=float(q[0]), y=float(q[1]),
                                                       z=float(q[2]), w=float(q[3]))))


def tf_message(transforms):
    return STORE.serialize_cdr(T[TF](transforms=transforms), TF)


TF = 'tf2_msgs/msg/TFMessage'
ODOM_OFFSET = np.array([2.0, -1.0, 0.0])  # map -> odom in the TF-chain bags
ODOM_YAW = 0.3


def write_bag(path, storage=StoragePlugin.MCAP, pose_type='geometry_msgs/msg/PoseStamped',
              raw_encoding=None, image_times=None, pose_times=None, tf=True,
              image_frame='camera_optical_frame', pose_topic='/gt'):
    """Poses every 0.1 s moving 1 m/s along x and turning 0.1 rad/s; images in between.

    ``pose_type='tf'`` writes the vehicle motion as odom -> base_link on /tf, with a static
    map -> odom (ODOM_OFFSET, ODOM_YAW) also on /tf at every step.
    """
    image_times = image_times if image_times is not None else [0.05, 0.25, 0.52, 0.9]
    pose_times = pose_times if pose_times is not None else np.arange(0.0, 1.01, 0.1)
    with Writer(path, version=9, storage_plugin=storage) as writer:
        image_type = 'sensor_msgs/msg/Image' if raw_encoding else \
            'sensor_msgs/msg/CompressedImage'
        img_conn = writer.add_connection('/cam', image_type, typestore=STORE)
        if pose_type == 'tf':
            pose_conn = writer.add_connection('/tf', TF, typestore=STORE)
        else:
            pose_conn = writer.add_connection(pose_topic, pose_type, typestore=STORE)
        tf_conn = writer.add_connection('/tf_static', TF, typestore=STORE)
        if tf:
            optical_q = Rotation.from_matrix(T_camera_optical()[:3, :3]).as_quat()
            writer.write(tf_conn, S0 * 10**9, tf_message([
                transform_msg(S0 * 10**9, 'base_link', 'camera_link', [1.0, 0.0, 1.5],
                              [0, 0, 0, 1]),
                transform_msg(S0 * 10**9, 'camera_link', 'camera_optical_frame', [0, 0, 0],
                              optical_q)]))
        for t in pose_times:
            ns = S0 * 10**9 + int(round(t * 1e9))
            pose = pose_msg(t, 0.1 * t)
            if pose_type == 'tf':
                q = Rotation.from_euler('z', 0.1 * t).as_quat()
                odom_q = Rotation.from_euler('z', ODOM_YAW).as_quat()
                writer.write(pose_conn, ns, tf_message([
                    transform_msg(ns, 'map', 'odom', ODOM_OFFSET, odom_q),
                    transform_msg(ns, 'odom', 'base_link', [t, 0.0, 0.0], q)]))
                continue
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
    with pytest.raises(ValueError, match=r'bag2: topic /tf_static is missing or empty; cannot '
                                         r'find the extrinsic base_link -> camera_optical_frame'):
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


# --- pose from a TF chain, extrinsic variants, pose-only pass ---------------------------------

def test_tf_chain_pose_source_composes_dynamic_edges(tmp_path):
    bag = write_bag(tmp_path / 'bag', pose_type='tf')
    reader = RosbagReader(bag, pose_topic='/tf')
    frames = list(reader)
    assert len(frames) == 4
    map_odom = np.eye(4)
    map_odom[:3, :3] = Rotation.from_euler('z', ODOM_YAW).as_matrix()
    map_odom[:3, 3] = ODOM_OFFSET
    for frame in frames:
        t = (frame.stamp_ns - S0 * 10**9) * 1e-9
        assert np.allclose(pose_to_matrix(frame.pose), map_odom @ expected_camera(t), atol=1e-6)
    with pytest.raises(ValueError, match=r'bag:/tf: no chain world -> base_link'):
        RosbagReader(bag, pose_topic='/tf', map_frame='world').read_poses()


def test_explicit_extrinsic_is_composed_as_given(tmp_path):
    bag = write_bag(tmp_path / 'bag', image_times=[0.5])
    extrinsic = np.eye(4)
    extrinsic[:3, :3] = Rotation.from_euler('z', np.pi / 2).as_matrix()  # camera looks left
    extrinsic[:3, 3] = [0.2, 0.3, 1.0]
    (frame,) = list(RosbagReader(bag, T_vehicle_camera=extrinsic))
    vehicle = np.eye(4)
    vehicle[:3, :3] = Rotation.from_euler('z', 0.05).as_matrix()
    vehicle[0, 3] = 0.5
    # Hand-computed: position = vehicle position + R(0.05) @ (0.2, 0.3, 1.0); yaw 0.05 + pi/2.
    c, s = math.cos(0.05), math.sin(0.05)
    position = [0.5 + 0.2 * c - 0.3 * s, 0.2 * s + 0.3 * c, 1.0]
    assert np.allclose(frame.pose[:3], position, atol=1e-9)
    yaw = Rotation.from_quat(frame.pose[3:]).as_euler('xyz')[2]
    assert yaw == pytest.approx(0.05 + np.pi / 2, abs=1e-9)
    # The same extrinsic given as a 7-vector pose.
    as_pose = np.concatenate([extrinsic[:3, 3], Rotation.from_matrix(extrinsic[:3, :3]).as_quat()])
    (again,) = list(RosbagReader(bag, T_vehicle_camera=as_pose))
    assert np.allclose(again.pose, frame.pose, atol=1e-12)
    with pytest.raises(ValueError, match='T_vehicle_camera must be'):
        RosbagReader(bag, T_vehicle_camera=np.eye(3))
    with pytest.raises(ValueError, match='T_vehicle_camera must be None'):
        RosbagReader(bag, T_vehicle_camera='tf')


def test_forced_tf_static_and_optical_override(tmp_path):
    bag = write_bag(tmp_path / 'bag', image_frame='camera_link', image_times=[0.5])
    (frame,) = list(RosbagReader(bag, T_vehicle_camera='tf_static'))
    assert np.allclose(pose_to_matrix(frame.pose), expected_camera(0.5), atol=1e-6)
    # Declaring camera_link optical applies the optical -> body rotation on top.
    (optical,) = list(RosbagReader(bag, optical=True))
    expected = expected_camera(0.5) @ np.linalg.inv(T_camera_optical())
    assert np.allclose(pose_to_matrix(optical.pose), expected, atol=1e-6)
    # Pose of the vehicle == image frame: identity, unless tf_static is forced (no chain needed).
    bag2 = write_bag(tmp_path / 'bag2', tf=False, image_frame='base_link', image_times=[0.5])
    with pytest.raises(ValueError, match='/tf_static is missing or empty'):
        list(RosbagReader(bag2, T_vehicle_camera='tf_static'))


def test_read_poses_matches_iteration_without_decoding(tmp_path, monkeypatch):
    bag = write_bag(tmp_path / 'bag', pose_times=[0.0, 0.1, 0.2, 0.8, 0.9],
                    image_times=[0.05, 0.5, 0.85])
    frames = list(RosbagReader(bag))
    import imposing_ros.data.rosbag as rosbag_module

    def no_decoding(*args, **kwargs):
        raise AssertionError('read_poses decoded an image')

    monkeypatch.setattr(rosbag_module, 'decode_image', no_decoding)
    stamps, poses = read_poses(bag)
    assert stamps.tolist() == [f.stamp_ns for f in frames]
    assert np.allclose(poses, np.stack([f.pose for f in frames]), atol=1e-12)


def test_header_from_cdr_reads_stamp_and_frame():
    msg = T['sensor_msgs/msg/CompressedImage'](header=header(12 * 10**9 + 34, 'cam_x'),
                                                format='png', data=np.zeros(5, np.uint8))
    raw = STORE.serialize_cdr(msg, 'sensor_msgs/msg/CompressedImage')
    assert header_from_cdr(raw) == (12 * 10**9 + 34, 'cam_x')
    with pytest.raises(ValueError):
        header_from_cdr(b'\x00\x01')


def test_batched_slerp_matches_scipy():
    rng = np.random.default_rng(0)
    q0 = Rotation.random(50, random_state=1)
    q1 = Rotation.random(50, random_state=2)
    frac = rng.uniform(0, 1, 50)
    ours = slerp(q0.as_quat(), q1.as_quat(), frac)
    for k in range(50):
        ref = Slerp([0.0, 1.0], Rotation.concatenate([q0[k], q1[k]]))([frac[k]]).as_quat()[0]
        assert abs(ours[k] @ ref) == pytest.approx(1.0, abs=1e-9)
    same = slerp(q0.as_quat()[:1], q0.as_quat()[:1], np.array([0.4]))
    assert np.allclose(np.abs(same @ q0.as_quat()[0]), 1.0)


def test_pose_track_gap_rules():
    track = PoseTrack.build([0, 100, 300], np.tile([0, 0, 0, 0, 0, 0, 1.0], (3, 1)), 'x')
    # Valid: on a sample, or between two samples both within max_gap (no extrapolation).
    _, valid = track.at(np.array([-1, 0, 50, 100, 140, 200, 300, 301]), max_gap_ns=150)
    assert valid.tolist() == [False, True, True, True, False, True, True, False]
    _, valid = track.at(np.array([140]), max_gap_ns=160)
    assert valid.tolist() == [True]
    with pytest.raises(ValueError, match='x: zero quaternion'):
        PoseTrack.build([0], [[0, 0, 0, 0, 0, 0, 0]], 'x')
    with pytest.raises(ValueError, match='x: NaN'):
        PoseTrack.build([0], [[np.nan, 0, 0, 0, 0, 0, 1]], 'x')


@pytest.mark.parametrize('encoding', ['rgb8', 'bgr8', 'mono8', None])
def test_reader_and_node_see_the_same_pixels(tmp_path, encoding):
    """One decoder: a recorded image read by the reader equals the node's live conversion."""
    rclpy_msgs = pytest.importorskip('sensor_msgs.msg')
    from rosbags.highlevel import AnyReader

    from imposing_ros.data.images import message_to_rgb

    bag = write_bag(tmp_path / 'bag', raw_encoding=encoding, image_times=[0.5])
    (frame,) = list(open_dataset(str(bag)))
    with AnyReader([bag]) as reader:
        conn = next(c for c in reader.connections if c.topic == '/cam')
        (_, _, raw), = list(reader.messages(connections=[conn]))
        recorded = reader.deserialize(raw, conn.msgtype)
    # The node's message: the same fields in an rclpy message, as DDS would deliver it.
    if encoding is None:
        live = rclpy_msgs.CompressedImage(format=recorded.format, data=bytes(recorded.data))
    else:
        live = rclpy_msgs.Image(height=recorded.height, width=recorded.width,
                                encoding=recorded.encoding, is_bigendian=recorded.is_bigendian,
                                step=recorded.step, data=bytes(recorded.data))
    assert np.array_equal(frame.image, message_to_rgb(live))
    if encoding == 'mono8':
        assert np.array_equal(frame.image[..., 0], frame.image[..., 2])


# --- bad input --------------------------------------------------------------------------------

@pytest.mark.parametrize('storage', [StoragePlugin.MCAP, StoragePlugin.SQLITE3])
def test_truncated_bag_names_file_or_topic(tmp_path, storage):
    bag = write_bag(tmp_path / 'bag', storage, image_times=list(np.arange(0.0, 1.0, 0.01)))
    (data_file,) = [p for p in bag.iterdir() if p.suffix in ('.mcap', '.db3')]
    cut = tmp_path / f'cut{data_file.suffix}'
    cut.write_bytes(data_file.read_bytes()[:len(data_file.read_bytes()) // 2])
    with pytest.raises(ValueError, match=rf'cut\{data_file.suffix}: (not a readable rosbag2|'
                                         rf'cannot read topic /cam)'):
        list(RosbagReader(cut, pose_topic='/gt'))


def test_missing_topics_and_unknown_types(tmp_path):
    bag = write_bag(tmp_path / 'bag')
    with pytest.raises(ValueError, match=r'bag: pose topic /odom not found; topics: /cam, /gt'):
        RosbagReader(bag, pose_topic='/odom')
    with pytest.raises(ValueError, match=r'bag: pose topic /tf not found'):
        RosbagReader(bag, pose_topic='/tf')
    with pytest.raises(ValueError, match=r'image topic /gt has type geometry_msgs/msg/Pose'):
        RosbagReader(bag, image_topic='/gt')
    # A message type the reader does not know, defined in the bag itself.
    odd = tmp_path / 'odd'
    store = get_typestore(Stores.ROS2_KILTED)
    store.register(get_types_from_msg('float64 x\nfloat64 y\n', 'my_msgs/msg/Fix'))
    with Writer(odd, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        conn = writer.add_connection('/fix', 'my_msgs/msg/Fix', typestore=store)
        writer.write(conn, 1, store.serialize_cdr(store.types['my_msgs/msg/Fix'](x=1.0, y=2.0),
                                                  'my_msgs/msg/Fix'))
        img = writer.add_connection('/cam', 'sensor_msgs/msg/CompressedImage', typestore=STORE)
        writer.write(img, 1, STORE.serialize_cdr(T['sensor_msgs/msg/CompressedImage'](
            header=header(1, 'cam'), format='png', data=np.zeros(3, np.uint8)),
            'sensor_msgs/msg/CompressedImage'))
    with pytest.raises(ValueError, match=r'odd: pose topic /fix has type my_msgs/msg/Fix; '
                                         r'supported: geometry_msgs'):
        RosbagReader(odd, pose_topic='/fix')
    with pytest.raises(ValueError, match=r'odd: no pose topic'):
        RosbagReader(odd)


def test_empty_topics_and_ambiguous_choice(tmp_path):
    bag = tmp_path / 'bag'
    with Writer(bag, version=9, storage_plugin=StoragePlugin.SQLITE3) as writer:
        writer.add_connection('/cam', 'sensor_msgs/msg/CompressedImage', typestore=STORE)
        writer.add_connection('/gt', 'geometry_msgs/msg/PoseStamped', typestore=STORE)
    with pytest.raises(ValueError, match=r'bag: topic /cam has no messages'):
        RosbagReader(bag)
    two = write_bag(tmp_path / 'two')
    extra = write_bag(tmp_path / 'two_b', pose_topic='/other')
    del extra
    amb = tmp_path / 'amb'
    with Writer(amb, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        for topic in ('/gt_a', '/gt_b'):
            conn = writer.add_connection(topic, 'geometry_msgs/msg/PoseStamped', typestore=STORE)
            writer.write(conn, 1, STORE.serialize_cdr(T['geometry_msgs/msg/PoseStamped'](
                header=header(1, 'map'), pose=pose_msg(0, 0)), 'geometry_msgs/msg/PoseStamped'))
        img = writer.add_connection('/cam', 'sensor_msgs/msg/CompressedImage', typestore=STORE)
        writer.write(img, 1, STORE.serialize_cdr(T['sensor_msgs/msg/CompressedImage'](
            header=header(1, 'cam'), format='png', data=np.zeros(3, np.uint8)),
            'sensor_msgs/msg/CompressedImage'))
    with pytest.raises(ValueError, match=r'several pose topics \(/gt_a, /gt_b\)'):
        RosbagReader(amb)
    assert RosbagReader(amb, pose_topic='/gt_b').pose_topic == '/gt_b'
    assert RosbagReader(two).pose_topic == '/gt'  # a ground-truth name is preferred


def test_undecodable_image_names_file_topic_and_stamp(tmp_path):
    bag = tmp_path / 'bag'
    with Writer(bag, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        pose = writer.add_connection('/gt', 'geometry_msgs/msg/PoseStamped', typestore=STORE)
        for t in (0, 10**8):
            writer.write(pose, t + 1, STORE.serialize_cdr(T['geometry_msgs/msg/PoseStamped'](
                header=header(S0 * 10**9 + t, 'map'), pose=pose_msg(0, 0)),
                'geometry_msgs/msg/PoseStamped'))
        img = writer.add_connection('/cam', 'sensor_msgs/msg/CompressedImage', typestore=STORE)
        writer.write(img, 5, STORE.serialize_cdr(T['sensor_msgs/msg/CompressedImage'](
            header=header(S0 * 10**9 + 5 * 10**7, 'base_link'), format='jpeg',
            data=np.frombuffer(b'not a jpeg', np.uint8)), 'sensor_msgs/msg/CompressedImage'))
    with pytest.raises(ValueError, match=rf'bag:/cam@{S0 * 10**9 + 5 * 10**7}: cannot decode'):
        list(RosbagReader(bag))


def test_summary_text_and_open_dataset_options(tmp_path):
    bag = write_bag(tmp_path / 'bag', pose_times=[0.0, 0.1, 1.0], image_times=[0.05, 0.6])
    reader = open_dataset(f'{bag}?max_gap=0.3&pose=/gt&extrinsic=tf_static')
    assert reader.max_gap_ns == 300_000_000 and reader.T_vehicle_camera == 'tf_static'
    assert len(list(reader)) == 1
    assert str(reader.summary) == '2 images read, 1 kept, dropped: 1 no pose within max_gap_s'
    reader = open_dataset(bag, image_topic='/cam', max_gap_s=1.0)
    assert len(list(reader)) == 2
    with pytest.raises(ValueError, match='unknown rosbag option'):
        open_dataset(bag, colour='red')
    with pytest.raises(ValueError, match='option max_gap'):
        open_dataset(f'{bag}?max_gap=soon')


def test_damaged_bag_body_names_file_and_topic(tmp_path):
    bag = write_bag(tmp_path / 'bag', image_times=list(np.arange(0.0, 1.0, 0.01)))
    (data_file,) = bag.glob('*.mcap')
    data = bytearray(data_file.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 2000] = b'\xff' * 2000  # header and summary intact, a chunk broken
    damaged = tmp_path / 'damaged.mcap'
    damaged.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r'damaged.mcap: cannot read topic /(cam|gt) '
                                         r'\(truncated or damaged bag\?\)'):
        list(RosbagReader(damaged, pose_topic='/gt'))
