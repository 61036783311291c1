"""Inference backends: the two encoders of one scene, with their weights prepared once at load.

This module holds the interface and the torch backends; :mod:`imposing_ros.runtime.select`
builds a backend by name (and decides ``auto``).

A backend exposes what the candidate search needs of a model, for one scene:

* ``encode_images(images [B, 3, H, W] float RGB in [0, 1]) -> [B, d]`` float32 codes;
* ``encode_poses(poses [..., 7] in metres) -> [..., d]`` codes (float32, or the backend's
  compute dtype; :func:`imposing_ros.model.encoders.similarity` casts them);
* ``steps``: the search's scoring (eq. 1, float32), proposing and estimating
  (:class:`~imposing_ros.localization.search.SearchSteps`), compiled where the backend compiles.

Backends (:func:`~imposing_ros.runtime.select.select_backend` names):

``torch`` (fp32), ``torch-bf16``, ``torch-fp16``
    Eager PyTorch on CPU or CUDA. At load the ResNet's batch norms are folded into its
    convolutions, the weights are cast once to the compute dtype and laid out channels_last;
    the pose MLP keeps its Fourier features in fp32 (``sin(2^10 pi x)`` needs the mantissa) and
    runs its linear layers on pre-cast weights. No autocast at run time: autocast would re-cast
    the 21 M ResNet weights on every frame. Every op is free of host synchronisation (the map
    normalisation lives on the device), so the search that calls it can be captured in one CUDA
    graph (:mod:`imposing_ros.runtime.graphs`). ``torch-fp16`` is for CUDA (CPUs here have no
    fast fp16).
``torch-int8``
    Both encoders quantized to int8 after training (torchao PT2E) and compiled by inductor
    into oneDNN int8 kernels (:mod:`imposing_ros.runtime.int8`), CPU only. Its programs are
    made once from calibration images (``imposing-ros export --format int8``) and loaded from
    ``cache_dir``.
``tensorrt``
    torch-tensorrt dynamo engines (:mod:`imposing_ros.runtime.tensorrt`), CUDA only.
``auto`` (default)
    TensorRT on CUDA when torch-tensorrt imports and its engines build or load (a failure is
    logged with its reason and torch fp16 is used instead), else torch fp16 on CUDA; on a CPU
    ``torch-int8`` when the cache folder holds int8 programs of this model (someone exported
    them on purpose), else fp32 or bf16, whichever is faster on this CPU by measurement
    (:mod:`imposing_ros.runtime.choice`). The choice and its reason are logged.

CPU runtimes (OpenVINO, ONNX Runtime) are not included: the project admits one only if it beats
torch by 1.3x end to end, and OpenVINO did not (docs/backends.md).
"""

from __future__ import annotations

import copy
import logging
import shutil

import torch
from torch import nn
import torch.nn.functional as F  # noqa: N812 (the usual torch alias)

from imposing_ros.geometry import canonical_quat
from imposing_ros.localization.search import SearchSteps
from imposing_ros.model.encoders import similarity
from imposing_ros.model.imposing import ImPosing

LOGGER = logging.getLogger('imposing_ros.runtime')

PRECISIONS = {'fp32': torch.float32, 'bf16': torch.bfloat16, 'fp16': torch.float16}


def cpu_has_native_bf16() -> bool:
    """Whether oneDNN runs bf16 natively on this CPU (AVX-512 BF16 or AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # private op: absent in some builds
        return False


def fuse_conv_bn(module: nn.Module) -> nn.Module:
    """Fold every eval-mode ``Conv2d -> BatchNorm2d`` pair of ``module`` (a traceable net)."""
    from torch.fx.experimental.optimization import fuse

    return fuse(module.eval(), inplace=False)


def float_similarity(image_codes: torch.Tensor, pose_codes: torch.Tensor) -> torch.Tensor:
    """Eq. 1 in float32: cosines of low-precision codes are accumulated in fp32."""
    return similarity(image_codes.float(), pose_codes.float())


class PreparedImageEncoder(nn.Module):
    """ImageNet normalisation, a BN-folded backbone and one scene's head, in one dtype.

    ``forward(images [B, 3, H, W] float in [0, 1]) -> [B, d]`` float32.
    """

    def __init__(self, model: ImPosing, scene: str, dtype: torch.dtype,
                 channels_last: bool = True, fold_bn: bool = True):
        super().__init__()
        encoder = model.image_encoder
        backbone = copy.deepcopy(encoder.backbone).eval()
        self.backbone = fuse_conv_bn(backbone) if fold_bn else backbone
        self.head = copy.deepcopy(encoder.heads[scene]).eval()
        self.register_buffer('mean', encoder.mean.detach().clone(), False)
        self.register_buffer('std', encoder.std.detach().clone(), False)
        self.dtype = dtype
        self.channels_last = channels_last
        self.backbone.to(dtype)
        self.head.to(dtype)
        if channels_last:
            self.backbone.to(memory_format=torch.channels_last)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Codes ``[B, d]`` (float32) of ``images [B, 3, H, W]``."""
        x = ((images - self.mean) / self.std).to(self.dtype)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.head(self.backbone(x)).float()


