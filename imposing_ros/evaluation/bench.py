"""Benchmark the localizer per stage, against the hardware floor (not a timed test).

Default run: the paper configuration (ResNet34 at 135 x 240, pose MLP of 4 x 256, N = 4096,
K = 6, B = 100, top 256 averaged) on one image at a time, after warm-up, on the ``auto`` backend.
It reports:

* per-stage medians and 90th percentiles of ``Localizer.localize`` (preprocessing, image
  encoder, level 0, each level's top-k + sampling / pose encoding / scoring, averaging and
  covariance, copy of the result), the frame time, frames per second and the threads used;
* the floor: the best isolated image-encoder time plus K times the best isolated pose-encoder
  time for N candidates, measured in the same run, K being the levels the frames ran (median:
  tracking runs ``tracking_levels``, early stops run fewer), and the floor ratio = frame
  median / floor;
* with ``--data`` (and a trained ``--model``): accuracy of the benchmarked backend against fp32
  eager on that validation set (median translation and rotation errors, and how far the two
  backends' estimates are apart); ``torch-int8`` is calibrated on ``--calibration`` images
  (reference images, not ``--data``) or loaded from ``--engine-cache``;
* with ``--scaling``: frame time and model bytes for maps built from 1k, 10k and 100k reference
  poses (the map is the pose encoder's weights: neither should grow);
* with ``--openvino``: the OpenVINO comparison behind the choice of CPU runtimes (needs
  ``pip install openvino``; not a dependency of the project).

``--json PATH`` writes everything with a top-level ``frame_ms_median``. Without ``--model`` a
randomly initialised model of the configuration is timed (time does not depend on weights).
"""

from __future__ import annotations

import argparse
from dataclasses import replace
import json
from pathlib import Path
import tempfile
import time
from typing import Callable

import numpy as np
import torch

from imposing_ros.localization.localizer import Localizer, LocalizerConfig
from imposing_ros.localization.search import SearchConfig
from imposing_ros.model.checkpoint import load_model, read_checkpoint, save_checkpoint
from imposing_ros.model.encoders import ModelConfig
from imposing_ros.model.imposing import ImPosing
from imposing_ros.runtime.int8 import DEFAULT_CALIBRATION_FRAMES
from imposing_ros.runtime.select import add_backend_arguments, select_backend
from imposing_ros.training.trainer import build_scene_map
from imposing_ros.utils import atomic_write_text


def random_poses(count: int, seed: int = 0) -> np.ndarray:
    """``count`` camera poses ``[count, 7]`` spread over a 2 km x 2 km map, 1.5 m high."""
    g = np.random.default_rng(seed)
    yaw = g.uniform(-np.pi, np.pi, count)
    return np.stack([g.uniform(-1000, 1000, count), g.uniform(-1000, 1000, count),
                     np.full(count, 1.5), np.zeros(count), np.zeros(count), np.sin(yaw / 2),
                     np.cos(yaw / 2)], axis=1)


def random_model(config: ModelConfig, reference_poses: int, seed: int = 0) -> ImPosing:
    """A model of ``config`` over a random 2 km map of ``reference_poses`` poses."""
    poses = random_poses(reference_poses, seed)
    torch.manual_seed(seed)
    return ImPosing(config, {'bench': build_scene_map(poses, 4096, seed)})


def _summary(values) -> dict:
    values = np.asarray(values, dtype=float)
    return {'median': float(np.median(values)), 'p90': float(np.percentile(values, 90)),
            'min': float(values.min())}


def _best_ms(fn, repeats: int, warmup: int = 3) -> float:
    """Best wall time (ms) of ``fn()`` over ``repeats`` calls after ``warmup``."""
    for _ in range(warmup):
        fn()
    best = float('inf')
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return 1e3 * best


def benchmark(localizer: Localizer, frames: int = 30, warmup: int = 5,
              mode: str = 'global') -> dict:
    """Per-stage timings (ms) of ``frames`` frames of ``localizer`` after ``warmup`` frames.

    Times :meth:`Localizer.localize` itself, through its stage hook. ``mode='tracking'`` passes
    a prior (a pose of the level-0 set with a 5 m / 5 deg covariance).
    """
    device = localizer.device
    height, width = localizer.image_size
    image = np.random.default_rng(0).integers(0, 255, (height * 2, width * 2, 3), np.uint8)
    prior = prior_cov = None
    if mode == 'tracking':
        prior = localizer.initial_poses[0].double().cpu().numpy()
        prior_cov = np.diag([25.0, 25.0, 0.25] + [np.deg2rad(5.0) ** 2] * 3)

    def sync():
        if device.type == 'cuda':
            torch.cuda.synchronize(device)

    records, levels_run = [], []
    for i in range(warmup + frames):
        marks = [('start', time.perf_counter())]

        def mark(name, marks=marks):
            sync()
            marks.append((name, time.perf_counter()))

        result = localizer.localize(image, prior, prior_cov, on_stage=mark)
        mark('result')  # copies to the host
        if i >= warmup:
            stages = {name: 1e3 * (t - marks[k - 1][1]) for k, (name, t) in enumerate(marks)
                      if k > 0}
            stages['frame'] = 1e3 * (marks[-1][1] - marks[0][1])
            records.append(stages)
            levels_run.append(result.levels)
    names = list(dict.fromkeys(name for r in records for name in r))  # early stops vary
    out = {name: _summary([r[name] for r in records if name in r]) for name in names}
    out['levels_run'] = _summary(levels_run)
    return out


