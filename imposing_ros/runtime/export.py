"""Export a trained model for deployment.

Formats:

* ``checkpoint-fp16``: the same checkpoint format with fp16 weights (half the bytes; loaded back
  as fp32 by :func:`~imposing_ros.model.checkpoint.load_model`). The committed demo model is
  made this way. Training state (optimizer, history) is dropped; the configs, seed and maps
  stay.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from imposing_ros.model.checkpoint import load_model, save_checkpoint

FORMATS = ('checkpoint-fp16',)


def export(model_path: str | Path, out: str | Path, fmt: str = 'checkpoint-fp16') -> Path:
    """Write ``model_path`` in format ``fmt`` to ``out``."""
    if fmt not in FORMATS:
        raise ValueError(f'unknown export format {fmt!r}; known: {", ".join(FORMATS)}')
    model, data = load_model(model_path)
    keep = {k: data[k] for k in ('train_config', 'epoch') if k in data}
    history = data.get('history') or []
    if history:
        keep['history'] = history  # small: per-epoch loss and validation error
    return save_checkpoint(out, model, data['seed'], half=True, **keep)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``imposing-ros export``."""
    parser.add_argument('--model', required=True, help='trained checkpoint (.pt)')
    parser.add_argument('--out', required=True, help='file to write')
    parser.add_argument('--format', default='checkpoint-fp16', choices=FORMATS)


def run(args: argparse.Namespace) -> int:
    """Entry of ``imposing-ros export``."""
    out = export(args.model, args.out, args.format)
    print(f'wrote {out} ({out.stat().st_size / 1e6:.1f} MB)')
    return 0