class PreparedPoseEncoder(nn.Module):
    """One scene's map normalisation, Fourier features (fp32) and MLP (compute dtype).

    ``forward(poses [..., 7] metres) -> [..., d]`` in the compute dtype. Graph-safe: no host
    reads, every constant is a device buffer.
    """

    def __init__(self, model: ImPosing, scene: str, dtype: torch.dtype):
        super().__init__()
        norm = model.maps[scene].normalization
        encoder = model.pose_encoders[scene]
        self.register_buffer('center', torch.tensor(norm.center, dtype=torch.float32), False)
        self.register_buffer('inv_scale', torch.tensor(1.0 / norm.scale), False)
        self.register_buffer('freqs', encoder.fourier.freqs.detach().clone().float(), False)
        linears = [m for m in encoder.mlp if isinstance(m, nn.Linear)]
        self.weights = nn.ParameterList(
            [nn.Parameter(m.weight.detach().to(dtype).clone(), requires_grad=False)
             for m in linears])
        self.biases = nn.ParameterList(
            [nn.Parameter(m.bias.detach().to(dtype).clone(), requires_grad=False)
             for m in linears])
        self.dtype = dtype

    def features(self, poses: torch.Tensor) -> torch.Tensor:
        """Fourier features ``[..., 7 (1 + 2F)]`` (float32) of poses in metres."""
        poses = poses.float()
        t = (poses[..., :3] - self.center) * self.inv_scale
        x = torch.cat([t, canonical_quat(poses[..., 3:])], dim=-1)
        angles = x[..., None] * self.freqs
        return torch.cat([x[..., None], angles.sin(), angles.cos()], dim=-1).flatten(-2)

    def mlp(self, features: torch.Tensor) -> torch.Tensor:
        """The linear layers (ReLU between) on features already in the compute dtype."""
        x = features
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            x = F.linear(x, w, b)
            if i < last:
                x = x.relu_()
        return x

    def forward(self, poses: torch.Tensor) -> torch.Tensor:
        """Codes ``[..., d]`` in the compute dtype."""
        return self.mlp(self.features(poses).to(self.dtype))