def _candidate_batch(localizer: Localizer) -> torch.Tensor:
    """``[1, N, 7]`` poses picked evenly from the level-0 set, whatever its size."""
    initial = localizer.initial_poses
    index = torch.linspace(0, len(initial) - 1, localizer.config.search.num_candidates)
    return initial[index.round().long().to(initial.device)][None]


def hardware_floor(localizer: Localizer, repeats: int = 20, levels: int | None = None) -> dict:
    """Best isolated image-encoder time + K x best isolated pose-encoder time (N candidates).

    ``levels``: K, the levels the timed frames ran (default: the global search's).
    """
    backend, device = localizer.backend, localizer.device
    levels = localizer.config.search.levels if levels is None else levels
    height, width = localizer.image_size
    images = torch.rand((1, 3, height, width), device=device)
    poses = _candidate_batch(localizer)

    def run(fn):
        def call():
            with torch.no_grad():
                fn()
            if device.type == 'cuda':
                torch.cuda.synchronize(device)
        return call

    image_ms = _best_ms(run(lambda: backend.encode_images(images)), repeats)
    pose_ms = _best_ms(run(lambda: backend.encode_poses(poses)), repeats)
    floor = image_ms + levels * pose_ms
    return {'image_encoder_ms': image_ms, 'pose_encoder_ms': pose_ms, 'levels': levels,
            'floor_ms': floor}


def accuracy(localizer: Localizer, model: ImPosing, frames: list,
             initial_poses=None) -> dict:
    """Median errors of ``localizer`` and of fp32 eager on ``frames``, and their disagreement."""
    from imposing_ros.evaluation.metrics import pose_errors, summarize

    truth = torch.from_numpy(np.stack([f.pose for f in frames]))
    name = localizer.backend_name
    reference = Localizer(model, localizer.scene, localizer.config, localizer.device, 'torch',
                          initial_poses, inductor='off')
    estimates = {}
    for key, runner in ((name, localizer), ('torch', reference)):
        if key not in estimates:
            estimates[key] = torch.from_numpy(np.stack([runner.localize(f.image).pose
                                                        for f in frames]))
    out = {}
    for key, est in estimates.items():
        et, er = pose_errors(est, truth)
        out[key] = summarize(et.numpy(), er.numpy())
    fast, ref = out[name], out['torch']
    apart_t, apart_r = pose_errors(estimates[name], estimates['torch'])
    out['median_m_ratio'] = fast['median_m'] / max(ref['median_m'], 1e-9)
    out['estimates_apart_median_m'] = float(apart_t.median())
    out['estimates_apart_median_deg'] = float(apart_r.median())
    return out


def scaling(config: ModelConfig, search: SearchConfig, backend: Callable[[ImPosing], object],
            device: str, frames: int, warmup: int,
            sizes: tuple[int, ...] = (1_000, 10_000, 100_000)) -> list[dict]:
    """Frame time and serialized model bytes for maps of ``sizes`` reference poses.

    ``backend(model)`` gives what :class:`Localizer` takes as its backend (a name or a built one).
    """
    rows = []
    for size in sizes:
        model = random_model(config, size)
        with tempfile.TemporaryDirectory() as tmp:
            model_bytes = save_checkpoint(Path(tmp) / 'model.pt', model, seed=0).stat().st_size
        localizer = Localizer(model, None, LocalizerConfig(search=search), device, backend(model))
        stages = benchmark(localizer, frames, warmup)
        rows.append({'reference_poses': size, 'frame_ms_median': stages['frame']['median'],
                     'model_bytes': model_bytes})
    return rows


