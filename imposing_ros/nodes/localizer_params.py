"""Parameters of the localizer node: one table (name, default, description, check).

Defaults of the search and tracking settings come from :class:`SearchConfig` and
:class:`LocalizerConfig` (one source of truth); ``config/localizer.yaml`` documents them and a
test keeps it in step.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from imposing_ros.localization.localizer import LocalizerConfig
from imposing_ros.localization.scenes import DEFAULT_SWITCH_FRAMES
from imposing_ros.nodes import params
from imposing_ros.nodes.conversions import check_map_frame
from imposing_ros.runtime.select import (
    BACKENDS,
    DEFAULT_BACKEND,
    DEFAULT_INDUCTOR,
    INDUCTOR_CHOICES,
)

DEVICES = ('auto', 'cpu', 'cuda')
TRANSPORTS = ('raw', 'compressed')
_DEFAULTS = LocalizerConfig()
_SEARCH = _DEFAULTS.search


def _device(value):
    if value in DEVICES or (value.startswith('cuda:') and value[5:].isdigit()):
        return None
    return 'must be auto, cpu, cuda or cuda:N'


# (name, default, description, check or None). Read at on_configure; a change while configured
# takes effect at the next configure (deactivate, cleanup, configure, activate), except for the
# LIVE ones, read again for every frame.
PARAMETERS = (
    ('model_path', '', "ImPosing checkpoint file (.pt) loaded at configure (empty: the package's "
     'models/helsinki_demo.pt)', None),
    ('scene', '', 'scene of the model to localize in: a name, auto (every scene is searched on '
     'global frames; the best-scoring one is kept, with hysteresis) or empty (the only scene of '
     'a single-scene model)', params.nonblank_or_empty),
    ('scene_switch_frames', DEFAULT_SWITCH_FRAMES, 'with scene auto: consecutive global searches '
     'another scene must win before the node switches to it', params.at_least(1)),
    ('device', 'auto', 'inference device: auto (cuda if available, else cpu), cpu, cuda, cuda:N',
     _device),
    ('backend', DEFAULT_BACKEND, 'inference backend: auto (tensorrt on CUDA when torch-tensorrt '
     'imports, else torch-fp16; on a CPU the fastest of fp32, bf16 and int8 whose codes agree '
     'with fp32, timed at the first configure and cached per CPU and model), torch (fp32), '
     'torch-bf16, torch-fp16, torch-int8 (CPU; programs from imposing-ros export --format int8 '
     'in engine_cache, or built from calibration images the model carries), tensorrt',
     params.one_of(BACKENDS)),
    ('inductor', DEFAULT_INDUCTOR, 'compile the torch backends with inductor (first configure '
     'takes seconds longer): auto (on a CPU with a C++ compiler), on, off',
     params.one_of(INDUCTOR_CHOICES)),
    ('engine_cache', '', 'folder of the compiled programs of the torch-int8 and tensorrt '
     'backends (imposing-ros export --format int8 / tensorrt); empty: '
     '~/.cache/imposing_ros/int8 or ~/.cache/imposing_ros/tensorrt', None),
    ('image_topic', 'camera/image_raw',
     'raw image topic; with image_transport compressed, <image_topic>/compressed is used',
     params.nonempty),
    ('image_transport', 'raw', 'raw (sensor_msgs/Image) or compressed (CompressedImage)',
     params.one_of(TRANSPORTS)),
    ('image_reliability', 'best_effort', 'QoS reliability of the image subscription: '
     'best_effort (sensor data; matches every publisher) or reliable (lost fragments of large '
     'images are resent, e.g. from another host; matches reliable publishers only)',
     params.one_of(('best_effort', 'reliable'))),
    ('prior_topic', 'imposing_motion_filter/prior',
     'PoseWithCovarianceStamped of base_link in map_frame seeding tracking mode', params.nonempty),
    ('initial_pose_topic', 'initialpose',
     "initial pose (RViz '2D Pose Estimate'): seeds one tracking search", params.nonempty),
    ('search.num_candidates', _SEARCH.num_candidates,
     'N: pose candidates scored per level', params.at_least(1)),
    ('search.levels', _SEARCH.levels,
     'K: levels of the global search (level 0 included)', params.at_least(1)),
    ('search.top_k', _SEARCH.top_k, 'B: top candidates kept as mixture components per level',
     params.at_least(1)),
    ('search.num_average', _SEARCH.num_average,
     'candidates of the last level averaged into the estimate',
     params.at_least(1)),
    ('search.sigma', list(_SEARCH.sigma),
     'proposer standard deviation at level 1: x, y, z (m), roll, pitch, yaw (deg)',
     params.finite_list(6, nonnegative=True)),
    ('search.converge_m', _SEARCH.converge_m,
     'early stop: refinement ends when the top candidates moved less '
     'than this (m) and converge_deg between levels; 0: always run every level',
     params.at_least(0.0)),
    ('search.converge_deg', _SEARCH.converge_deg,
     'early stop: rotation tolerance (deg); 0: no rotation test',
     params.at_least(0.0)),
    ('search.refine_share', _SEARCH.refine_share,
     "share of the last level's candidates drawn around the best candidate in translation "
     "only (rotation and covariance from the others); 0: the paper's search",
     params.in_range(0.0, 1.0)),
    ('search.refine_sigma_factor', _SEARCH.refine_sigma_factor,
     "translation deviation of those candidates, in multiples of the last level's",
     params.at_least(0.0, True)),
    ('min_score', 0.5, 'best score in [0, 1] under which no pose is published (next frame '
     'searches globally)', params.in_range(0.0, 1.0)),
    ('max_rate', 0.0, 'most frames processed per second (Hz); 0: as fast as possible',
     params.at_least(0.0)),
    ('max_image_age', 1.0, 'images older than this (s, node clock) are refused; 0: no check',
     params.at_least(0.0)),
    ('max_image_future', 0.5, 'images stamped more than this (s) after the node clock are '
     'refused and change nothing (a bad stamp would refuse every later frame as out of order)',
     params.at_least(0.0)),
    ('min_std', [0.05, 0.05, 0.05, 0.005, 0.005, 0.005],
     'added in quadrature to the published standard deviations (keeps the covariance '
     'positive definite): x, y, z (m), roll, pitch, yaw (rad)',
     params.finite_list(6, nonnegative=True)),
    ('map_frame', 'map', 'global frame of the published pose (REP-105); with several scenes '
     'it holds {scene}, one map frame per scene (e.g. map_{scene})', check_map_frame),
    ('odom_frame', 'odom', 'odometry frame; map->odom is published on /tf', params.nonempty),
    ('base_frame', 'base_link', 'robot body frame the published pose refers to', params.nonempty),
    ('camera_frame', 'camera_link', 'frame of the camera the extrinsic refers to',
     params.nonempty),
    ('camera_extrinsic.from_tf', False,
     'read base_frame->camera_frame from TF (needs tf2_ros) instead of xyz/rpy', None),
    ('camera_extrinsic.xyz', [0.0, 0.0, 0.0], 'camera_frame origin in base_frame (m)',
     params.finite_list(3)),
    ('camera_extrinsic.rpy', [0.0, 0.0, 0.0],
     'camera_frame orientation in base_frame: roll, pitch, yaw (rad, fixed axes)',
     params.finite_list(3)),
    ('camera_extrinsic.optical', False,
     'camera_frame is an optical frame (z forward, x right) rather than x forward, z up', None),
    ('publish_tf', True, 'publish map->odom on /tf (tf2_ros, or tf2_msgs in pip installs)', None),
    ('transform_tolerance', 0.5, 'map->odom is post-dated by this much (s), as in AMCL',
     params.at_least(0.0)),
    ('tracking.enabled', True, 'use a recent motion-filter prior to run a tracking search',
     None),
    ('tracking.levels', _DEFAULTS.tracking_levels,
     'levels of a tracking search (level 0 = candidates around the prior)',
     params.at_least(1)),
    ('tracking.prior_timeout', 0.5,
     'a prior more than this (s) away from the image stamp is not used',
     params.at_least(0.0, True)),
    ('tracking.min_sigma', list(_DEFAULTS.tracking_min_sigma),
     'floor of the prior standard deviation seeding tracking: x, y, z (m), r, p, y (deg)',
     params.finite_list(6, nonnegative=True)),
    ('markers.count', 50, 'top candidates drawn on ~/candidates', params.at_least(0)),
    ('diagnostic_period', 1.0, 'period of /diagnostics (s)', params.at_least(0.0, True)),
    ('seed', _DEFAULTS.seed,
     'seed of the candidate noise (same image, same pose)', params.at_least(0)),
    ('image_crop', _DEFAULTS.image_crop,
     "centre-crop images to the model's aspect ratio instead of stretching them (a camera "
     'other than the training one)', None),
)


LIVE = ('min_score', 'max_rate', 'max_image_age', 'max_image_future', 'min_std', 'markers.count',
        'tracking.enabled', 'tracking.prior_timeout', 'transform_tolerance')


@dataclass(frozen=True)
class Settings:
    """Parameter values read at configure (names as in :data:`PARAMETERS`, dots -> '_')."""

    values: dict

    def __getattr__(self, name):
        try:
            return self.values[name]
        except KeyError as exc:
            raise AttributeError(name) from exc


def cross_check(values: dict) -> str | None:
    """Checks between parameters (dots replaced by '_'); ``None`` when consistent."""
    n = values['search_num_candidates']
    if values['search_top_k'] > n:
        return f"search.top_k ({values['search_top_k']}) must be <= search.num_candidates ({n})"
    if values['search_num_average'] > n:
        return (f"search.num_average ({values['search_num_average']}) must be <= "
                f'search.num_candidates ({n})')
    return None


def localizer_config(s: Settings) -> LocalizerConfig:
    """The library's settings from the node's parameter values."""
    return LocalizerConfig(
        search=replace(_SEARCH, num_candidates=s.search_num_candidates, levels=s.search_levels,
                       top_k=s.search_top_k, num_average=s.search_num_average,
                       sigma=tuple(s.search_sigma), converge_m=s.search_converge_m,
                       converge_deg=s.search_converge_deg, refine_share=s.search_refine_share,
                       refine_sigma_factor=s.search_refine_sigma_factor),
        tracking_levels=s.tracking_levels, tracking_min_sigma=tuple(s.tracking_min_sigma),
        seed=s.seed, image_crop=s.image_crop)
