"""TensorRT backend through torch-tensorrt (dynamo frontend), CUDA only.

torch-tensorrt cannot be installed on a machine without CUDA and fails to import there, so the
import is guarded (:func:`import_torch_tensorrt`) and nothing here builds an engine on the
project's CPU machines; what can run without a GPU (cache keys, the fixed-batch pose path, the
fallbacks) is tested with stand-ins, the rest by tests marked ``gpu``. The code follows
torch-tensorrt's documented API:

* ``torch_tensorrt.compile(module, ir='dynamo', arg_inputs=[...], device=...)``: the 2.14
  dynamo compiler builds strongly typed networks, so the engine keeps the dtypes of the graph
  (it has no ``use_explicit_typing`` option any more, and ``enabled_precisions`` is ignored);
  older releases (JetPack's) build weakly typed ones unless ``use_explicit_typing=True``, which
  is passed only where the compiler's signature has it (:func:`compile_settings`). Either way
  fp16 comes from converting the model itself. The prepared encoders
  (:mod:`imposing_ros.runtime.backends`) hold fp16 weights and cast their input; the Fourier
  features stay fp32 (``sin(2^10 pi x)`` needs the mantissa). ``device`` is always given:
  without it the engine is built for the current GPU, not the backend's.
* Static shapes: the image engine takes ``[1, 3, H, W]``, the pose engine ``[1, N, 7]`` (the
  search's fixed batch); other pose counts run in chunks of ``N``
  (:func:`~imposing_ros.runtime.backends.encode_in_chunks`). Random numbers never enter an
  engine (a ``randn`` inside one becomes a constant): the search draws its noise outside and
  passes it in.
* ``torch_tensorrt.save(gm, path, output_format='exported_program', arg_inputs=...)`` /
  ``torch.export.load(path).module()``: compiled programs are cached on disk under a key of the
  model weights, the GPU (name, compute capability, index), the torch, torch-tensorrt, TensorRT
  and CUDA versions and the input shapes, so a node restart does not rebuild engines (minutes).
  A cached program that fails to load or run (a file from another TensorRT, a truncated file)
  is rebuilt, with a warning.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import inspect
import logging
from pathlib import Path
import sys
import time

import torch

from imposing_ros.model.imposing import ImPosing
from imposing_ros.runtime.backends import (
    Backend,
    encode_in_chunks,
    PreparedImageEncoder,
    PreparedPoseEncoder,
)
from imposing_ros.runtime.programs import cache_key, save_atomically

LOGGER = logging.getLogger('imposing_ros.runtime')

DEFAULT_CACHE = Path.home() / '.cache' / 'imposing_ros' / 'tensorrt'
# Distributions that carry the TensorRT library, first found wins: PyPI's meta package and its
# CUDA-specific builds. JetPack's apt package has no metadata: the imported module's version
# is read instead.
TENSORRT_DISTRIBUTIONS = ('tensorrt', 'tensorrt-cu13', 'tensorrt-cu12', 'tensorrt-cu11')


def import_torch_tensorrt():
    """The ``torch_tensorrt`` module, or None where CUDA or the package is missing."""
    if not torch.cuda.is_available():
        return None
    try:
        return importlib.import_module('torch_tensorrt')
    except Exception as exc:  # ImportError, or CUDA/TensorRT library errors raised at import
        LOGGER.debug('torch_tensorrt unavailable: %s', exc)
        return None


def _distribution_version(*names: str) -> str | None:
    for name in names:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def library_versions() -> str:
    """torch, CUDA, torch-tensorrt and TensorRT versions, read without importing TensorRT."""
    tensorrt = _distribution_version(*TENSORRT_DISTRIBUTIONS)
    if tensorrt is None:
        tensorrt = getattr(sys.modules.get('tensorrt'), '__version__', 'unknown')
    torch_tensorrt = _distribution_version('torch-tensorrt', 'torch_tensorrt') or getattr(
        sys.modules.get('torch_tensorrt'), '__version__', 'unknown')
    return (f'torch {torch.__version__}|cuda {torch.version.cuda}|'
            f'torch-tensorrt {torch_tensorrt}|tensorrt {tensorrt}')


def target_description(device: torch.device) -> str:
    """GPU index, name and compute capability, and :func:`library_versions` (CUDA only)."""
    device = cuda_device(device)
    capability = '.'.join(map(str, torch.cuda.get_device_capability(device)))
    return (f'{device}|{torch.cuda.get_device_name(device)}|sm{capability}|'
            f'{library_versions()}')


def cuda_device(device: str | torch.device) -> torch.device:
    """``device`` with its index: ``cuda`` alone names the current GPU, resolved now."""
    device = torch.device(device)
    if device.type == 'cuda' and device.index is None:
        return torch.device('cuda', torch.cuda.current_device())
    return device


def on_device(device: torch.device):
    """``torch.cuda.device(device)`` for a CUDA device, else a context that does nothing."""
    return torch.cuda.device(device) if device.type == 'cuda' else contextlib.nullcontext()


def takes_explicit_typing(trt) -> bool:
    """Whether ``trt``'s dynamo compiler has ``use_explicit_typing`` (older releases, not 2.14)."""
    try:
        return 'use_explicit_typing' in inspect.signature(trt.dynamo.compile).parameters
    except (AttributeError, TypeError, ValueError):  # no such compiler or no signature
        return False


