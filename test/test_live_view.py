"""The Foxglove live view: real DDS in, a real WebSocket client (Foxglove protocol) out.

foxglove.messages objects expose no fields to Python; a conversion is checked by comparing its
encoded bytes with those of the message written out here by hand, field by field.
"""

import argparse
import json
import math
from pathlib import Path
import struct
import sys
import time

import pytest

foxglove = pytest.importorskip(
    'foxglove', reason='foxglove-sdk is not installed (pip install foxglove-sdk)')
import foxglove.messages as fm  # noqa: E402
from geometry_msgs.msg import PoseStamped, PoseWithCovarianceStamped  # noqa: E402
import rclpy  # noqa: E402
from rclpy.qos import qos_profile_sensor_data, QoSProfile, QoSReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import CompressedImage  # noqa: E402
from std_msgs.msg import ColorRGBA, Float32  # noqa: E402
from visualization_msgs.msg import Marker, MarkerArray  # noqa: E402
from websockets.exceptions import InvalidStatus  # noqa: E402
from websockets.sync.client import connect  # noqa: E402

from imposing_ros.nodes import demo, live_view, runner  # noqa: E402
from imposing_ros.nodes.conversions import ns_to_stamp  # noqa: E402

pytestmark = pytest.mark.ros
ROOT = Path(__file__).resolve().parents[1]
RELIABLE = QoSProfile(depth=10, reliability=QoSReliabilityPolicy.RELIABLE)
STAMP_NS = 1_700_000_123_456_789_000
# A quaternion with four different components: a swapped order would show.
QUAT_XYZW = (0.1, 0.2, 0.3, math.sqrt(1 - 0.01 - 0.04 - 0.09))
JPEG = b'\xff\xd8\xff\xe0' + bytes(range(60))
EXPECTED_CHANNELS = {
    '/imposing_localizer/pose': 'foxglove.PoseInFrame',
    '/imposing_localizer/pose/covariance': 'foxglove.SceneUpdate',
    '/imposing_localizer/pose/trajectory': 'foxglove.PosesInFrame',
    '/imposing_live_view/tf': 'foxglove.FrameTransforms',
    '/imposing_localizer/candidates': 'foxglove.SceneUpdate',
    '/imposing_localizer/score': 'std_msgs/Float32',
    '/camera/image_raw/compressed': 'foxglove.CompressedImage',
    '/ground_truth/pose': 'foxglove.PoseInFrame',
    '/ground_truth/pose/trajectory': 'foxglove.PosesInFrame',
}


