"""render simulated driving traversals of a city scene into rosbag2 files."""

from __future__ import annotations

import argparse
import logging
import os
import time

LOGGER = logging.getLogger('imposing_ros.sim')


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``imposing-ros sim``."""
    parser.add_argument('--scene', required=True, help='scene file (config/scenes/NAME.yaml)')
    parser.add_argument('--out', required=True, help='output folder; one rosbag2 per traversal')
    parser.add_argument('--traversals', nargs='+', default=None, metavar='NAME',
                        help='only these traversals (default: all of the scene)')
    parser.add_argument('--workers', type=int, default=None,
                        help='rendering processes (default: the scene file, render.workers)')
    parser.add_argument('--max-frames', type=int, default=None,
                        help='stop each traversal after this many images (default: whole route)')
    parser.add_argument('--seed', type=int, default=None,
                        help='scene seed overriding the file (city layout, textures, routes)')


def run(args: argparse.Namespace) -> int:
    """Generate the traversals, report frames per second."""
    os.environ.setdefault('MUJOCO_GL', 'egl')
    import dataclasses

    from tqdm import tqdm

    from imposing_ros.sim.config import load_scene
    from imposing_ros.sim.generate import generate

    config = load_scene(args.scene)
    if args.seed is not None:
        config = dataclasses.replace(config, seed=args.seed)
    if args.workers is not None and args.workers < 1:
        raise ValueError(f'--workers must be >= 1, got {args.workers}')
    if args.max_frames is not None and args.max_frames < 0:
        raise ValueError(f'--max-frames must be >= 0, got {args.max_frames}')
    start = time.perf_counter()
    with tqdm(desc='frames', unit='frame') as bar:
        results = generate(config, args.out, traversals=args.traversals, workers=args.workers,
                           max_frames=args.max_frames, progress=bar.update)
    total = time.perf_counter() - start
    frames = sum(r.frames for r in results)
    render = sum(r.render_s for r in results)
    for r in results:
        LOGGER.info('%s: %s (%d frames, %.2f km, %.0f s of driving)', r.name, r.path, r.frames,
                    r.driven_m / 1e3, r.duration_s)
    LOGGER.info('%d traversals, %d frames in %.1f s: %.2f frames/s rendering and writing, '
                '%.2f frames/s overall', len(results), frames, total, frames / max(render, 1e-9),
                frames / max(total, 1e-9))
    return 0
