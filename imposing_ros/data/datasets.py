"""Open a dataset from a short spec string (the form the command line takes).

Specs:

* ``DIR`` with a ``poses.csv``: the plain folder layout (:mod:`imposing_ros.data.plain`);
* a rosbag2 (``.mcap`` / ``.db3`` file, or a folder with ``metadata.yaml``), optionally
  ``BAG?image=/topic&pose=/topic&max_gap=0.2`` to choose the topics
  (:mod:`imposing_ros.data.rosbag`).

Every reader iterates :class:`~imposing_ros.data.frames.Frame` objects and has ``poses`` (no image
decoding) and ``cache_key()``.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qsl

from imposing_ros.data.plain import PlainFolder
from imposing_ros.data.rosbag import RosbagReader

ROSBAG_OPTIONS = {'image': 'image_topic', 'pose': 'pose_topic', 'max_gap': 'max_gap_s'}


def open_dataset(spec: str | Path):
    """The reader for ``spec`` (module docstring); ValueError / FileNotFoundError otherwise."""
    text = str(spec)
    path_text, _, query = text.partition('?')
    path = Path(path_text)
    options = dict(parse_qsl(query, strict_parsing=True)) if query else {}
    if not path.exists():
        raise FileNotFoundError(f'dataset not found: {path}')
    is_bag = path.suffix in ('.mcap', '.db3') or (path / 'metadata.yaml').is_file()
    if is_bag:
        unknown = sorted(set(options) - set(ROSBAG_OPTIONS))
        if unknown:
            raise ValueError(f'{text}: unknown rosbag option(s) {", ".join(unknown)}; '
                             f'known: {", ".join(ROSBAG_OPTIONS)}')
        kwargs = {ROSBAG_OPTIONS[k]: v for k, v in options.items()}
        if 'max_gap_s' in kwargs:
            kwargs['max_gap_s'] = float(kwargs['max_gap_s'])
        return RosbagReader(path, **kwargs)
    if options:
        raise ValueError(f'{text}: options are only understood for rosbag2 datasets')
    if (path / 'poses.csv').is_file():
        return PlainFolder(path)
    raise ValueError(f'{path}: not a dataset (no poses.csv, no rosbag2 metadata.yaml, not an '
                     f'.mcap or .db3 file)')