def make_backend(model: ImPosing, args: argparse.Namespace, num_candidates: int,
                 levels: int = 6):
    """The backend ``Localizer`` takes for ``args``: a name, or a built ``torch-int8``.

    ``torch-int8`` is calibrated on ``--calibration`` images, loaded from ``--engine-cache``, or
    calibrated on the images a checkpoint carries. The random model of a timing run carries
    noise images instead (time does not depend on the activation ranges), so that ``auto``
    weighs int8 on it as on a trained model.
    """
    from imposing_ros.runtime.int8 import (
        calibration_images,
        Int8Backend,
        stored_calibration_images,
    )

    size = tuple(model.config.image_size)
    if args.model:
        stored = stored_calibration_images(read_checkpoint(args.model), model.default_scene())
    else:
        generator = torch.Generator().manual_seed(0)
        stored = [torch.rand((1, 3, *size), generator=generator) for _ in range(4)]
    if args.backend != 'torch-int8':  # auto: int8 too, where there are calibration images
        return select_backend(args.backend, model, None, args.device, num_candidates,
                              cache_dir=args.engine_cache, inductor=args.inductor,
                              levels=levels, calibration_images=stored)

    if args.inductor == 'off':
        raise ValueError('the torch-int8 backend runs through inductor: inductor cannot be off')
    images = calibration_images(args.calibration, args.calibration_frames, size) \
        if args.calibration else stored
    with tempfile.TemporaryDirectory() as tmp:  # programs are in memory once loaded
        return Int8Backend(model, None, args.device, args.engine_cache or tmp, images,
                           num_candidates)


