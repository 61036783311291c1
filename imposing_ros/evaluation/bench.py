"""Benchmark per-stage inference time of the localizer (not a timed test).

Default run: the paper configuration (ResNet34 at 135 x 240, pose MLP of 4 x 256, N = 4096,
K = 6, B = 100, top 256 averaged) on one image at a time, after warm-up. Prints a table of
per-stage medians and 90th percentiles (preprocessing, image encoder, level 0, each level's
sampling / pose encoding / scoring, averaging and covariance), the frame time, frames per
second and the threads used; ``--json`` writes the same with a top-level ``frame_ms_median``.
A checkpoint given with ``--model`` is timed as it is; without one, a randomly initialised model
of the configuration is (the time does not depend on the weights).
"""

from __future__ import annotations

import argparse
from dataclasses import replace
import json
import time

import numpy as np
import torch

from imposing_ros.localization.localizer import preprocess
from imposing_ros.localization.search import draw_noise, hierarchical_search, SearchConfig
from imposing_ros.model.checkpoint import load_model
from imposing_ros.model.encoders import ModelConfig
from imposing_ros.model.imposing import ImPosing
from imposing_ros.training.trainer import build_scene_map
from imposing_ros.utils import atomic_write_text


def random_model(config: ModelConfig, reference_poses: int, seed: int = 0) -> ImPosing:
    """A model of ``config`` over a random 2 km map of ``reference_poses`` poses."""
    g = np.random.default_rng(seed)
    yaw = g.uniform(-np.pi, np.pi, reference_poses)
    poses = np.stack([g.uniform(-1000, 1000, reference_poses), g.uniform(-1000, 1000,
                      reference_poses), np.full(reference_poses, 1.5), np.zeros(reference_poses),
                      np.zeros(reference_poses), np.sin(yaw / 2), np.cos(yaw / 2)], axis=1)
    torch.manual_seed(seed)
    return ImPosing(config, {'bench': build_scene_map(poses, 4096, seed)})


def benchmark(model: ImPosing, search: SearchConfig, frames: int = 30, warmup: int = 5,
              threads: int = 2, device: str = 'cpu') -> dict:
    """Per-stage timings (ms) of ``frames`` frames after ``warmup`` frames."""
    torch.set_num_threads(threads)
    device = torch.device(device)
    model = model.to(device).eval()
    scene = model.scenes[0]
    height, width = model.config.image_size
    image = np.random.default_rng(0).integers(0, 255, (height * 2, width * 2, 3), np.uint8)
    initial = model.maps[scene].initial_poses.to(device)
    index = torch.linspace(0, len(initial) - 1, search.num_candidates).round().long()
    initial = initial[index.to(device)]
    with torch.no_grad():
        initial_codes = model.encode_poses(initial, scene)

    def sync():
        if device.type == 'cuda':
            torch.cuda.synchronize(device)

    records = []
    for i in range(warmup + frames):
        marks = [('start', time.perf_counter())]

        def mark(name, marks=marks):
            sync()
            marks.append((name, time.perf_counter()))

        with torch.no_grad():
            images = preprocess(image, (height, width)).to(device)
            mark('preprocess')
            codes = model.encode_images(images, scene)
            mark('image_encoder')
            noise = draw_noise(search, 1, torch.Generator(device=device).manual_seed(i), device)
            mark('draw_noise')
            hierarchical_search(codes, lambda p: model.encode_poses(p, scene), initial, search,
                                noise, initial_codes=initial_codes, on_stage=mark)
        if i >= warmup:
            stages = {name: 1e3 * (t - marks[k - 1][1]) for k, (name, t) in enumerate(marks)
                      if k > 0}
            stages['frame'] = 1e3 * (marks[-1][1] - marks[0][1])
            records.append(stages)
    out = {}
    for name in records[0]:
        values = np.array([r[name] for r in records])
        out[name] = {'median': float(np.median(values)), 'p90': float(np.percentile(values, 90)),
                     'min': float(values.min())}
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``imposing-ros bench``."""
    parser.add_argument('--model', help='checkpoint to time (default: a random paper model)')
    parser.add_argument('--candidates', type=int, default=4096, help='N (default 4096)')
    parser.add_argument('--levels', type=int, default=6, help='K (default 6)')
    parser.add_argument('--frames', type=int, default=30, help='timed frames (default 30)')
    parser.add_argument('--warmup', type=int, default=5, help='warm-up frames (default 5)')
    parser.add_argument('--threads', type=int, default=2, help='torch threads (default 2)')
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--json', help='write the results here')


def run(args: argparse.Namespace) -> int:
    """Entry of ``imposing-ros bench``."""
    if args.model:
        model, _ = load_model(args.model)
    else:
        model = random_model(ModelConfig(), 10000)
    search = replace(SearchConfig(), num_candidates=args.candidates, levels=args.levels,
                     top_k=min(100, args.candidates), num_average=min(256, args.candidates))
    stages = benchmark(model, search, args.frames, args.warmup, args.threads, args.device)
    frame = stages['frame']['median']
    print(f'{model.config.backbone} {tuple(model.config.image_size)}, pose MLP '
          f'{model.config.pose_layers} x {model.config.pose_width}, N = {search.num_candidates},'
          f' K = {search.levels}; {args.threads} threads on {args.device}; {args.frames} frames '
          f'after {args.warmup} warm-up')
    print(f'{"stage":<24}{"median ms":>10}{"p90 ms":>10}')
    for name, t in stages.items():
        print(f'{name:<24}{t["median"]:>10.2f}{t["p90"]:>10.2f}')
    print(f'{1e3 / frame:.1f} frames per second')
    if args.json:
        report = {'frame_ms_median': frame, 'fps': 1e3 / frame, 'threads': args.threads,
                  'device': args.device, 'candidates': search.num_candidates,
                  'levels': search.levels, 'backbone': model.config.backbone,
                  'image_size': list(model.config.image_size), 'stages': stages}
        atomic_write_text(args.json, json.dumps(report, indent=2))
    return 0
