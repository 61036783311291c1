"""int8 CPU backend: both encoders quantized after training, run by inductor on oneDNN.

Why: without native bf16 (AVX2 CPUs, and AVX-512 ones without its BF16 extension) the torch
backend runs fp32, where the pose MLP sits at the sgemm ceiling (about 16 ms a level for the
paper's 4 x 256 MLP on 4096 candidates on the project's 2-core AVX2 machine) and the ResNet34
takes 44-50 ms. oneDNN's int8 kernels do about twice the work per instruction (measured there:
MLP 7.5 ms, ResNet34 24 ms; README "Inference backends and benchmark").

How (the library made for it, nothing hand-written): PT2E post-training static quantization
from torchao (``prepare_pt2e`` / ``convert_pt2e`` with ``X86InductorQuantizer``: per-channel
symmetric int8 weights, per-tensor uint8 activations from histogram observers), then
``torch.compile`` with frozen weights, which lowers the quantize / dequantize pairs around each
convolution and linear layer into oneDNN int8 kernels. What stays float32: the ImageNet
normalisation, the map normalisation and Fourier features (``sin(2^10 pi x)`` needs the
mantissa), the scores and everything in the search.

Calibration (activation ranges):

* pose encoder: the map's level-0 candidates and the same poses moved by the search's proposer
  at every level's standard deviation, i.e. what the search feeds it; needs no data;
* image encoder: camera images of the scene, given once to
  ``imposing-ros export --model M.pt --format int8 --calibration DATA --out DIR``, or carried
  by the checkpoint (``imposing-ros calibrate`` stores 32 images of its calibration data), from
  which backend ``auto`` builds the programs at the first start. Use reference images, not the
  images the model is evaluated on.

The quantized programs are saved with ``torch.export.save`` in a cache folder (the node's
``engine_cache``), keyed by the weights, map normalisation, input shape and the torch and
torchao versions (:func:`imposing_ros.runtime.programs.cache_key`); the backend loads them and
compiles them at start (seconds). Accuracy against fp32 is measured by
``imposing-ros bench --backend torch-int8 --model M.pt --data DATA``.
"""

from __future__ import annotations

from dataclasses import replace
import importlib.metadata
import json
import logging
from pathlib import Path
from typing import Iterable

import numpy as np
import torch

from imposing_ros.geometry import perturb_poses
from imposing_ros.localization.search import level_sigmas, SearchConfig
from imposing_ros.model.imposing import ImPosing
from imposing_ros.model.preprocess import preprocess
from imposing_ros.runtime.backends import (
    Backend,
    compiled_search_steps,
    compiler_available,
    encode_in_chunks,
    float_similarity,
    PreparedImageEncoder,
    PreparedPoseEncoder,
)
from imposing_ros.runtime.programs import cache_key, save_atomically

LOGGER = logging.getLogger('imposing_ros.runtime')

NAME = 'torch-int8'
DEFAULT_CACHE = Path.home() / '.cache' / 'imposing_ros' / 'int8'
# Calibration images used by `imposing-ros export --format int8` unless told otherwise.
DEFAULT_CALIBRATION_FRAMES = 32


def _torchao_pt2e():
    """The PT2E entry points of torchao (a project dependency; checked for a clear error)."""
    try:
        from torchao.quantization.pt2e import quantize_pt2e
        from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as x86
    except ImportError as exc:
        raise RuntimeError(f'the {NAME} backend needs torchao (pip install torchao): '
                           f'{exc}') from exc
    return quantize_pt2e, x86


def target_description() -> str:
    """What a quantized program depends on besides its weights: torch and torchao versions."""
    try:
        torchao = importlib.metadata.version('torchao')  # not imported here: see _torchao_pt2e
    except importlib.metadata.PackageNotFoundError:
        torchao = 'none'
    return f'torch {torch.__version__}|torchao {torchao}'


