"""One ``imposing-ros`` command with subcommands.

Each subcommand lives in its own module which provides ``add_arguments(parser)`` and
``run(args) -> int``; the module docstring's first line is the help text. Modules are imported
only when their subcommand runs, so ``imposing-ros --help`` stays fast and a tool's optional
dependencies are not needed by the others.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# subcommand -> module implementing it
COMMANDS = {
    'train': 'imposing_ros.training.cli',
    'evaluate': 'imposing_ros.evaluation.cli',
    'localize': 'imposing_ros.localization.cli',
    'sim': 'imposing_ros.sim.cli',
    'bench': 'imposing_ros.evaluation.bench',
    'benchmark': 'imposing_ros.evaluation.benchmark',
    'export': 'imposing_ros.runtime.export',
    'calibrate': 'imposing_ros.localization.calibration',
    'run': 'imposing_ros.nodes.runner',
    'demo': 'imposing_ros.nodes.demo',
}

HELP = {
    'train': 'train an ImPosing model on posed images (plain folder, rosbag2 or public datasets)',
    'evaluate': 'localize a test set with a trained model and report errors and recalls',
    'localize': 'localize the images of a folder with a trained model, write poses to CSV',
    'sim': 'render simulated driving traversals of a city scene into rosbag2 files',
    'bench': 'benchmark per-stage inference time and accuracy of the backends',
    'benchmark': 'replay a dataset through ImPosing and the baselines: table, plots, result bag',
    'export': 'export a trained model for an inference backend',
    'calibrate': 'fit the published covariance of a model to its errors on posed frames',
    'run': 'run the localizer (and filter) nodes in one process, without ros2 launch',
    'demo': 'live localization demo over DDS on a held-out simulated traversal',
}


def build_parser() -> argparse.ArgumentParser:
    """Parser with one sub-parser per command; each module adds its own arguments lazily."""
    parser = argparse.ArgumentParser(prog='imposing-ros', description=__doc__.splitlines()[0])
    parser.add_argument('-v', '--verbose', action='store_true', help='debug logging')
    sub = parser.add_subparsers(dest='command', metavar='COMMAND', required=True)
    for name in COMMANDS:
        sub.add_parser(name, help=HELP[name], add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``imposing-ros``."""
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    known, rest = parser.parse_known_args(argv)
    logging.basicConfig(level=logging.DEBUG if known.verbose else logging.INFO,
                        format='%(asctime)s %(levelname)s %(name)s: %(message)s')
    # inductor's C++ builds warn "No CUDA runtime is found, using CUDA_HOME" on every CPU-only
    # machine: noise for a user, kept with --verbose.
    if not known.verbose:
        logging.getLogger('torch.utils.cpp_extension').setLevel(logging.ERROR)
    module = importlib.import_module(COMMANDS[known.command])
    sub = argparse.ArgumentParser(prog=f'imposing-ros {known.command}',
                                  description=HELP[known.command])
    module.add_arguments(sub)
    args = sub.parse_args(rest)
    try:
        return int(module.run(args) or 0)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        # Tools raise clear errors naming what is wrong; show them without a traceback.
        logging.getLogger('imposing_ros').debug('failed', exc_info=True)
        print(f'imposing-ros {known.command}: error: {exc}', file=sys.stderr)
        return 2


if __name__ == '__main__':
    sys.exit(main())
