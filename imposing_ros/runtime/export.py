"""Export a trained model for what each inference backend loads.

Formats:

* ``checkpoint-fp16`` (torch, torch-bf16, torch-fp16 backends): the same checkpoint format with
  fp16 weights (half the bytes; loaded back as fp32 by
  :func:`~imposing_ros.model.checkpoint.load_model`, then prepared by the backend at load:
  batch norms folded, weights cast and laid out once). The committed demo model is made this
  way, and so are the baselines' (:mod:`imposing_ros.baselines`, this format only; the
  retrieval database included). The optimizer state is dropped; the configs, seed, maps and
  training history stay.
* ``int8`` (``torch-int8`` backend, CPU): quantizes both encoders with activation ranges
  observed on ``--calibration`` images (reference images of the scene, not the evaluation set;
  ``--calibration-frames`` of them, evenly spaced) and on the search's own candidate poses, and
  writes the programs into the cache folder ``--out`` (node parameter ``engine_cache``).
* ``tensorrt`` (CUDA only): builds the TensorRT programs of the image encoder and of the pose
  encoder at ``--candidates`` into the cache folder ``--out``, where the node's ``tensorrt``
  backend finds them (parameter ``engine_cache``), so a robot does not build engines at start.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from imposing_ros.model.checkpoint import load_model, read_checkpoint, save_checkpoint
from imposing_ros.runtime.int8 import calibration_images, DEFAULT_CALIBRATION_FRAMES, Int8Programs

FORMATS = ('checkpoint-fp16', 'int8', 'tensorrt')


def export(model_path: str | Path, out: str | Path, fmt: str = 'checkpoint-fp16',
           candidates: int = 4096, scene: str | None = None, device: str = 'cuda',
           calibration: str | None = None,
           calibration_frames: int = DEFAULT_CALIBRATION_FRAMES) -> Path:
    """Write ``model_path`` in format ``fmt`` to ``out`` (a file, or the program folder)."""
    if fmt not in FORMATS:
        raise ValueError(f'unknown export format {fmt!r}; known: {", ".join(FORMATS)}')
    if fmt == 'int8' and not calibration:
        raise ValueError('the int8 format needs --calibration DATA: camera images of the scene '
                         '(e.g. the training data), not the evaluation set')
    if read_checkpoint(model_path).get('method', 'imposing') != 'imposing':
        if fmt != 'checkpoint-fp16':
            raise ValueError(f'{model_path}: a baseline exports to checkpoint-fp16 only')
        from imposing_ros.baselines.models import load_baseline

        model, data = load_baseline(model_path)
    else:
        model, data = load_model(model_path)
    if fmt == 'int8':
        programs = Int8Programs(model, model.default_scene(scene), out, candidates)
        images = calibration_images(calibration, calibration_frames, model.config.image_size)
        programs.build(images, describe={'model': str(model_path),
                                         'calibration': str(calibration)})
        return Path(out)
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
                        help='file to write (checkpoint-fp16) or program folder (int8, tensorrt)')
    parser.add_argument('--format', default='checkpoint-fp16', choices=FORMATS)
    parser.add_argument('--candidates', type=int, default=4096,
                        help='int8, tensorrt: the pose program batch N (default 4096)')
    parser.add_argument('--scene', help='int8, tensorrt: scene of a multi-scene model')
    parser.add_argument('--calibration',
                        help='int8: dataset spec of calibration images (reference images of '
                        'the scene, not the evaluation set)')
    parser.add_argument('--calibration-frames', type=int, default=DEFAULT_CALIBRATION_FRAMES,
                        help=f'int8: images used, evenly spaced (default '
                        f'{DEFAULT_CALIBRATION_FRAMES})')


def run(args: argparse.Namespace) -> int:
    """Entry of ``imposing-ros export``."""
    out = export(args.model, args.out, args.format, args.candidates, args.scene,
                 calibration=args.calibration, calibration_frames=args.calibration_frames)
    if out.is_file():
        print(f'wrote {out} ({out.stat().st_size / 1e6:.1f} MB)')
    else:
        print(f'wrote {args.format} programs to {out}')
    return 0
