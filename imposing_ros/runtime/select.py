"""Build an inference backend by name; ``auto`` decides which one this machine runs best.

Every entry point (the Localizer, the CLI tools, the node's ``backend`` parameter) names a
backend from :data:`BACKENDS` and calls :func:`select_backend`; the backends themselves live in
:mod:`~imposing_ros.runtime.backends` (torch), :mod:`~imposing_ros.runtime.int8` and
:mod:`~imposing_ros.runtime.tensorrt`.
"""

from __future__ import annotations

import logging
from pathlib import Path
import time

import torch

from imposing_ros.model.imposing import ImPosing
from imposing_ros.runtime import backends, tensorrt
from imposing_ros.runtime.backends import Backend, compiler_available
from imposing_ros.runtime.choice import cached_int8_choice, choose_cpu_precision, choose_int8
from imposing_ros.runtime.int8 import DEFAULT_CACHE, Int8Backend, Int8Programs

LOGGER = logging.getLogger('imposing_ros.runtime')

BACKENDS = ('auto', 'torch', 'torch-bf16', 'torch-fp16', 'torch-int8', 'tensorrt')
# The one default of every entry point (Localizer, CLI tools, the node's parameter).
DEFAULT_BACKEND = 'auto'
INDUCTOR_CHOICES = ('auto', 'on', 'off')
DEFAULT_INDUCTOR = 'auto'
# What ``auto`` resolves to on a CPU before the model is known: one of CPU_AUTO_BACKENDS, timed.
CPU_AUTO = 'torch-bf16 or torch, timed at load'
CPU_AUTO_BACKENDS = ('torch-bf16', 'torch')


def add_backend_arguments(parser) -> None:
    """``--backend``, ``--inductor`` and ``--engine-cache`` of the tools (one definition)."""
    parser.add_argument('--backend', default=DEFAULT_BACKEND, choices=BACKENDS,
                        help=f'inference backend (default {DEFAULT_BACKEND})')
    parser.add_argument('--inductor', default=DEFAULT_INDUCTOR, choices=INDUCTOR_CHOICES,
                        help='compile the torch backends with inductor (default auto: on a CPU '
                        'with a C++ compiler)')
    parser.add_argument('--engine-cache', help='folder of compiled programs: torch-int8 (made by '
                        'imposing-ros export --format int8) and tensorrt')


def tensorrt_available() -> bool:
    """Whether torch-tensorrt can be used here (CUDA present and the import succeeds)."""
    return tensorrt.import_torch_tensorrt() is not None


def resolve_backend_name(name: str, device: str | torch.device) -> str:
    """The concrete backend ``auto`` stands for on ``device`` (other names are checked only).

    On a CPU that is :data:`CPU_AUTO` until a model is timed (:func:`select_backend`).
    """
    if name not in BACKENDS:
        raise ValueError(f'backend must be one of {BACKENDS}, got {name!r}')
    device = torch.device(device)
    if name != 'auto':
        if name == 'tensorrt' and device.type != 'cuda':
            raise ValueError('the tensorrt backend needs a CUDA device')
        if name == 'torch-int8' and device.type != 'cpu':
            raise ValueError('the torch-int8 backend runs on the CPU only')
        return name
    if device.type == 'cuda':
        return 'tensorrt' if tensorrt_available() else 'torch-fp16'
    return CPU_AUTO