def quantize(module: torch.nn.Module, example: torch.Tensor,
             calibration: Iterable[torch.Tensor]) -> torch.export.ExportedProgram:
    """Quantize ``module`` (float32, eval) with activation ranges observed on ``calibration``.

    Returns an exported program for ``example``'s shape (static: inductor's int8 weight
    prepacking fails on a dynamic batch, "onednn.qlinear_prepack is not an OpOverload"), ready
    for ``torch.export.save``. Calibration batches have that shape too.
    """
    quantize_pt2e, x86 = _torchao_pt2e()
    # strict: dynamo records which call of a shared module each node comes from (torchvision's
    # BasicBlock calls one ReLU twice); the non-strict default merges both calls and the
    # quantizer then fails ("Input partition has more than one output node").
    graph = torch.export.export(module, (example,), strict=True).module()
    # reduce_range: 7-bit activations. Without VNNI (AVX2 CPUs) oneDNN multiplies uint8 by
    # int8 with vpmaddubsw, whose int16 pair sums saturate with 8-bit activations: measured on
    # the demo model's pose encoder, compiled int8 codes fell to cosine 0.79 against fp32 (0.9995
    # with reduce_range). One setting for every CPU, since programs can move between machines.
    quantizer = x86.X86InductorQuantizer().set_global(
        x86.get_default_x86_inductor_quantization_config(reduce_range=True))
    prepared = quantize_pt2e.prepare_pt2e(graph, quantizer)
    count = 0
    with torch.no_grad():
        for batch in calibration:
            prepared(batch)
            count += 1
    if count == 0:
        raise ValueError('int8 calibration needs at least one batch')
    converted = quantize_pt2e.convert_pt2e(prepared)
    _drop_unused_parameters(converted)
    return torch.export.export(converted, (example,))


def _drop_unused_parameters(graph: torch.fx.GraphModule) -> None:
    """Remove the float weights that quantization replaced by int8 constants.

    ``convert_pt2e`` folds each quantized weight into an int8 constant but leaves the float
    parameter on the module; exporting it again would save it beside the int8 one (the demo
    model's image program: 57 MB instead of about 12 MB).
    """
    used = {node.target for node in graph.graph.nodes if node.op == 'get_attr'}
    for name, _ in list(graph.named_parameters()):
        if name not in used:
            owner, _, attr = name.rpartition('.')
            delattr(graph.get_submodule(owner) if owner else graph, attr)


def calibration_poses(initial_poses: torch.Tensor, search: SearchConfig,
                      seed: int = 0) -> list[torch.Tensor]:
    """Pose batches ``[N, 7]`` like the search's: level-0 poses, then the proposer at every level.

    ``N = search.num_candidates``, drawn from ``initial_poses [M, 7]`` (the map's level-0 set).
    """
    generator = torch.Generator().manual_seed(seed)
    poses = initial_poses.float().cpu()
    n = search.num_candidates
    sigmas = level_sigmas(search, max(search.levels, 2))
    batches = []
    for sigma in [torch.zeros(6), *sigmas]:
        picked = poses[torch.randint(len(poses), (n,), generator=generator)]
        batches.append(perturb_poses(picked, torch.randn((n, 6), generator=generator), sigma))
    return batches


def calibration_images(spec: str | Path, count: int, size: tuple[int, int]) -> list[torch.Tensor]:
    """``count`` images ``[1, 3, h, w]`` of the dataset ``spec``, evenly spaced along it."""
    from imposing_ros.data.datasets import open_dataset

    if count < 1:
        raise ValueError(f'calibration needs at least one image, got {count}')
    reader = open_dataset(spec)
    total = len(reader.poses)  # no image decoding
    if total == 0:
        raise ValueError(f'{spec}: no frames to calibrate on')
    keep = set(np.linspace(0, total - 1, min(count, total)).round().astype(int).tolist())
    return [preprocess(frame.image, size) for i, frame in enumerate(reader) if i in keep]


# Where a checkpoint keeps its int8 calibration images: {scene: uint8 [K, H, W, 3] at the model
# input size}, stored by ``imposing-ros calibrate`` (K = DEFAULT_CALIBRATION_FRAMES).
CHECKPOINT_KEY = 'int8_calibration'


def stored_calibration_images(data: dict, scene: str) -> list[torch.Tensor] | None:
    """The calibration images a checkpoint carries for ``scene`` (``[1, 3, H, W]``), or None."""
    images = (data.get(CHECKPOINT_KEY) or {}).get(scene)
    if images is None or len(images) == 0:
        return None
    size = tuple(images.shape[1:3])
    return [preprocess(np.asarray(image), size) for image in images]