def openvino_comparison(model: ImPosing, localizer: Localizer, repeats: int = 20) -> dict:
    """Best times of OpenVINO (bf16 hint) for the image and pose encoders of ``localizer``."""
    import openvino as ov  # optional, only for this comparison

    from imposing_ros.runtime.backends import PreparedImageEncoder, PreparedPoseEncoder

    height, width = localizer.image_size
    images = torch.rand((1, 3, height, width))
    poses = _candidate_batch(localizer).cpu()
    core = ov.Core()
    settings = {'INFERENCE_PRECISION_HINT': 'bf16', 'PERFORMANCE_HINT': 'LATENCY',
                'INFERENCE_NUM_THREADS': torch.get_num_threads()}
    out = {}
    fp32, scene = torch.float32, localizer.scene  # OpenVINO runs fp32 graphs in bf16 itself
    for name, module, example in (
            ('image_encoder_ms', PreparedImageEncoder(model, scene, fp32, False), images),
            ('pose_encoder_ms', PreparedPoseEncoder(model, scene, fp32), poses)):
        with torch.no_grad():
            compiled = core.compile_model(ov.convert_model(module.eval(), example_input=example),
                                          'CPU', settings)
        request = compiled.create_infer_request()
        array = example.numpy()
        out[name] = _best_ms(lambda r=request, a=array: r.infer({0: a}), repeats)
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``imposing-ros bench``."""
    parser.add_argument('--model', help='checkpoint to time (default: a random paper model)')
    add_backend_arguments(parser)
    parser.add_argument('--calibration', help='torch-int8: calibration images (dataset spec); '
                        'default: the programs in --engine-cache, or noise for the random model')
    parser.add_argument('--calibration-frames', type=int, default=DEFAULT_CALIBRATION_FRAMES,
                        help=f'torch-int8: calibration images used (default '
                        f'{DEFAULT_CALIBRATION_FRAMES})')
    parser.add_argument('--backbone', default=ModelConfig.backbone,
                        help=f'random model: image backbone (default {ModelConfig.backbone})')
    parser.add_argument('--pose-layers', type=int, default=ModelConfig.pose_layers,
                        help=f'random model: pose MLP layers (default {ModelConfig.pose_layers})')
    parser.add_argument('--candidates', type=int, default=4096, help='N (default 4096)')
    parser.add_argument('--levels', type=int, default=6, help='K (default 6)')
    parser.add_argument('--mode', default='global', choices=('global', 'tracking'))
    parser.add_argument('--tracking-levels', type=int,
                        default=LocalizerConfig.tracking_levels, help='levels in tracking mode')
    parser.add_argument('--converge-m', type=float, default=0.0,
                        help='early stop: translation tolerance in metres (0 = off)')
    parser.add_argument('--converge-deg', type=float, default=0.0,
                        help='early stop: rotation tolerance in degrees (0 = off)')
    parser.add_argument('--frames', type=int, default=30, help='timed frames (default 30)')
    parser.add_argument('--warmup', type=int, default=5, help='warm-up frames (default 5)')
    parser.add_argument('--threads', type=int, default=2, help='torch threads (default 2)')
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--data', help='validation set for the accuracy check (needs --model)')
    parser.add_argument('--accuracy-frames', type=int, default=100,
                        help='frames of --data used, evenly spaced (default 100)')
    parser.add_argument('--level0', help="level-0 set instead of the map's: a count M (M poses "
                        'spread over the map: timing) or a dataset spec whose poses are used '
                        '(e.g. the training data; with --data: accuracy too)')
    parser.add_argument('--scaling', action='store_true',
                        help='also time maps of 1k, 10k and 100k reference poses')
    parser.add_argument('--openvino', action='store_true',
                        help='also time OpenVINO bf16 (pip install openvino)')
    parser.add_argument('--json', help='write the results here')


def _load_frames(spec: str, count: int) -> list:
    from imposing_ros.data.datasets import open_dataset

    frames = list(open_dataset(spec))
    if not frames:
        raise ValueError(f'{spec}: no frames')
    index = np.linspace(0, len(frames) - 1, min(count, len(frames))).round().astype(int)
    return [frames[i] for i in np.unique(index)]


def run(args: argparse.Namespace) -> int:
    """Entry of ``imposing-ros bench``."""
    if args.data and not args.model:
        raise ValueError('--data needs --model (a trained checkpoint)')
    torch.set_num_threads(args.threads)
    if args.model:
        model = load_model(args.model)[0]
    else:
        model = random_model(ModelConfig(backbone=args.backbone, pose_layers=args.pose_layers),
                             10000)
    search = replace(SearchConfig(), num_candidates=args.candidates, levels=args.levels,
                     top_k=min(100, args.candidates), num_average=min(256, args.candidates),
                     converge_m=args.converge_m, converge_deg=args.converge_deg)
    config = LocalizerConfig(search=search, tracking_levels=args.tracking_levels)
    initial = None
    if args.level0 and args.level0.isdigit():
        initial = torch.from_numpy(random_poses(int(args.level0), seed=1)).float()
    elif args.level0:
        from imposing_ros.data.datasets import open_dataset

        initial = torch.from_numpy(np.asarray(open_dataset(args.level0).poses)).float()
    localizer = Localizer(model, None, config, args.device,
                          make_backend(model, args, search.num_candidates, search.levels),
                          initial)
    stages = benchmark(localizer, args.frames, args.warmup, args.mode)
    floor = hardware_floor(localizer, levels=round(stages['levels_run']['median']))
    frame = stages['frame']['median']
    floor['ratio'] = frame / floor['floor_ms']
    describe = localizer.backend.describe()
    print(f'{model.config.backbone} {tuple(model.config.image_size)}, pose MLP '
          f'{model.config.pose_layers} x {model.config.pose_width}, N = {search.num_candidates},'
          f' K = {search.levels}, {args.mode}; backend {describe}; {args.frames} frames after '
          f'{args.warmup} warm-up')
    print(f'{"stage":<24}{"median ms":>10}{"p90 ms":>10}')
    for name, t in stages.items():
        print(f'{name:<24}{t["median"]:>10.2f}{t["p90"]:>10.2f}')
    print(f'{1e3 / frame:.1f} frames per second')
    print(f'floor: image encoder {floor["image_encoder_ms"]:.2f} ms + {floor["levels"]} x pose '
          f'encoder {floor["pose_encoder_ms"]:.2f} ms = {floor["floor_ms"]:.2f} ms; '
          f'floor ratio {floor["ratio"]:.3f}')
    report = {'frame_ms_median': frame, 'fps': 1e3 / frame, 'threads': args.threads,
              'device': args.device, 'backend': describe, 'mode': args.mode,
              'candidates': search.num_candidates, 'levels': search.levels,
              'converge_m': args.converge_m, 'converge_deg': args.converge_deg,
              'backbone': model.config.backbone, 'image_size': list(model.config.image_size),
              'level0_candidates': len(localizer.initial_poses), 'stages': stages,
              'floor': floor}
    if args.data:
        acc = accuracy(localizer, model, _load_frames(args.data, args.accuracy_frames), initial)
        report['accuracy'] = acc
        for name in (localizer.backend.name, 'torch'):
            print(f'accuracy {name}: median {acc[name]["median_m"]:.2f} m, '
                  f'{acc[name]["median_deg"]:.2f} deg over {acc[name]["frames"]} frames')
        print(f'median error ratio {acc["median_m_ratio"]:.3f}; estimates apart: median '
              f'{acc["estimates_apart_median_m"]:.3f} m, {acc["estimates_apart_median_deg"]:.3f}'
              ' deg')
    if args.scaling:
        rows = scaling(model.config, search,
                       lambda m: make_backend(m, args, search.num_candidates), args.device,
                       args.frames, args.warmup)
        report['scaling'] = rows
        for row in rows:
            print(f'{row["reference_poses"]:>7} reference poses: frame '
                  f'{row["frame_ms_median"]:.2f} ms, model {row["model_bytes"] / 1e6:.2f} MB')
    if args.openvino:
        report['openvino'] = openvino_comparison(model, localizer)
        print(f'openvino bf16: image encoder {report["openvino"]["image_encoder_ms"]:.2f} ms, '
              f'pose encoder {report["openvino"]["pose_encoder_ms"]:.2f} ms')
    if args.json:
        atomic_write_text(args.json, json.dumps(report, indent=2))
    return 0
