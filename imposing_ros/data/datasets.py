"""Open a dataset from a short spec string (the form the command line takes).

Specs:

* ``DIR`` with a ``poses.csv``: the plain folder layout (:mod:`imposing_ros.data.plain`);
* a rosbag2 (``.mcap`` / ``.db3`` file, or a folder with ``metadata.yaml``)
  (:mod:`imposing_ros.data.rosbag`);
* ``4seasons:ROOT:SCENE:PART``: keyframes of a 4Seasons scene's split
  (:mod:`imposing_ros.data.fourseasons`), e.g. ``4seasons:/data/4seasons:neighborhood:train``;
* ``robotcar:ROOT:SCENE:PART``: a RobotCar split (:mod:`imposing_ros.data.robotcar`), e.g.
  ``robotcar:/data/robotcar:loop:test``.

``SCENE`` is a name of :data:`imposing_ros.data.splits.SPLITS` (``4seasons/<scene>``,
``robotcar/<scene>``), ``PART`` is ``train``, ``test`` or ``all``.

Reader options follow a ``?``: ``SPEC?key=value&key=value``, or are passed as keyword arguments
of :func:`open_dataset` (keyword arguments win). Known keys per kind (:data:`OPTIONS`):

* rosbag2: ``image`` (image topic), ``pose`` (pose topic, or ``/tf``), ``max_gap`` (s),
  ``vehicle_frame``, ``map_frame``, ``extrinsic`` (``tf_static``);
* 4seasons: ``camera`` (``cam0``), ``reference`` (recording id of the map origin);
* robotcar: ``poses`` (``ins`` or ``vo``), ``extrinsics`` (SDK extrinsics folder, default
  ``ROOT/extrinsics``), ``models`` (SDK models folder: undistortion), ``max_gap`` (s).

Every reader iterates :class:`~imposing_ros.data.frames.Frame` objects and has ``poses`` (no image
decoding), ``summary`` where frames can be dropped, and ``cache_key()``.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qsl

from imposing_ros.data.fourseasons import FourSeasons
from imposing_ros.data.plain import PlainFolder
from imposing_ros.data.robotcar import RobotCar
from imposing_ros.data.rosbag import RosbagReader

# spec key -> (reader keyword, converter)
OPTIONS = {
    'rosbag': {'image': ('image_topic', str), 'pose': ('pose_topic', str),
               'max_gap': ('max_gap_s', float), 'vehicle_frame': ('vehicle_frame', str),
               'map_frame': ('map_frame', str), 'extrinsic': ('T_vehicle_camera', str)},
    '4seasons': {'camera': ('camera', str), 'reference': ('reference', str)},
    'robotcar': {'poses': ('pose_source', str), 'extrinsics': ('extrinsics_dir', str),
                 'models': ('models_dir', str), 'max_gap': ('max_gap_s', float)},
}


def _options(kind: str, text: str, query: str, extra: dict) -> dict:
    """Reader keyword arguments from the query and ``extra``; unknown keys are errors."""
    table = OPTIONS[kind]
    try:
        pairs = dict(parse_qsl(query, strict_parsing=True)) if query else {}
    except ValueError as exc:
        raise ValueError(f'{text}: bad options {query!r}: {exc}') from exc
    kwargs = {}
    for key, value in pairs.items():
        if key not in table:
            raise ValueError(f'{text}: unknown {kind} option(s) {key}; known: '
                             f'{", ".join(table)}')
        name, convert = table[key]
        try:
            kwargs[name] = convert(value)
        except ValueError as exc:
            raise ValueError(f'{text}: option {key}: {exc}') from exc
    allowed = {name for name, _ in table.values()}
    unknown = sorted(set(extra) - allowed - set(table))
    if unknown:
        raise ValueError(f'{text}: unknown {kind} option(s) {", ".join(unknown)}; known: '
                         f'{", ".join(sorted(allowed))}')
    for key, value in extra.items():
        kwargs[table[key][0] if key in table else key] = value
    return kwargs


def _split_spec(kind: str, body: str, text: str) -> tuple[str, str, str]:
    parts = body.rsplit(':', 2)
    if len(parts) != 3 or not all(parts):
        raise ValueError(f'{text}: expected {kind}:ROOT:SCENE:PART (PART: train, test, all)')
    return parts[0], parts[1], parts[2]


def open_dataset(spec: str | Path, **options):
    """The reader for ``spec`` (module docstring); ValueError / FileNotFoundError otherwise."""
    text = str(spec)
    body, _, query = text.partition('?')
    for kind, reader in (('4seasons', FourSeasons), ('robotcar', RobotCar)):
        if body.startswith(f'{kind}:'):
            root, scene, part = _split_spec(kind, body[len(kind) + 1:], text)
            return reader.from_split(root, scene, part,
                                     **_options(kind, text, query, options))
    path = Path(body)
    if not path.exists():
        raise FileNotFoundError(f'dataset not found: {path}')
    is_bag = path.suffix in ('.mcap', '.db3') or (path / 'metadata.yaml').is_file()
    if is_bag:
        return RosbagReader(path, **_options('rosbag', text, query, options))
    if query or options:
        raise ValueError(f'{text}: options are not understood for plain folders')
    if (path / 'poses.csv').is_file():
        return PlainFolder(path)
    raise ValueError(f'{path}: not a dataset (no poses.csv, no rosbag2 metadata.yaml, not an '
                     f'.mcap or .db3 file; or use 4seasons:ROOT:SCENE:PART, '
                     f'robotcar:ROOT:SCENE:PART)')
