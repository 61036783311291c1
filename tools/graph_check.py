"""CUDA-graph search against eager search after memory churn, at the paper's configuration.

Run on a GPU (``tools/gpu_check.sh`` does): a random paper model (ResNet34 at 135 x 240, pose
MLP 4 x 256, N 4096, K 6), for each backend a graphed and an eager ``Localizer`` with the same
seed and the graph's power-iteration rotation average, much memory allocated and filled
between capture and replay (a graph input that nobody holds is overwritten then), and the
poses of several images compared. Exit status 1 when a pose differs by more than 1e-3 m or
1e-3 deg.

    python tools/graph_check.py --json results/graph_check.json
"""

from __future__ import annotations

import argparse
from dataclasses import replace
import json
import sys

import numpy as np
import torch

from imposing_ros.evaluation.bench import random_model
from imposing_ros.localization.localizer import Localizer, LocalizerConfig
from imposing_ros.localization.search import SearchConfig
from imposing_ros.model.encoders import ModelConfig
from imposing_ros.model.imposing import ImPosing
from imposing_ros.runtime import graphs

TOLERANCE_M = 1e-3
TOLERANCE_DEG = 1e-3


def churn(device: torch.device) -> list:
    """Allocate and fill memory of every small size class and some large blocks.

    The tensors are returned: kept alive, their blocks stay taken during a graph replay.
    """
    junk = [torch.full((1 + i % 1024,), 1e4, device=device) for i in range(20000)]
    junk.extend(torch.full((n,), -1e4, device=device) for n in (1 << 16, 1 << 20, 1 << 24))
    torch.cuda.synchronize(device)
    return junk


def rotation_deg(q1: np.ndarray, q2: np.ndarray) -> float:
    """Angle between unit quaternions (x, y, z, w), from the chord: exact for tiny angles."""
    q1, q2 = q1 / np.linalg.norm(q1), q2 / np.linalg.norm(q2)
    chord = min(np.linalg.norm(q1 - q2), np.linalg.norm(q1 + q2))
    return float(np.rad2deg(4 * np.arcsin(min(chord / 2, 1.0))))


def compare(model: ImPosing, backend: str, device: torch.device, images: int,
            search: SearchConfig) -> dict:
    """Largest graph-vs-eager differences of ``backend`` over ``images`` random images."""
    config = LocalizerConfig(search=replace(search, averaging='power'))
    graphed = Localizer(model, config=config, device=device, backend=backend, inductor='off')
    if graphed._graph is None:
        return {'backend': backend, 'captured': False}
    eager = Localizer(model, config=replace(config, cuda_graph=False), device=device,
                      backend=backend, inductor='off')
    junk = churn(device)
    rng = np.random.default_rng(0)
    height, width = model.config.image_size
    worst = {'translation_m': 0.0, 'rotation_deg': 0.0, 'score': 0.0}
    for _ in range(images):
        image = rng.integers(0, 255, (height, width, 3), np.uint8)
        a, b = graphed.localize(image), eager.localize(image)
        worst['translation_m'] = max(worst['translation_m'],
                                     float(np.abs(a.pose[:3] - b.pose[:3]).max()))
        worst['rotation_deg'] = max(worst['rotation_deg'], rotation_deg(a.pose[3:], b.pose[3:]))
        worst['score'] = max(worst['score'], abs(a.score - b.score))
    del junk
    ok = worst['translation_m'] < TOLERANCE_M and worst['rotation_deg'] < TOLERANCE_DEG
    return {'backend': backend, 'captured': True, 'images': images, 'worst': worst, 'ok': ok}


def main(argv: list[str] | None = None) -> int:
    """Compare and print; 0 when every backend's graph matches its eager search."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--device', default='cuda')
    parser.add_argument('--backends', nargs='+', default=['torch', 'torch-fp16'])
    parser.add_argument('--images', type=int, default=5)
    parser.add_argument('--candidates', type=int, default=4096)
    parser.add_argument('--levels', type=int, default=6)
    parser.add_argument('--json', help='write the results here')
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print('graph_check: no CUDA device', file=sys.stderr)
        return 2
    device = torch.device(args.device)
    search = replace(SearchConfig(), num_candidates=args.candidates, levels=args.levels)
    model = random_model(ModelConfig(), 10000).eval()
    report = {'torch': torch.__version__, 'cuda': torch.version.cuda,
              'gpu': torch.cuda.get_device_name(device),
              'graph_checks_inputs': graphs.CAN_CHECK_INPUTS,
              'tolerance': {'m': TOLERANCE_M, 'deg': TOLERANCE_DEG},
              'results': [compare(model, b, device, args.images, search)
                          for b in args.backends]}
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        with open(args.json, 'w') as f:
            f.write(text + '\n')
    return 0 if all(r.get('ok') for r in report['results']) else 1


if __name__ == '__main__':
    sys.exit(main())
