"""A benchmark's result as a rosbag2 (MCAP) to replay in RViz or Foxglove, written with rosbags.

Topics, every message stamped with its frame's stamp, in the ``map`` frame:

* ``/camera/image/compressed`` sensor_msgs/CompressedImage (JPEG of the input image);
* ``/ground_truth/pose`` geometry_msgs/PoseStamped, the true camera pose;
* ``/<method>/pose`` geometry_msgs/PoseStamped per method (frames without a pose: no message);
* ``/<method>/pose_with_covariance`` geometry_msgs/PoseWithCovarianceStamped where the method
  published a covariance (ImPosing, retrieval);
* ``/<method>/candidates`` visualization_msgs/MarkerArray: the top candidates the pose was
  averaged from (a POINTS marker coloured by score), for methods that have several.

Poses are ``T_map_camera`` of the camera body frame (x forward, y left, z up), as the readers
give them; quaternions (x, y, z, w). The bag is a folder (``metadata.yaml`` and one
``.mcap`` file) that ``ros2 bag play`` and Foxglove open.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

MAP_FRAME = 'map'
IMAGE_TOPIC = '/camera/image/compressed'
TRUTH_TOPIC = '/ground_truth/pose'


def write_result_bag(path: str | Path, frames: list, evaluations: dict) -> Path:
    """Write ``frames`` and each method's per-frame results (``{name: Evaluation}``)."""
    import cv2
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import get_typestore, Stores

    store = get_typestore(Stores.ROS2_KILTED)
    t = store.types
    path = Path(path)
    writer = Writer(path, version=9, storage_plugin=StoragePlugin.MCAP)
    writer.open()
    try:
        def connect(topic, msgtype):
            return writer.add_connection(topic, msgtype, typestore=store)

        image_conn = connect(IMAGE_TOPIC, 'sensor_msgs/msg/CompressedImage')
        truth_conn = connect(TRUTH_TOPIC, 'geometry_msgs/msg/PoseStamped')
        conns = {}
        for name in evaluations:
            topic = '/' + name.replace(':', '_').replace(' ', '_')
            conns[name] = (connect(f'{topic}/pose', 'geometry_msgs/msg/PoseStamped'),
                           connect(f'{topic}/pose_with_covariance',
                                   'geometry_msgs/msg/PoseWithCovarianceStamped'),
                           connect(f'{topic}/candidates', 'visualization_msgs/msg/MarkerArray'))

        def write(conn, stamp, msg):
            writer.write(conn, stamp, store.serialize_cdr(msg, msg.__msgtype__))

        def header(stamp, frame=MAP_FRAME):
            return t['std_msgs/msg/Header'](stamp=t['builtin_interfaces/msg/Time'](
                sec=int(stamp // 10**9), nanosec=int(stamp % 10**9)), frame_id=frame)

        def pose(p):
            return t['geometry_msgs/msg/Pose'](
                position=t['geometry_msgs/msg/Point'](x=float(p[0]), y=float(p[1]),
                                                      z=float(p[2])),
                orientation=t['geometry_msgs/msg/Quaternion'](x=float(p[3]), y=float(p[4]),
                                                              z=float(p[5]), w=float(p[6])))

        for i, frame in enumerate(frames):
            stamp = int(frame.stamp_ns)
            ok, jpeg = cv2.imencode('.jpg', np.ascontiguousarray(frame.image[..., ::-1]),
                                    [cv2.IMWRITE_JPEG_QUALITY, 85])
            if not ok:
                raise ValueError(f'{frame.source}: the image could not be encoded as JPEG')
            write(image_conn, stamp, t['sensor_msgs/msg/CompressedImage'](
                header=header(stamp, 'camera'), format='jpeg',
                data=np.frombuffer(jpeg.tobytes(), np.uint8)))
            write(truth_conn, stamp, t['geometry_msgs/msg/PoseStamped'](
                header=header(stamp), pose=pose(frame.pose)))
            for name, evaluation in evaluations.items():
                estimate = evaluation.estimates[i]
                if not np.isfinite(estimate).all():
                    continue  # a miss: nothing was published
                pose_conn, cov_conn, cand_conn = conns[name]
                write(pose_conn, stamp, t['geometry_msgs/msg/PoseStamped'](
                    header=header(stamp), pose=pose(estimate)))
                covariance = evaluation.covariances[i]
                if np.isfinite(covariance).all():
                    write(cov_conn, stamp, t['geometry_msgs/msg/PoseWithCovarianceStamped'](
                        header=header(stamp), pose=t['geometry_msgs/msg/PoseWithCovariance'](
                            pose=pose(estimate), covariance=covariance.ravel().astype(float))))
                candidates = evaluation.candidates[i]
                if candidates is not None and len(candidates) > 1:
                    write(cand_conn, stamp, _marker_array(t, header(stamp), candidates, name))
    finally:
        writer.close()
    return path


def _marker_array(t, header, candidates: np.ndarray, name: str):
    """One POINTS marker of the candidate positions, brighter for the better ranked."""
    rank = np.linspace(1.0, 0.2, len(candidates))
    points = [t['geometry_msgs/msg/Point'](x=float(c[0]), y=float(c[1]), z=float(c[2]))
              for c in candidates]
    colors = [t['std_msgs/msg/ColorRGBA'](r=float(v), g=float(0.3 * v), b=float(1 - v), a=0.9)
              for v in rank]
    zero = t['builtin_interfaces/msg/Duration'](sec=0, nanosec=0)
    marker = t['visualization_msgs/msg/Marker'](
        header=header, ns=name, id=0, type=8, action=0,  # POINTS, ADD
        pose=t['geometry_msgs/msg/Pose'](
            position=t['geometry_msgs/msg/Point'](x=0.0, y=0.0, z=0.0),
            orientation=t['geometry_msgs/msg/Quaternion'](x=0.0, y=0.0, z=0.0, w=1.0)),
        scale=t['geometry_msgs/msg/Vector3'](x=0.5, y=0.5, z=0.0),
        color=t['std_msgs/msg/ColorRGBA'](r=1.0, g=1.0, b=1.0, a=1.0), lifetime=zero,
        frame_locked=False, points=points, colors=colors, text='', mesh_resource='',
        texture_resource='', texture=t['sensor_msgs/msg/CompressedImage'](
            header=header, format='', data=np.zeros(0, np.uint8)),
        uv_coordinates=[], mesh_file=t['visualization_msgs/msg/MeshFile'](
            filename='', data=np.zeros(0, np.uint8)), mesh_use_embedded_materials=False)
    return t['visualization_msgs/msg/MarkerArray'](markers=[marker])
