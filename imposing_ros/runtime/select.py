"""Build an inference backend by name; ``auto`` decides which one this machine runs best.

Every entry point (the Localizer, the CLI tools, the node's ``backend`` parameter) names a
backend from :data:`BACKENDS` and calls :func:`select_backend`; the backends themselves live in
:mod:`~imposing_ros.runtime.backends` (torch), :mod:`~imposing_ros.runtime.int8` and
:mod:`~imposing_ros.runtime.tensorrt`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from imposing_ros.model.imposing import ImPosing
from imposing_ros.runtime import backends, tensorrt
from imposing_ros.runtime.backends import Backend, compiler_available
from imposing_ros.runtime.choice import choose_cpu_precision
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
                   levels: int = 6) -> Backend:
    """Build the backend ``name`` (one of :data:`BACKENDS`) for ``model`` on ``device``.

    ``num_candidates`` fixes the pose engine's batch for TensorRT; ``cache_dir`` holds the
    compiled programs of ``tensorrt`` and ``torch-int8``. ``inductor`` ('auto', 'on', 'off')
    compiles the torch backends with inductor; 'auto' = on a CPU with a C++ compiler
    (``torch-int8`` always runs through it). ``auto`` logs what it chose, and falls back to
    ``torch-fp16`` with a warning where TensorRT fails; an explicit ``tensorrt`` raises. On a
    CPU ``auto`` is ``torch-int8`` where int8 programs of the model are cached, else fp32 or
    bf16 as timed on this CPU (:mod:`imposing_ros.runtime.choice`; ``levels`` pose passes per
    frame); the reason is kept in ``backend.choice``.
    """
    if inductor not in INDUCTOR_CHOICES:
        raise ValueError(f'inductor must be one of {INDUCTOR_CHOICES}, got {inductor!r}')
    resolved = resolve_backend_name(name, device)
    cpu = torch.device(device).type == 'cpu'
    if inductor == 'auto':
        use_inductor = cpu and compiler_available()
    else:
        use_inductor = inductor == 'on'
    choice = None
    if name == 'auto':
        reason = 'CUDA'
        int8 = _cached_int8_programs(model, scene, cache_dir, num_candidates) if (
            cpu and use_inductor) else None
        if int8 is not None:
            # Made on purpose by `imposing-ros export --format int8`: the fastest CPU path.
            resolved, reason = 'torch-int8', 'int8 programs of this model in the cache folder'
        elif cpu:
            choice = choose_cpu_precision(model, model.default_scene(scene), num_candidates,
                                          levels)
            resolved = 'torch-bf16' if choice.precision == 'bf16' else 'torch'
            reason = choice.summary()
        LOGGER.info('backend auto -> %s on %s (%s)', resolved, torch.device(device), reason)
        if int8 is not None:
            backend = Int8Backend(model, scene, device, programs=int8)
            backend.choice = reason
            return backend
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
        return Int8Backend(model, scene, device, cache_dir=cache_dir,
                           num_candidates=num_candidates)
    precision = {'torch': 'fp32', 'torch-bf16': 'bf16', 'torch-fp16': 'fp16'}[resolved]
    backend = backends.TorchBackend(model, scene, device, precision, inductor=use_inductor)
    if name == 'auto':
        backend.choice = reason
    return backend


def _cached_int8_programs(model: ImPosing, scene: str | None, cache_dir: str | None,
                          num_candidates: int):
    """The model's :class:`~imposing_ros.runtime.int8.Int8Programs` if cached, else None."""
    folder = Path(cache_dir) if cache_dir else DEFAULT_CACHE
    if not any(folder.glob('image-int8-*.pt2')):  # no program at all: skip hashing the model
        return None
    programs = Int8Programs(model, model.default_scene(scene), folder, num_candidates)
    return programs if programs.cached else None