class Backend:
    """Interface of an inference backend (see the module docstring)."""

    name = 'base'
    # Whether encode_images / encode_poses may be captured in a CUDA graph.
    graph_safe = False
    # Why ``auto`` chose this backend (set by select_backend), or None.
    choice: str | None = None

    def __init__(self, model: ImPosing, scene: str | None, device: torch.device):
        self.scene = model.default_scene(scene)
        self.device = torch.device(device)
        self.config = model.config
        # The search's steps between pose encodings: eager here, compiled by backends that
        # compile.
        self.steps = compiled_search_steps(False)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        """``images [B, 3, H, W]`` -> float32 codes ``[B, d]``."""
        raise NotImplementedError

    def encode_poses(self, poses: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        """Poses in metres ``[..., 7]`` -> codes ``[..., d]``."""
        raise NotImplementedError

    def describe(self) -> dict:
        """Plain description for logs and benchmark reports."""
        out = {'backend': self.name, 'device': str(self.device)}
        if self.choice:
            out['auto'] = self.choice
        return out


class TorchBackend(Backend):
    """Eager PyTorch with prepared weights (fp32, bf16 or fp16); CPU or CUDA."""

    graph_safe = True

    def __init__(self, model: ImPosing, scene: str | None = None,
                 device: str | torch.device = 'cpu', precision: str = 'fp32',
                 channels_last: bool = True, inductor: bool = False):
        super().__init__(model, scene, device)
        if precision not in PRECISIONS:
            raise ValueError(f'precision must be one of {sorted(PRECISIONS)}, got {precision!r}')
        self.precision = precision
        self.dtype = PRECISIONS[precision]
        self.name = 'torch' if precision == 'fp32' else f'torch-{precision}'
        model = model.eval()
        with torch.no_grad():
            self.image_net = PreparedImageEncoder(model, self.scene, self.dtype,
                                                  channels_last).to(self.device).eval()
            self.pose_net = PreparedPoseEncoder(model, self.scene, self.dtype).to(self.device)
        self.inductor = inductor
        self._image, self._pose = self.image_net, self.pose_net
        self.steps = compiled_search_steps(inductor)
        if inductor:
            # Inductor with frozen weights: the ResNet's convolutions run on prepacked oneDNN
            # weights with their ReLUs and additions fused, the pose encoder's Fourier features
            # become one C++ loop, and the search's steps (about a hundred tiny eager ops per
            # level) a few loops each (docs/backends.md has the figures). Built on
            # first use (seconds; inductor caches on disk).
            frozen = {'freezing': True}
            self._image = torch.compile(self.image_net, dynamic=False, options=frozen)
            self._pose = torch.compile(self.pose_net, dynamic=False, options=frozen)

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """``images [B, 3, H, W]`` -> float32 codes ``[B, d]``."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f'images must be [B, 3, H, W], got {tuple(images.shape)}')
        # One layout for the compiled module: a new one would make inductor rebuild it.
        return self._image(images.to(self.device).contiguous())

    @torch.no_grad()
    def encode_poses(self, poses: torch.Tensor) -> torch.Tensor:
        """Poses in metres ``[..., 7]`` -> codes ``[..., d]`` in the compute dtype."""
        if poses.shape[-1] != 7:
            raise ValueError(f'poses must be [..., 7], got {tuple(poses.shape)}')
        return self._pose(poses.contiguous())

    def describe(self) -> dict:
        """Backend, device, precision, inductor and threads (and why ``auto`` chose it)."""
        return {**super().describe(), 'precision': self.precision, 'inductor': self.inductor,
                'threads': torch.get_num_threads()}


def encode_in_chunks(program, poses: torch.Tensor, n: int) -> torch.Tensor:
    """Codes ``[..., d]`` of poses ``[..., 7]`` of any count, by a program of ``n`` poses.

    ``program`` maps ``[n, 7] -> [n, d]`` (a static-shape engine). The poses run in chunks of
    ``n``, the last one padded with copies of its first pose (real poses: nothing outside the
    range the engine was built on); exactly ``n`` poses, the search's case, run in one call.
    """
    flat = poses.reshape(-1, 7)
    if len(flat) == 0:
        raise ValueError('no poses to encode')
    if len(flat) == n:
        codes = program(flat)
    else:
        chunks = []
        for start in range(0, len(flat), n):
            chunk = flat[start:start + n]
            if len(chunk) < n:
                chunk = torch.cat([chunk, chunk[:1].expand(n - len(chunk), 7)])
            chunks.append(program(chunk))
        codes = torch.cat(chunks)[:len(flat)]
    return codes.reshape(*poses.shape[:-1], codes.shape[-1])


def compiled_search_steps(inductor: bool) -> SearchSteps:
    """The search's steps between pose encodings, compiled when ``inductor``.

    Score in float32 (:func:`float_similarity`). Eager, a level's top-k, mixture sampling and
    refinement are about a hundred tiny ops, and the final average two top-k, an eigensolver and
    a covariance; compiled, each step is one or two C++ loops around the top-k and eigensolver
    calls (docs/backends.md has the figures). Each compiles on first use, once per distinct
    integer argument (the refined count of the last level, for instance).
    """
    eager = SearchSteps(score=float_similarity)
    if not inductor:
        return eager
    return SearchSteps(*(torch.compile(step, dynamic=False)
                         for step in (eager.score, eager.propose, eager.estimate, eager.perturb)))


def compiler_available() -> bool:
    """Whether inductor can build its CPU kernels here (it needs a C++ compiler)."""
    return any(shutil.which(name) for name in ('g++', 'c++', 'clang++'))