def select_backend(name: str, model: ImPosing, scene: str | None = None,
                   device: str | torch.device = 'cpu', num_candidates: int = 4096,
                   cache_dir: str | None = None, inductor: str = 'auto',
                   levels: int = 6, calibration_images=None) -> Backend:
    """Build the backend ``name`` (one of :data:`BACKENDS`) for ``model`` on ``device``.

    ``num_candidates`` fixes the pose engine's batch for TensorRT; ``cache_dir`` holds the
    compiled programs of ``tensorrt`` and ``torch-int8``. ``inductor`` ('auto', 'on', 'off')
    compiles the torch backends with inductor; 'auto' = on a CPU with a C++ compiler
    (``torch-int8`` always runs through it). ``auto`` logs what it chose, and falls back to
    ``torch-fp16`` with a warning where TensorRT fails; an explicit ``tensorrt`` raises. On a
    CPU ``auto`` is the fastest by measurement of fp32, bf16 and, where its programs are cached
    or ``calibration_images`` (``[1, 3, H, W]`` in [0, 1]) can build them, int8
    (:mod:`imposing_ros.runtime.choice`; ``levels`` pose passes per frame); the reason is kept
    in ``backend.choice``.
    """
    if inductor not in INDUCTOR_CHOICES:
        raise ValueError(f'inductor must be one of {INDUCTOR_CHOICES}, got {inductor!r}')
    resolved = resolve_backend_name(name, device)
    cpu = torch.device(device).type == 'cpu'
    if inductor == 'auto':
        use_inductor = cpu and compiler_available()
    else:
        use_inductor = inductor == 'on'
    if name == 'auto' and cpu:
        return _auto_cpu(model, model.default_scene(scene), device, num_candidates, cache_dir,
                         use_inductor, levels, calibration_images)
    if name == 'auto':
        LOGGER.info('backend auto -> %s on %s (CUDA)', resolved, torch.device(device))
    if resolved == 'tensorrt':
        try:
            return tensorrt.TensorRTBackend(model, scene, device, num_candidates=num_candidates,
                                   cache_dir=cache_dir)
        except Exception as exc:  # conversion, build or load: the reasons vary by model and GPU
            if name != 'auto':
                raise
            # TensorRT is what auto tries first, not what it promises: fall back, saying why.
            LOGGER.warning('backend auto: TensorRT failed on %s (%s: %s); using torch-fp16',
                           torch.device(device), type(exc).__name__, exc)
            resolved = 'torch-fp16'
    if resolved == 'torch-int8':
        if inductor == 'off':
            raise ValueError('the torch-int8 backend runs through inductor: '
                             'inductor cannot be off')
        # Programs not cached yet are built from the model's calibration images, as auto does.
        return Int8Backend(model, scene, device, cache_dir=cache_dir,
                           num_candidates=num_candidates, calibration_images=calibration_images)
    precision = {'torch': 'fp32', 'torch-bf16': 'bf16', 'torch-fp16': 'fp16'}[resolved]
    backend = backends.TorchBackend(model, scene, device, precision, inductor=use_inductor)
    if name == 'auto':
        backend.choice = 'CUDA'
    return backend


def _auto_cpu(model: ImPosing, scene: str, device, num_candidates: int, cache_dir: str | None,
              use_inductor: bool, levels: int, calibration_images) -> Backend:
    """``auto`` on a CPU: fp32 or bf16 by timing, then int8 against it where it can run.

    int8 can run with inductor and the model's int8 programs: cached, or built now (once, then
    cached) from ``calibration_images`` (which ``imposing-ros calibrate`` stores in the
    checkpoint). Every step is logged; the reason is kept in ``backend.choice``.
    """
    choice = choose_cpu_precision(model, scene, num_candidates, levels)
    name = 'torch-bf16' if choice.precision == 'bf16' else 'torch'
    backend = backends.TorchBackend(model, scene, device, choice.precision, inductor=use_inductor)
    backend.choice = choice.summary()
    programs = None
    folder = Path(cache_dir) if cache_dir else DEFAULT_CACHE
    # No calibration images and no program at all in the folder: skip hashing the model.
    if use_inductor and (calibration_images is not None or any(folder.glob('image-int8-*.pt2'))):
        programs = Int8Programs(model, scene, cache_dir, num_candidates)
        if not programs.cached and calibration_images is None:
            programs = None
    verdict = None if programs is None or not programs.cached else \
        cached_int8_choice(model, programs, num_candidates, levels)
    if verdict is not None and verdict.precision != 'int8':  # lost here before: not compiled
        backend.choice = f'{choice.summary()}; int8 against it: {verdict.summary()}'
    elif programs is not None:
        images = None if calibration_images is None else list(calibration_images)
        try:
            if not programs.cached:
                start = time.perf_counter()
                LOGGER.info('backend auto: building the int8 programs of scene %s once from '
                            '%d calibration images of the checkpoint (cached in %s)', scene,
                            len(images), programs.cache_dir)
                programs.build(images)
                LOGGER.info('backend auto: int8 programs built in %.0f s',
                            time.perf_counter() - start)
            int8 = Int8Backend(model, scene, device, programs=programs)
        except Exception as exc:  # quantization or compilation: keep the float backend
            LOGGER.warning('backend auto: int8 unavailable (%s: %s); keeping %s',
                           type(exc).__name__, exc, name)
        else:
            if verdict is None:
                verdict = choose_int8(model, scene, int8, backend, choice.precision,
                                      num_candidates, levels, images[0] if images else None)
            if verdict.precision == 'int8':
                backend, name = int8, 'torch-int8'
            backend.choice = f'{choice.summary()}; int8 against it: {verdict.summary()}'
    LOGGER.info('backend auto -> %s on %s (%s)', name, torch.device(device), backend.choice)
    return backend