def fg_stamp(ns=STAMP_NS):
    return fm.Timestamp(sec=ns // 10**9, nsec=ns % 10**9)


def fg_pose(x, y, z, q=QUAT_XYZW):
    return fm.Pose(position=fm.Vector3(x=x, y=y, z=z),
                   orientation=fm.Quaternion(x=q[0], y=q[1], z=q[2], w=q[3]))


def pose_msg(x=10.0, y=-4.0, z=1.5, covariance=None):
    msg = PoseWithCovarianceStamped()
    msg.header.frame_id, msg.header.stamp = 'map', ns_to_stamp(STAMP_NS)
    p, q = msg.pose.pose.position, msg.pose.pose.orientation
    p.x, p.y, p.z = x, y, z
    q.x, q.y, q.z, q.w = QUAT_XYZW
    cov = covariance if covariance is not None else [0.0] * 36
    if covariance is None:
        cov[0], cov[7], cov[14], cov[21], cov[28], cov[35] = 4.0, 1.0, 0.1, 0.01, 0.01, 0.02
    msg.pose.covariance = [float(c) for c in cov]
    return msg


def marker_array():
    arrow = Marker(ns='candidates', id=3, type=Marker.ARROW, action=Marker.ADD)
    arrow.header.frame_id, arrow.header.stamp = 'map', ns_to_stamp(STAMP_NS)
    arrow.pose = pose_msg().pose.pose
    arrow.scale.x, arrow.scale.y, arrow.scale.z = 2.0, 0.25, 0.25
    arrow.color = ColorRGBA(r=1.0, g=0.5, b=0.0, a=0.75)
    label = Marker(ns='estimate', id=1, type=Marker.TEXT_VIEW_FACING, action=Marker.ADD,
                   text='global 0.75')
    label.header = arrow.header
    label.pose = pose_msg().pose.pose
    label.scale.z = 1.5
    label.color = ColorRGBA(r=1.0, g=1.0, b=1.0, a=1.0)
    strip = Marker(ns='other', id=0, type=Marker.LINE_STRIP, action=Marker.ADD)
    return MarkerArray(markers=[Marker(action=Marker.DELETEALL), arrow, label, strip])


def expected_markers():
    """The SceneUpdate of marker_array(), written out from the RViz proportions.

    Colours are float32 in ROS: values exact in float32 compare equal after DDS.
    """
    stamp = fg_stamp()
    color = fm.Color(r=1.0, g=0.5, b=0.0, a=0.75)
    arrow = fm.ArrowPrimitive(pose=fg_pose(10.0, -4.0, 1.5), shaft_length=0.77 * 2.0,
                              shaft_diameter=0.25, head_length=0.23 * 2.0,
                              head_diameter=2.0 * 0.25, color=color)
    text = fm.TextPrimitive(pose=fg_pose(10.0, -4.0, 1.5), billboard=True, font_size=1.5,
                            scale_invariant=False, color=fm.Color(r=1.0, g=1.0, b=1.0, a=1.0),
                            text='global 0.75')
    forever = fm.Duration(sec=0, nsec=0)
    return fm.SceneUpdate(
        deletions=[fm.SceneEntityDeletion(timestamp=fm.Timestamp(sec=0, nsec=0),
                                          type=fm.SceneEntityDeletionType.All)],
        entities=[fm.SceneEntity(timestamp=stamp, frame_id='map', id='candidates/3',
                                 lifetime=forever, frame_locked=False, arrows=[arrow]),
                  fm.SceneEntity(timestamp=stamp, frame_id='map', id='estimate/1',
                                 lifetime=forever, frame_locked=False, texts=[text])])


# --- conversions, no server -------------------------------------------------------------------

def test_markers_become_scene_entities_as_rviz_draws_them():
    update, skipped = live_view.scene_update(marker_array())
    assert update.encode() == expected_markers().encode()
    assert skipped == {Marker.LINE_STRIP}


def test_covariance_ellipse_is_the_95_percent_ellipse_of_xy():
    yaw = math.radians(30)
    c, s = math.cos(yaw), math.sin(yaw)
    rotation = [[c, -s], [s, c]]
    xy = [[sum(rotation[i][k] * (4.0, 1.0)[k] * rotation[j][k] for k in range(2))
           for j in range(2)] for i in range(2)]
    cov = [0.0] * 36
    cov[0], cov[1], cov[6], cov[7] = xy[0][0], xy[0][1], xy[1][0], xy[1][1]
    got_yaw, major, minor = live_view.ellipse_xy95(cov)
    assert math.isclose(math.remainder(got_yaw - yaw, math.pi), 0.0, abs_tol=1e-9)
    chi2 = 5.991464547107979  # chi2.ppf(0.95, 2)
    assert math.isclose(major, 2 * math.sqrt(chi2 * 4.0))
    assert math.isclose(minor, 2 * math.sqrt(chi2 * 1.0))
    with pytest.raises(ValueError):
        live_view.ellipse_xy95([math.nan] * 36)


def test_image_format_names_what_foxglove_reads():
    assert live_view.image_format(CompressedImage(format='rgb8; jpeg compressed bgr8')) == 'jpeg'
    assert live_view.image_format(CompressedImage(format='png')) == 'png'
    assert live_view.image_format(CompressedImage(format='', data=JPEG)) == 'jpeg'


def test_a_missing_foxglove_sdk_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, 'foxglove', None)
    with pytest.raises(RuntimeError, match='pip install foxglove-sdk'):
        live_view.require_foxglove()
    with pytest.raises(RuntimeError, match='pip install foxglove-sdk'):
        live_view.LiveView(port=0)


@pytest.mark.parametrize('module', [demo, runner])
def test_foxglove_option(module):
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    assert parser.parse_args([]).foxglove is None
    assert parser.parse_args(['--foxglove']).foxglove == live_view.DEFAULT_PORT
    assert parser.parse_args(['--foxglove', '9001']).foxglove == 9001


# --- the view over DDS and WebSocket ----------------------------------------------------------

