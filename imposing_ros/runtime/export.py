"""Export a trained model for what each inference backend loads.

Formats:

* ``checkpoint-fp16`` (torch, torch-bf16, torch-fp16 backends): the same checkpoint format with
  fp16 weights (half the bytes; loaded back as fp32 by
  :func:`~imposing_ros.model.checkpoint.load_model`, then prepared by the backend at load:
  batch norms folded, weights cast and laid out once). The committed demo model is made this
  way. Training state (optimizer, history) is dropped; the configs, seed and maps stay.
* ``tensorrt`` (CUDA only): builds the TensorRT programs of the image encoder and of the pose
  encoder at ``--candidates`` into the cache folder ``--out``, where the node's ``tensorrt``
  backend finds them (parameter ``engine_cache``), so a robot does not build engines at start.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from imposing_ros.model.checkpoint import load_model, save_checkpoint

FORMATS = ('checkpoint-fp16', 'tensorrt')


def export(model_path: str | Path, out: str | Path, fmt: str = 'checkpoint-fp16',
           candidates: int = 4096, scene: str | None = None, device: str = 'cuda') -> Path:
    """Write ``model_path`` in format ``fmt`` to ``out`` (a file, or the engine folder)."""
    if fmt not in FORMATS:
        raise ValueError(f'unknown export format {fmt!r}; known: {", ".join(FORMATS)}')
    model, data = load_model(model_path)
    if fmt == 'tensorrt':
        from imposing_ros.runtime.tensorrt import import_torch_tensorrt, TensorRTBackend

        if import_torch_tensorrt() is None:
            raise ValueError('the tensorrt format needs a CUDA GPU and torch-tensorrt')
        TensorRTBackend(model.to(device), scene, device, candidates, cache_dir=out)
        return Path(out)
    keep = {k: data[k] for k in ('train_config', 'epoch') if k in data}
    history = data.get('history') or []
    if history:
        keep['history'] = history  # small: per-epoch loss and validation error
    return save_checkpoint(out, model, data['seed'], half=True, **keep)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``imposing-ros export``."""
    parser.add_argument('--model', required=True, help='trained checkpoint (.pt)')
    parser.add_argument('--out', required=True,
                        help='file to write (checkpoint-fp16) or engine folder (tensorrt)')
    parser.add_argument('--format', default='checkpoint-fp16', choices=FORMATS)
    parser.add_argument('--candidates', type=int, default=4096,
                        help='tensorrt: the pose engine batch N (default 4096)')
    parser.add_argument('--scene', help='tensorrt: scene of a multi-scene model')


def run(args: argparse.Namespace) -> int:
    """Entry of ``imposing-ros export``."""
    out = export(args.model, args.out, args.format, args.candidates, args.scene)
    if out.is_file():
        print(f'wrote {out} ({out.stat().st_size / 1e6:.1f} MB)')
    else:
        print(f'wrote TensorRT programs to {out}')
    return 0