def compile_settings(device: torch.device, explicit_typing: bool = False) -> dict:
    """Keyword arguments of ``torch_tensorrt.compile`` for an engine on ``device``.

    ``explicit_typing``: the compiler takes ``use_explicit_typing`` (see the module docstring);
    a compiler without it would silently drop it.
    """
    settings = {'ir': 'dynamo', 'device': device, 'min_block_size': 1}
    if explicit_typing:
        settings['use_explicit_typing'] = True
    return settings


def load_program(path: Path, example: torch.Tensor) -> torch.nn.Module | None:
    """The program cached at ``path``, run once on ``example``; None (logged) if either fails."""
    try:
        program = torch.export.load(str(path)).module()
        with torch.no_grad():
            program(example)
    except Exception as exc:  # an engine of another TensorRT or GPU, a truncated file, ...
        LOGGER.warning('cached TensorRT program %s does not load here (%s: %s): rebuilding it',
                       path, type(exc).__name__, exc)
        return None
    LOGGER.info('loaded TensorRT program %s', path)
    return program


def compile_cached(module: torch.nn.Module, example: torch.Tensor, cache_dir: Path,
                   name: str) -> torch.nn.Module:
    """Compile ``module`` for ``example``'s shape and device, or load the cached program."""
    trt = import_torch_tensorrt()
    if trt is None:
        raise RuntimeError('the tensorrt backend needs CUDA and torch-tensorrt')
    device = example.device
    path = Path(cache_dir) / f'{name}-{cache_key(module, example, target_description(device))}.ep'
    with on_device(device):
        if path.is_file():
            program = load_program(path, example)
            if program is not None:
                return program
        LOGGER.warning('building the TensorRT %s engine for %s: this takes minutes, once per '
                       'model, GPU and library versions (then loaded from %s; '
                       '`imposing-ros export --format tensorrt` builds it ahead of time)',
                       name, device, path.parent)
        start = time.perf_counter()
        compiled = trt.compile(module, arg_inputs=[example],
                               **compile_settings(device, takes_explicit_typing(trt)))
        save_atomically(path, lambda tmp: trt.save(compiled, str(tmp),
                                                   output_format='exported_program',
                                                   arg_inputs=[example]))
    LOGGER.info('built the TensorRT %s engine in %.0f s: %s', name,
                time.perf_counter() - start, path)
    return compiled


class TensorRTBackend(Backend):
    """fp16 TensorRT engines for the image encoder and the pose encoder at batch ``N``."""

    name = 'tensorrt'
    graph_safe = True

    def __init__(self, model: ImPosing, scene: str | None = None,
                 device: str | torch.device = 'cuda', num_candidates: int = 4096,
                 cache_dir: str | Path | None = None):
        super().__init__(model, scene, device)
        if self.device.type != 'cuda':
            raise ValueError('the tensorrt backend needs a CUDA device')
        self.device = cuda_device(self.device)  # engines are built for one GPU: name it
        cache_dir = Path(cache_dir) if cache_dir else DEFAULT_CACHE
        self.num_candidates = num_candidates
        height, width = model.config.image_size
        model = model.eval()
        with torch.no_grad():
            image_net = PreparedImageEncoder(model, self.scene, torch.float16,
                                             channels_last=False).to(self.device).eval()
            pose_net = PreparedPoseEncoder(model, self.scene, torch.float16).to(self.device)
            images = torch.zeros((1, 3, height, width), device=self.device)
            poses = torch.zeros((1, num_candidates, 7), device=self.device)
            poses[..., 6] = 1.0
            self.image_engine = compile_cached(image_net, images, cache_dir, 'image')
            self.pose_engine = compile_cached(pose_net, poses, cache_dir, 'pose')

    @classmethod
    def from_engines(cls, model: ImPosing, scene: str | None, device: str | torch.device,
                     image_engine, pose_engine, num_candidates: int) -> TensorRTBackend:
        """A backend around engines made elsewhere (``[1, 3, H, W]`` and ``[1, N, 7]``)."""
        backend = cls.__new__(cls)
        Backend.__init__(backend, model, scene, device)
        backend.image_engine, backend.pose_engine = image_engine, pose_engine
        backend.num_candidates = num_candidates
        return backend

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """``images [B, 3, H, W]`` -> float32 codes ``[B, d]`` (the engine's batch is 1)."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f'images must be [B, 3, H, W], got {tuple(images.shape)}')
        images = images.to(self.device).float()
        with on_device(self.device):
            if len(images) == 1:
                return self.image_engine(images).float()
            return torch.cat([self.image_engine(image[None]).float() for image in images])

    @torch.no_grad()
    def encode_poses(self, poses: torch.Tensor) -> torch.Tensor:
        """Poses ``[..., 7]``, any count (chunks of the engine's N) -> fp16 codes ``[..., d]``."""
        if poses.shape[-1] != 7:
            raise ValueError(f'poses must be [..., 7], got {tuple(poses.shape)}')
        with on_device(self.device):
            return encode_in_chunks(lambda chunk: self.pose_engine(chunk[None])[0],
                                    poses.float().contiguous(), self.num_candidates)

    def describe(self) -> dict:
        """Backend, device and the fixed candidate batch."""
        return {'backend': self.name, 'device': str(self.device), 'precision': 'fp16',
                'candidates': self.num_candidates}