class Int8Programs:
    """The two quantized programs of one model and scene, with their cache paths."""

    def __init__(self, model: ImPosing, scene: str, cache_dir: str | Path | None = None,
                 num_candidates: int = SearchConfig.num_candidates):
        self.scene = scene
        self.initial_poses = model.maps[scene].initial_poses.float().cpu()
        self.cache_dir = Path(cache_dir) if cache_dir else DEFAULT_CACHE
        height, width = model.config.image_size
        model = model.eval()
        with torch.no_grad():
            # float32, NCHW: the quantizer and inductor choose the int8 layouts themselves.
            self.image_net = PreparedImageEncoder(model, scene, torch.float32,
                                                  channels_last=False).eval()
            self.pose_net = PreparedPoseEncoder(model, scene, torch.float32).eval()
        # Static shapes, as the search uses them: one image, N candidates.
        self.image_example = torch.zeros((1, 3, height, width))
        self.pose_example = torch.zeros((num_candidates, 7))
        self.pose_example[:, 6] = 1.0
        target = target_description()
        image_key = cache_key(self.image_net, self.image_example, target)
        pose_key = cache_key(self.pose_net, self.pose_example, target)
        self.image_path = self.cache_dir / f'image-int8-{image_key}.pt2'
        self.pose_path = self.cache_dir / f'pose-int8-{pose_key}.pt2'

    @property
    def cached(self) -> bool:
        """Whether both programs are in the cache folder."""
        return self.image_path.is_file() and self.pose_path.is_file()

    def build(self, images: Iterable[torch.Tensor], search: SearchConfig | None = None,
              describe: dict | None = None) -> None:
        """Quantize both encoders and save them (``images``: ``[1, 3, H, W]`` in [0, 1]).

        ``search`` gives the proposer deviations of the pose calibration (default: the paper's,
        with the programs' candidate count ``N``, which ``search`` must keep).

        ``describe`` (e.g. where the calibration images came from) is written beside the
        programs as JSON. Nothing is written unless both programs were made.
        """
        if search is None:
            n = len(self.pose_example)
            search = replace(SearchConfig(), num_candidates=n,
                             top_k=min(SearchConfig.top_k, n),
                             num_average=min(SearchConfig.num_average, n))
        images = list(images)
        if not images:
            raise ValueError('int8 calibration needs at least one image')
        for image in images:
            if image.shape != self.image_example.shape:
                raise ValueError(f'calibration images must be [1, 3, H, W] at the model size '
                                 f'{tuple(self.image_example.shape[2:])}, got '
                                 f'{tuple(image.shape)}')
        if search.num_candidates != len(self.pose_example):
            raise ValueError(f"search.num_candidates {search.num_candidates} != the programs' "
                             f'{len(self.pose_example)}')
        LOGGER.info('quantizing the image encoder on %d calibration images', len(images))
        image_program = quantize(self.image_net, self.image_example, images)
        LOGGER.info('quantizing the pose encoder on its level-0 set and proposer')
        pose_program = quantize(self.pose_net, self.pose_example,
                                calibration_poses(self.initial_poses, search))
        save_atomically(self.image_path,
                        lambda tmp: torch.export.save(image_program, str(tmp)))
        save_atomically(self.pose_path,
                        lambda tmp: torch.export.save(pose_program, str(tmp)))
        info = {'scene': self.scene, 'calibration_images': len(images),
                'target': target_description(), **(describe or {})}
        save_atomically(self.image_path.with_suffix('.json'),
                        lambda tmp: tmp.write_text(json.dumps(info, indent=2)))

    def load(self) -> tuple[torch.nn.Module, torch.nn.Module]:
        """The two programs as modules (image, pose)."""
        if not self.cached:
            raise FileNotFoundError(
                f'no int8 programs for this model (scene {self.scene!r}) in {self.cache_dir}: '
                f'make them with `imposing-ros export --model MODEL.pt --format int8 '
                f'--calibration DATA --out {self.cache_dir}`')
        _torchao_pt2e()  # registers the quantize / dequantize operators the programs use
        LOGGER.info('loading int8 programs %s and %s', self.image_path.name, self.pose_path.name)
        return (torch.export.load(str(self.image_path)).module(),
                torch.export.load(str(self.pose_path)).module())