class Driver:
    """Publishers of what the localizer, the camera and the bag publish, in a context of theirs."""

    def __init__(self):
        self.context = rclpy.Context()
        rclpy.init(args=[], context=self.context)
        self.node = rclpy.create_node('live_view_test_driver', context=self.context)
        self.pubs = {
            'pose': self.node.create_publisher(PoseWithCovarianceStamped,
                                               '/imposing_localizer/pose', RELIABLE),
            'candidates': self.node.create_publisher(MarkerArray,
                                                     '/imposing_localizer/candidates',
                                                     RELIABLE),
            'score': self.node.create_publisher(Float32, '/imposing_localizer/score', RELIABLE),
            'image': self.node.create_publisher(CompressedImage, '/camera/image_raw/compressed',
                                                qos_profile_sensor_data),
            'truth': self.node.create_publisher(PoseStamped, '/ground_truth/pose', RELIABLE),
        }

    def matched(self):
        return all(p.get_subscription_count() > 0 for p in self.pubs.values())

    def publish_all(self, i):
        self.pubs['pose'].publish(pose_msg())
        self.pubs['candidates'].publish(marker_array())
        self.pubs['score'].publish(Float32(data=0.75))
        image = CompressedImage(format='rgb8; jpeg compressed bgr8', data=JPEG)
        image.header.frame_id, image.header.stamp = 'camera_optical_frame', ns_to_stamp(STAMP_NS)
        self.pubs['image'].publish(image)
        truth = PoseStamped()
        truth.header.frame_id, truth.header.stamp = 'map', ns_to_stamp(STAMP_NS)
        truth.pose = pose_msg(x=11.0 + i).pose.pose
        self.pubs['truth'].publish(truth)

    def close(self):
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)


def layout_topics(layout):
    """Every topic config/foxglove_layout.json refers to."""
    topics = set()
    for config in layout['configById'].values():
        topics.update(config.get('topics', {}))
        if 'imageMode' in config:
            topics.add(config['imageMode']['imageTopic'])
        topics.update(path['value'].split('.')[0] for path in config.get('paths', ()))
    return topics


def mosaic_leaves(node):
    if isinstance(node, str):
        return [node]
    return mosaic_leaves(node['first']) + mosaic_leaves(node['second'])


def test_view_serves_the_localizer_to_a_foxglove_client():
    started = time.monotonic()
    view = live_view.LiveView(port=0, image_topic='camera/image_raw',
                              image_transport='compressed')
    driver = Driver()
    try:
        url = f'ws://127.0.0.1:{view.port}'
        # foxglove-sdk 0.30 speaks the Foxglove WebSocket protocol under its new name
        # foxglove.sdk.v1 only: a client that offers nothing but foxglove.websocket.v1 (older
        # Foxglove or Lichtblick releases) is refused.
        with pytest.raises(InvalidStatus):
            with connect(url, subprotocols=['foxglove.websocket.v1'], open_timeout=5):
                pass
        with connect(url, subprotocols=['foxglove.sdk.v1', 'foxglove.websocket.v1'],
                     open_timeout=5) as ws:
            assert ws.subprotocol == 'foxglove.sdk.v1'
            channels = {}
            while set(EXPECTED_CHANNELS) - set(channels):
                op = json.loads(ws.recv(timeout=5))
                if op['op'] == 'advertise':
                    channels.update({c['topic']: c for c in op['channels']})
            assert {t: channels[t]['schemaName'] for t in EXPECTED_CHANNELS} == EXPECTED_CHANNELS
            assert channels['/imposing_localizer/pose']['encoding'] == 'protobuf'
            assert channels['/imposing_localizer/score']['encoding'] == 'json'

            layout = json.loads((ROOT / 'config' / 'foxglove_layout.json').read_text())
            assert set(mosaic_leaves(layout['layout'])) == set(layout['configById'])
            assert layout_topics(layout) <= set(channels)

            by_sub = {i: topic for i, topic in enumerate(EXPECTED_CHANNELS)}
            ws.send(json.dumps({'op': 'subscribe', 'subscriptions': [
                {'id': i, 'channelId': channels[t]['id']} for i, t in by_sub.items()]}))
            deadline = time.monotonic() + 10
            while not driver.matched():
                assert time.monotonic() < deadline, 'the view did not subscribe'
                time.sleep(0.05)
            received, i = {}, 0
            while set(EXPECTED_CHANNELS) - set(received) and time.monotonic() < deadline:
                driver.publish_all(i)
                i += 1
                end = time.monotonic() + 0.2
                while time.monotonic() < end:
                    try:
                        data = ws.recv(timeout=0.05)
                    except TimeoutError:
                        continue
                    if isinstance(data, bytes) and data[0] == 0x01:  # message data
                        sub, _log_time = struct.unpack_from('<IQ', data, 1)
                        received.setdefault(by_sub[sub], data[13:])
        assert not set(EXPECTED_CHANNELS) - set(received), 'no message on some channels'
    finally:
        driver.close()
        view.close()

    stamp = fg_stamp()
    assert received['/imposing_localizer/pose'] == fm.PoseInFrame(
        timestamp=stamp, frame_id='map', pose=fg_pose(10.0, -4.0, 1.5)).encode()
    q = QUAT_XYZW
    assert received['/imposing_live_view/tf'] == fm.FrameTransforms(transforms=[
        fm.FrameTransform(timestamp=stamp, parent_frame_id='map', child_frame_id='base_link',
                          translation=fm.Vector3(x=10.0, y=-4.0, z=1.5),
                          rotation=fm.Quaternion(x=q[0], y=q[1], z=q[2], w=q[3]))]).encode()
    assert received['/imposing_localizer/candidates'] == expected_markers().encode()
    assert json.loads(received['/imposing_localizer/score']) == {'data': 0.75}
    assert received['/camera/image_raw/compressed'] == fm.CompressedImage(
        timestamp=stamp, frame_id='camera_optical_frame', data=JPEG, format='jpeg').encode()
    assert received['/ground_truth/pose/trajectory'] == fm.PosesInFrame(
        timestamp=stamp, frame_id='map', poses=[fg_pose(11.0, -4.0, 1.5)]).encode()
    assert time.monotonic() - started < 30


