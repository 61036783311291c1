"""What the localizer node takes in: its subscriptions and the poses it accepts as priors."""

from __future__ import annotations

from geometry_msgs.msg import PoseWithCovarianceStamped
from rclpy.qos import QoSDurabilityPolicy, QoSHistoryPolicy, QoSProfile, QoSReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image

from imposing_ros.localization.priors import Prior
from imposing_ros.nodes.conversions import check_pose_with_covariance, frame_scene, scene_frame


def image_topic(s) -> str:
    """The image topic of settings ``s`` (``<image_topic>/compressed`` for compressed)."""
    return s.image_topic + ('/compressed' if s.image_transport == 'compressed' else '')


def subscribe(node, s, group, on_image, on_prior, on_initial_pose) -> list:
    """Subscribe to images, the filter's prior and the initial pose; the subscriptions.

    Like every subscription of the node, no QoS event handlers (QuietSubscriptions): with them
    the executor wakes in a loop while images arrive (measured at 200 Hz of images: ~1,300 empty
    wake-ups/s, one core busy, inference 20x slower; none without handlers).
    """
    # Depth 1: only the newest frame is ever processed.
    reliability = (QoSReliabilityPolicy.RELIABLE if s.image_reliability == 'reliable'
                   else QoSReliabilityPolicy.BEST_EFFORT)
    image = node.create_subscription(
        CompressedImage if s.image_transport == 'compressed' else Image, image_topic(s),
        on_image, QoSProfile(depth=1, reliability=reliability, history=QoSHistoryPolicy.KEEP_LAST),
        callback_group=group)
    # Best effort, depth 1: only the newest prior matters, and it matches both reliable and
    # best-effort publishers.
    latest = QoSProfile(depth=1, reliability=QoSReliabilityPolicy.BEST_EFFORT,
                        history=QoSHistoryPolicy.KEEP_LAST)
    prior = node.create_subscription(PoseWithCovarianceStamped, s.prior_topic, on_prior, latest,
                                     callback_group=group)
    # Reliable and volatile like AMCL's: a transient-local subscription would not match RViz's
    # volatile '2D Pose Estimate' publisher.
    initial = node.create_subscription(
        PoseWithCovarianceStamped, s.initial_pose_topic, on_initial_pose,
        QoSProfile(depth=1, reliability=QoSReliabilityPolicy.RELIABLE,
                   durability=QoSDurabilityPolicy.VOLATILE), callback_group=group)
    return [image, prior, initial]


def map_pose(msg: PoseWithCovarianceStamped, map_frame: str, localizer,
             current_only: bool) -> Prior:
    """The base pose of ``msg`` in the map of one of ``localizer``'s scenes, or ValueError.

    ``map_frame`` is the node's pattern (``{scene}`` for several scenes); ``current_only``
    accepts the map of the scene in use only (the filter's prior).
    """
    scene = frame_scene(map_frame, msg.header.frame_id)
    if scene == '':  # a map frame without {scene}: the only scene
        scene = localizer.scene or localizer.scenes[0]
    if current_only and localizer.scene is None:
        raise ValueError('no scene chosen yet (the first global search chooses it)')
    names = [localizer.scene] if current_only else localizer.scenes
    if scene is None or scene not in names:
        frames = [scene_frame(map_frame, name) for name in names]
        raise ValueError(f"frame_id is '{msg.header.frame_id}', expected one of {frames}")
    matrix, covariance = check_pose_with_covariance(msg, scene_frame(map_frame, scene))
    return Prior(matrix, covariance, scene)
