"""The CUDA path on a GPU (issue 18): what runs only with CUDA.

CUDA-graph search against eager after memory churn, capture failures, a second GPU, TensorRT's
candidate counts and stale caches. Every test here is marked ``gpu`` and skips without CUDA
(TensorRT ones also without torch-tensorrt); ``tools/gpu_check.sh`` runs them on a GPU machine.
Their CPU-side halves are in ``test_backends.py``.
"""

from dataclasses import replace
import logging
from pathlib import Path
import sys

import numpy as np
import pytest
import torch

from imposing_ros.evaluation.bench import random_model
from imposing_ros.localization.localizer import Localizer, LocalizerConfig
from imposing_ros.localization.search import (
    draw_noise,
    hierarchical_search,
    level0_scores,
    SearchConfig,
    SearchNoise,
    unit_codes,
)
from imposing_ros.model.encoders import ModelConfig
from imposing_ros.runtime.backends import TorchBackend
from imposing_ros.runtime.tensorrt import import_torch_tensorrt

# The GPU machine's check script holds the churn and the exact small-angle comparison.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'tools'))
from graph_check import churn, rotation_deg  # noqa: E402

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')]
needs_tensorrt = pytest.mark.skipif(import_torch_tensorrt() is None,
                                    reason='needs CUDA and torch-tensorrt')

TINY = ModelConfig(backbone='resnet18', dim=32, image_size=(48, 80), pose_layers=3,
                   pose_width=64)
# Power-iteration averaging on both sides: the graph always uses it, so eager and graphed
# searches run the same arithmetic and must agree to rounding.
SEARCH = SearchConfig(num_candidates=256, levels=4, top_k=16, num_average=32,
                      averaging='power')
CONFIG = LocalizerConfig(search=SEARCH)
EAGER = replace(CONFIG, cuda_graph=False)


@pytest.fixture(scope='module')
def model():
    return random_model(TINY, 2000).eval()


def assert_same_pose(a: np.ndarray, b: np.ndarray):
    """Within 1e-3 m and 1e-3 deg (the issue's target)."""
    assert np.abs(a[:3] - b[:3]).max() < 1e-3, (a, b)
    assert rotation_deg(a[3:], b[3:]) < 1e-3, (a, b)


def image(seed: int = 2) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (48, 80, 3), np.uint8)


@pytest.mark.parametrize('check_inputs', [False, True])
def test_graph_replay_survives_memory_churn(model, check_inputs):
    from imposing_ros.runtime.graphs import CAN_CHECK_INPUTS, GraphedSearch

    if check_inputs and not CAN_CHECK_INPUTS:
        pytest.skip('this torch cannot check graph inputs at replay')
    device = torch.device('cuda')
    backend = TorchBackend(model, device=device)
    poses = model.maps['bench'].initial_poses[:SEARCH.num_candidates].to(device)
    noise = draw_noise(SEARCH, 1, torch.Generator(device).manual_seed(0), device)
    with torch.no_grad():
        unit = unit_codes(backend.encode_poses(poses))
        codes = backend.encode_images(torch.rand(1, 3, *TINY.image_size, device=device))
        expected = hierarchical_search(codes, backend.encode_poses, poses, SEARCH, noise,
                                       steps=backend.steps,
                                       initial_scores=level0_scores(codes, unit))
    # Inputs only the graph holds: freed at once if it did not keep them.
    graph = GraphedSearch(backend, poses.clone(), unit.clone(), SEARCH,
                          SearchNoise(*(t.clone() for t in noise)), TINY.dim,
                          check_inputs=check_inputs)
    junk = churn(device)
    result = graph(codes)
    torch.cuda.synchronize(device)
    assert_same_pose(result.pose[0].double().cpu().numpy(),
                     expected.pose[0].double().cpu().numpy())
    assert abs(float(result.score[0]) - float(expected.score[0])) < 1e-4
    del junk


