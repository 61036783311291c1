"""TensorRT backend through torch-tensorrt (dynamo frontend), CUDA only.

torch-tensorrt cannot be installed on a machine without CUDA and fails to import there, so the
import is guarded (:func:`import_torch_tensorrt`) and nothing here runs on the project's CPU
machines; its tests are marked ``gpu`` and skip without CUDA. The code follows torch-tensorrt's
documented API:

* ``torch_tensorrt.compile(module, ir='dynamo', arg_inputs=[...], use_explicit_typing=True)``:
  with explicit typing the engine keeps the dtypes of the graph. Since torch-tensorrt 2.13 the
  ``enabled_precisions`` argument is ignored, so fp16 comes from converting the model itself:
  the prepared encoders (:mod:`imposing_ros.runtime.backends`) hold fp16 weights and cast their
  input; the Fourier features stay fp32 (``sin(2^10 pi x)`` needs the mantissa).
* Static shapes: the image engine takes ``[1, 3, H, W]``, the pose engine ``[1, N, 7]`` (the
  search's fixed batch). Random numbers never enter an engine (a ``randn`` inside one becomes a
  constant): the search draws its noise outside and passes it in.
* ``torch_tensorrt.save(gm, path, arg_inputs=...)`` / ``torch.export.load(path).module()``:
  compiled programs are cached on disk under a key of the model weights, the GPU, the library
  versions and the input shapes, so a node restart does not rebuild engines (minutes).
"""

from __future__ import annotations

import importlib
import logging
from pathlib import Path

import torch

from imposing_ros.model.imposing import ImPosing
from imposing_ros.runtime.backends import (
    Backend,
    PreparedImageEncoder,
    PreparedPoseEncoder,
)
from imposing_ros.runtime.programs import cache_key, save_atomically

LOGGER = logging.getLogger('imposing_ros.runtime')

DEFAULT_CACHE = Path.home() / '.cache' / 'imposing_ros' / 'tensorrt'


def import_torch_tensorrt():
    """The ``torch_tensorrt`` module, or None where CUDA or the package is missing."""
    if not torch.cuda.is_available():
        return None
    try:
        return importlib.import_module('torch_tensorrt')
    except Exception as exc:  # ImportError, or CUDA/TensorRT library errors raised at import
        LOGGER.debug('torch_tensorrt unavailable: %s', exc)
        return None


def target_description(device: torch.device) -> str:
    """GPU name, compute capability, torch and torch-tensorrt versions (CUDA only)."""
    trt = import_torch_tensorrt()
    capability = '.'.join(map(str, torch.cuda.get_device_capability(device)))
    return (f'{torch.cuda.get_device_name(device)}|sm{capability}|torch {torch.__version__}|'
            f'torch-tensorrt {getattr(trt, "__version__", "none")}')


def compile_cached(module: torch.nn.Module, example: torch.Tensor, cache_dir: Path,
                   name: str) -> torch.nn.Module:
    """Compile ``module`` for ``example``'s shape, or load the cached program."""
    trt = import_torch_tensorrt()
    if trt is None:
        raise RuntimeError('the tensorrt backend needs CUDA and torch-tensorrt')
    key = cache_key(module, example, target_description(example.device))
    path = Path(cache_dir) / f'{name}-{key}.ep'
    if path.is_file():
        LOGGER.info('loading TensorRT program %s', path)
        return torch.export.load(str(path)).module()
    LOGGER.info('compiling TensorRT program %s (minutes, once per model and GPU)', name)
    compiled = trt.compile(module, ir='dynamo', arg_inputs=[example], use_explicit_typing=True,
                           min_block_size=1)
    save_atomically(path, lambda tmp: trt.save(compiled, str(tmp), arg_inputs=[example]))
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

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """``images [1, 3, H, W]`` -> float32 codes ``[1, d]`` (the engine's fixed batch)."""
        if images.shape[0] != 1:  # engines have static shapes: run a batch image by image
            return torch.cat([self.encode_images(image[None]) for image in images])
        return self.image_engine(images.to(self.device).float()).float()

    @torch.no_grad()
    def encode_poses(self, poses: torch.Tensor) -> torch.Tensor:
        """Poses ``[N, 7]`` or ``[B, N, 7]`` (N fixed at build) -> fp16 codes."""
        n = self.num_candidates
        if poses.shape[-2:] != (n, 7):
            raise ValueError(f'the TensorRT pose engine takes [.., {n}, 7] poses, got '
                             f'{tuple(poses.shape)}')
        flat = poses.reshape(-1, n, 7).float()
        codes = torch.cat([self.pose_engine(chunk[None]) for chunk in flat])
        return codes.reshape(*poses.shape[:-1], -1)

    def describe(self) -> dict:
        """Backend, device and the fixed candidate batch."""
        return {'backend': self.name, 'device': str(self.device), 'precision': 'fp16',
                'candidates': self.num_candidates}