class Int8Backend(Backend):
    """int8 image and pose encoders (see the module docstring); CPU with inductor only.

    ``calibration_images`` (``[1, 3, H, W]`` tensors in [0, 1]) build the programs when the
    cache folder has none for this model; without them a missing program is an error that
    names the export command. ``programs`` (already keyed, e.g. by ``auto``) replaces
    ``cache_dir`` and ``num_candidates``.
    """

    name = NAME

    def __init__(self, model: ImPosing, scene: str | None = None,
                 device: str | torch.device = 'cpu', cache_dir: str | Path | None = None,
                 calibration_images: Iterable[torch.Tensor] | None = None,
                 num_candidates: int = SearchConfig.num_candidates,
                 programs: Int8Programs | None = None):
        super().__init__(model, scene, device)
        if self.device.type != 'cpu':
            raise ValueError(f'the {NAME} backend runs on the CPU, not {self.device}')
        if not compiler_available():
            raise ValueError(f'the {NAME} backend needs inductor, which needs a C++ compiler')
        if programs is None:
            programs = Int8Programs(model, self.scene, cache_dir, num_candidates)
        if not programs.cached and calibration_images is not None:
            programs.build(calibration_images)
        image, pose = programs.load()
        self.programs = programs
        self.num_candidates = len(programs.pose_example)
        self._image = torch.compile(image, dynamic=False)
        self._pose = torch.compile(pose, dynamic=False)

        def encode_score(poses: torch.Tensor, image_codes: torch.Tensor) -> torch.Tensor:
            return float_similarity(image_codes, pose(poses)[None])

        # The search's levels: the pose program and eq. 1 compiled together, the N codes scored
        # where they are made (AVX-512 Xeon, a level's encode + score: 1.69-1.73 -> 1.34-1.35
        # ms for the demo model, 2.31-2.40 -> 2.14-2.26 ms in the paper configuration; the same
        # scores). Other shapes take encode_poses, then the score (_score_poses).
        self._encode_score = torch.compile(encode_score, dynamic=False)
        self.steps = compiled_search_steps(True)._replace(encode_score=self._score_poses)
        # Compiled here, at load, with frozen weights: inductor prepacks the int8 weights for
        # oneDNN and fuses the quantize / dequantize pairs into its int8 kernels. Set as a
        # config patch, not torch.compile(options=...): with torchao 0.18 on torch 2.14 the
        # options form fails ("onednn.qlinear_prepack is not an OpOverload"). Later calls have
        # the same static shapes, so nothing compiles again outside the patch.
        with torch.no_grad(), torch._inductor.config.patch(freezing=True):
            code = self._image(programs.image_example)
            self._pose(programs.pose_example)
            self._encode_score(programs.pose_example, code)

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """``images [B, 3, H, W]`` -> float32 codes ``[B, d]``."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f'images must be [B, 3, H, W], got {tuple(images.shape)}')
        # The program takes one image (static shapes): a batch runs image by image.
        images = images.float().contiguous()
        if len(images) == 1:
            return self._image(images)
        return torch.cat([self._image(image[None]) for image in images])

    @torch.no_grad()
    def encode_poses(self, poses: torch.Tensor) -> torch.Tensor:
        """Poses in metres ``[..., 7]`` -> float32 codes ``[..., d]``."""
        if poses.shape[-1] != 7:
            raise ValueError(f'poses must be [..., 7], got {tuple(poses.shape)}')
        # The program takes N poses (static shapes): any count runs in chunks of N.
        return encode_in_chunks(lambda chunk: self._pose(chunk.contiguous()),
                                poses.reshape(-1, 7).float(),
                                self.num_candidates).reshape(*poses.shape[:-1], -1)

    @torch.no_grad()
    def _score_poses(self, image_codes: torch.Tensor, poses: torch.Tensor) -> torch.Tensor:
        """Eq. 1 scores ``[B, M]`` of ``image_codes [B, d]`` against poses ``[B, M, 7]``."""
        if image_codes.shape[0] == 1 and poses.shape[:-1] == (1, self.num_candidates):
            return self._encode_score(poses[0].float().contiguous(), image_codes.float())
        return self.steps.score(image_codes, self.encode_poses(poses))

    def describe(self) -> dict:
        """Backend, device, precision, threads and the programs used."""
        return {'backend': self.name, 'device': str(self.device), 'precision': 'int8',
                'inductor': True, 'threads': torch.get_num_threads(),
                'programs': [self.programs.image_path.name, self.programs.pose_path.name]}