def test_localizer_graph_equals_eager_after_churn(model):
    device = torch.device('cuda')
    graphed = Localizer(model, config=CONFIG, device=device, backend='torch')
    assert graphed._graph is not None
    eager = Localizer(model, config=EAGER, device=device, backend='torch')
    junk = churn(device)
    for seed in (2, 3):
        a, b = graphed.localize(image(seed)), eager.localize(image(seed))
        assert_same_pose(a.pose, b.pose)
        assert abs(a.score - b.score) < 1e-4
    again = graphed.localize(image(3))  # a replay gives the same answer
    assert np.array_equal(again.pose, a.pose)
    del junk


def test_fp16_graph_equals_fp16_eager(model):
    graphed = Localizer(model, config=CONFIG, device='cuda', backend='torch-fp16')
    assert graphed._graph is not None
    eager = Localizer(model, config=EAGER, device='cuda', backend='torch-fp16')
    junk = churn(torch.device('cuda'))
    assert_same_pose(graphed.localize(image()).pose, eager.localize(image()).pose)
    del junk


class SynchronizingBackend(TorchBackend):
    """fp32 torch whose pose encoder synchronizes the device when captured.

    A device-wide synchronize is illegal during capture: CUDA invalidates the capture, and
    ending it raises inside ``torch.cuda.graph``'s exit (the path of finding 7).
    """

    def encode_poses(self, poses):
        if torch.cuda.is_current_stream_capturing():
            torch.cuda.synchronize()
        return super().encode_poses(poses)


def test_failed_capture_leaves_the_callers_stream_and_runs_eagerly(model, caplog):
    device = torch.device('cuda')
    stream = torch.cuda.current_stream(device)
    with caplog.at_level(logging.WARNING, logger='imposing_ros.runtime'):
        localizer = Localizer(model, config=CONFIG, device=device,
                              backend=SynchronizingBackend(model, device=device))
    assert localizer._graph is None and 'capture of the search failed' in caplog.text
    assert torch.cuda.current_stream(device) == stream  # not the abandoned capture stream
    eager = Localizer(model, config=EAGER, device=device, backend='torch')
    assert_same_pose(localizer.localize(image()).pose, eager.localize(image()).pose)
    assert torch.cuda.current_stream(device) == stream


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason='needs two GPUs')
def test_search_on_the_second_gpu_is_captured_there(model):
    torch.cuda.set_device(0)
    second = torch.device('cuda', 1)
    graphed = Localizer(model, config=CONFIG, device=second, backend='torch')
    assert graphed._graph is not None and torch.cuda.current_device() == 0
    eager = Localizer(model, config=EAGER, device=second, backend='torch')
    assert_same_pose(graphed.localize(image()).pose, eager.localize(image()).pose)
    assert graphed._graph.result.pose.device == second


@needs_tensorrt
def test_tensorrt_takes_m_level0_poses_and_rebuilds_a_stale_cache(model, tmp_path, caplog):
    from imposing_ros.runtime.tensorrt import TensorRTBackend

    trt = TensorRTBackend(model, device='cuda', num_candidates=SEARCH.num_candidates,
                          cache_dir=tmp_path)
    level0 = model.maps['bench'].initial_poses[:1000].cuda()  # M = 1000, N = 256
    with torch.no_grad():
        reference = model.cuda().encode_poses(level0)
        codes = trt.encode_poses(level0)
    assert torch.nn.functional.cosine_similarity(codes.float(), reference, dim=-1).min() > 0.99
    result = Localizer(model, config=CONFIG, device='cuda', backend=trt,
                       initial_poses=level0).localize(image())
    assert np.isfinite(result.pose).all()
    for path in tmp_path.glob('*.ep'):
        path.write_bytes(b'an engine of another TensorRT')
    with caplog.at_level(logging.WARNING, logger='imposing_ros.runtime'):
        TensorRTBackend(model, device='cuda', num_candidates=SEARCH.num_candidates,
                        cache_dir=tmp_path)
    assert caplog.text.count('does not load here') == 2
