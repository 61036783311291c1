"""Localize the images of a folder with a trained model, write poses to CSV.

Output columns: ``timestamp,image,x,y,z,qx,qy,qz,qw,score,status`` (the plain dataset layout
plus the score and a status; ``timestamp``: integer nanoseconds when the file name is a stamp,
as dataset recorders name them (``1700000000123456789.png`` in ns, ``1700000000.123.png`` in
seconds), else empty: no stamp is invented). Poses
are T_map_camera of the camera body frame. ``status`` is ``ok``, ``low_score`` (best score 0 or
under ``--min-score``: the pose is written but should not be trusted, and the node would not
publish it) or ``error`` (the image could not be read or localized: empty pose, reason in the log).
One bad image loses nothing else; the CSV is written once every image has been processed.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from tqdm import tqdm

from imposing_ros.data.plain import load_rgb, parse_stamp
from imposing_ros.localization.localizer import Localizer
from imposing_ros.runtime.select import add_backend_arguments, DEFAULT_BACKEND, DEFAULT_INDUCTOR
from imposing_ros.utils import atomic_write_text

LOGGER = logging.getLogger('imposing_ros.localization')
IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg', '.bmp', '.ppm')


def stamp_of_name(path: Path) -> str:
    """The stamp (integer ns, as text) an image file's name holds, or '' when it holds none.

    Seconds must carry a decimal point or 9-10 integer digits (Unix seconds since 2001), so
    that frame numbers such as ``000042.png`` are not read as stamps.
    """
    stem = path.stem
    try:
        if stem.isdigit() and (len(stem) in (9, 10) or len(stem) >= 16):
            return str(parse_stamp(stem))
        if stem.count('.') == 1 and stem.replace('.', '').isdigit():
            return str(parse_stamp(stem))
    except ValueError:
        pass
    return ''


def localize_folder(model: str | Path, images: str | Path, out: str | Path,
                    scene: str | None = None, device: str = 'cpu',
                    backend: str = DEFAULT_BACKEND, inductor: str = DEFAULT_INDUCTOR,
                    engine_cache: str | None = None, min_score: float = 0.0) -> Path:
    """Localize every image file under ``images`` (sorted) and write ``out``."""
    images = Path(images)
    if not images.is_dir():
        raise FileNotFoundError(f'image folder not found: {images}')
    files = sorted(p for p in images.rglob('*') if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f'{images}: no image files ({", ".join(IMAGE_SUFFIXES)})')
    localizer = Localizer.from_checkpoint(model, scene, device=device, backend=backend,
                                          inductor=inductor, engine_cache=engine_cache)
    lines = ['timestamp,image,x,y,z,qx,qy,qz,qw,score,status']
    counts = {'ok': 0, 'low_score': 0, 'error': 0}
    for path in tqdm(files, desc='localize', unit='image', dynamic_ncols=True):
        name = path.relative_to(images)
        stamp = stamp_of_name(path)
        try:
            result = localizer.localize(load_rgb(path))
        except (ValueError, RuntimeError) as exc:
            LOGGER.error('%s: not localized: %s', name, exc)
            counts['error'] += 1
            lines.append(f'{stamp},{name},,,,,,,,,error')
            continue
        status = 'ok' if result.score > 0 and result.score >= min_score else 'low_score'
        if status == 'low_score':
            LOGGER.warning('%s: best score %.3f (under %.3f or 0): the pose is not reliable',
                           name, result.score, min_score)
        counts[status] += 1
        values = ','.join(f'{v:.6f}' for v in result.pose)
        lines.append(f'{stamp},{name},{values},{result.score:.4f},{status}')
    LOGGER.info('%d images: %d localized, %d with a low score, %d errors', len(files),
                counts['ok'], counts['low_score'], counts['error'])
    return atomic_write_text(out, '\n'.join(lines) + '\n')


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``imposing-ros localize``."""
    parser.add_argument('--model', required=True, help='checkpoint (.pt)')
    parser.add_argument('--images', required=True, help='folder of images')
    parser.add_argument('--out', required=True, help='CSV to write')
    parser.add_argument('--scene', help='scene of a multi-scene model')
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--min-score', type=float, default=0.0,
                        help='flag poses whose best score is under this as low_score (default 0: '
                             'only a score of 0)')
    add_backend_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """Entry of ``imposing-ros localize``."""
    out = localize_folder(args.model, args.images, args.out, args.scene, args.device,
                          args.backend, args.inductor, args.engine_cache, args.min_score)
    print(f'poses: {out}')
    return 0