def test_a_client_connecting_as_the_server_starts_gets_every_channel(monkeypatch):
    """A client that connects the moment the server listens is advertised all channels at once.

    Channels added after a client connected were refused as 'unknown channel' when it
    subscribed under load (foxglove-sdk 0.30), and that stream stayed empty.
    """
    start_server, first_advertised = foxglove.start_server, set()

    def start_and_connect(**kwargs):
        server = start_server(**kwargs)
        with connect(f'ws://127.0.0.1:{server.port}', subprotocols=['foxglove.sdk.v1'],
                     open_timeout=5) as ws:
            try:
                while True:
                    op = json.loads(ws.recv(timeout=1))
                    if op['op'] == 'advertise':
                        first_advertised.update(c['topic'] for c in op['channels'])
                        break
            except TimeoutError:  # nothing advertised
                pass
        return server

    monkeypatch.setattr(foxglove, 'start_server', start_and_connect)
    view = live_view.LiveView(port=0, image_topic='camera/image_raw',
                              image_transport='compressed')
    view.close()
    assert first_advertised == set(EXPECTED_CHANNELS)


def test_a_busy_port_is_a_clear_error_and_namespaces_apply():
    first = live_view.LiveView(port=0, truth_topic='')
    try:
        with pytest.raises(RuntimeError, match='cannot serve on 127.0.0.1'):
            live_view.LiveView(port=first.port)

        class Localizer:  # what beside() reads of a LocalizerNode
            values = {'image_topic': 'cam/image', 'image_transport': 'raw',
                      'base_frame': 'base_footprint', 'use_sim_time': True}

            def get_parameter(self, name):
                return rclpy.parameter.Parameter(name, value=self.values[name])

            def get_namespace(self):
                return '/robot1'

        node = live_view.beside(Localizer(), port=0, context=first.context)
        try:
            assert node._pose_ch.topic() == '/robot1/imposing_localizer/pose'
            assert node._image_ch.topic() == '/robot1/cam/image'
            assert node._image_ch.schema_name() == 'foxglove.RawImage'
            assert node._tf_ch.topic() == '/robot1/imposing_live_view/tf'
            assert node.get_parameter('base_frame').value == 'base_footprint'
            assert first.node._truth_ch is None
            # No QoS event handlers, /clock (use_sim_time) included (docs/design.md).
            handlers = {sub.topic_name: len(sub.event_handlers) for sub in node.subscriptions}
            assert '/clock' in handlers and set(handlers.values()) == {0}, handlers
        finally:
            node.destroy_node()
    finally:
        first.close()
