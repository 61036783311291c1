"""Inference backends: prepared torch backends agree with the model; TensorRT on GPUs only."""

import logging

import numpy as np
import pytest
import torch

from imposing_ros.evaluation.bench import random_model
from imposing_ros.localization.localizer import Localizer, LocalizerConfig
from imposing_ros.localization.search import SearchConfig
from imposing_ros.model.encoders import ModelConfig
from imposing_ros.runtime import backends
from imposing_ros.runtime.backends import resolve_backend_name, select_backend, TorchBackend
from imposing_ros.runtime.tensorrt import import_torch_tensorrt

TINY = ModelConfig(backbone='resnet18', dim=32, image_size=(48, 80), pose_layers=3,
                   pose_width=64)
SEARCH = SearchConfig(num_candidates=256, levels=3, top_k=16, num_average=32)


@pytest.fixture(scope='module')
def model():
    return random_model(TINY, 2000).eval()


def _cosine(a, b):
    return torch.nn.functional.cosine_similarity(a.float(), b.float(), dim=-1)


def test_fp32_backend_matches_the_model(model):
    backend = TorchBackend(model, precision='fp32')
    images = torch.rand(2, 3, *TINY.image_size)
    poses = model.maps['bench'].initial_poses[:100]
    with torch.no_grad():
        # Batch norms folded into the convolutions: equal up to rounding.
        assert torch.allclose(backend.encode_images(images), model.encode_images(images),
                              rtol=1e-4, atol=1e-4)
        assert torch.allclose(backend.encode_poses(poses), model.encode_poses(poses),
                              rtol=1e-5, atol=1e-5)
        assert backend.encode_poses(poses[None]).shape == (1, 100, TINY.dim)


def test_bf16_backend_codes_stay_close_to_fp32(model):
    bf16 = TorchBackend(model, precision='bf16')
    images = torch.rand(2, 3, *TINY.image_size)
    poses = model.maps['bench'].initial_poses[:500]
    with torch.no_grad():
        assert bf16.encode_poses(poses).dtype == torch.bfloat16
        assert _cosine(bf16.encode_poses(poses), model.encode_poses(poses)).min() > 0.99
        assert _cosine(bf16.encode_images(images), model.encode_images(images)).min() > 0.99
        scores = bf16.score(model.encode_images(images), bf16.encode_poses(poses))
    assert scores.dtype == torch.float32 and scores.shape == (2, 500)


@pytest.mark.slow
def test_inductor_backend_gives_the_eager_results(model):
    eager = TorchBackend(model, precision='fp32')
    compiled = TorchBackend(model, precision='fp32', inductor=True)
    images = torch.rand(1, 3, *TINY.image_size)
    poses = model.maps['bench'].initial_poses[None, :256]
    with torch.no_grad():
        assert torch.allclose(compiled.encode_images(images), eager.encode_images(images),
                              rtol=1e-3, atol=1e-3)
        assert torch.allclose(compiled.encode_poses(poses), eager.encode_poses(poses),
                              rtol=1e-4, atol=1e-4)
    config = LocalizerConfig(search=SEARCH)
    image = np.random.default_rng(1).integers(0, 255, (96, 160, 3), np.uint8)
    a = Localizer(model, config=config, backend=eager).localize(image)
    b = Localizer(model, config=config, backend=compiled).localize(image)
    assert np.abs(a.pose[:3] - b.pose[:3]).max() < 1e-2
    assert abs(a.score - b.score) < 1e-4


def test_auto_picks_bf16_only_where_the_cpu_runs_it_natively(monkeypatch, model, caplog):
    monkeypatch.setattr(backends, 'cpu_has_native_bf16', lambda: True)
    assert resolve_backend_name('auto', 'cpu') == 'torch-bf16'
    monkeypatch.setattr(backends, 'cpu_has_native_bf16', lambda: False)
    assert resolve_backend_name('auto', 'cpu') == 'torch'
    with caplog.at_level(logging.INFO, logger='imposing_ros.runtime'):
        backend = select_backend('auto', model, inductor='off')
    assert backend.name == 'torch' and 'backend auto -> torch on cpu' in caplog.text
    assert backend.describe()['inductor'] is False


def test_bad_backend_settings_are_refused(model):
    with pytest.raises(ValueError, match='backend must be one of'):
        resolve_backend_name('onnx', 'cpu')
    with pytest.raises(ValueError, match='needs a CUDA device'):
        resolve_backend_name('tensorrt', 'cpu')
    with pytest.raises(ValueError, match='inductor must be one of'):
        select_backend('torch', model, inductor='sometimes')
    with pytest.raises(ValueError, match='precision must be one of'):
        TorchBackend(model, precision='int4')


def test_tensorrt_import_is_guarded_without_cuda():
    if torch.cuda.is_available():
        pytest.skip('CUDA present: the guarded import may succeed')
    assert import_torch_tensorrt() is None


def test_localizer_accepts_a_larger_level0_set(model):
    reference = model.maps['bench'].initial_poses
    bigger = torch.cat([reference, reference[:1000]])  # M = 5096 level-0 poses, N = 256 after
    localizer = Localizer(model, config=LocalizerConfig(search=SEARCH), backend='torch',
                          initial_poses=bigger)
    assert localizer.initial_unit.shape == (len(bigger), TINY.dim)
    stages = []
    result = localizer.localize(np.zeros((48, 80, 3), np.uint8), on_stage=stages.append)
    assert np.isfinite(result.pose).all() and result.levels == SEARCH.levels
    assert stages[:3] == ['preprocess', 'image_encoder', 'level0']
    assert stages[-1] == 'average+covariance' and 'level2/encode' in stages


needs_tensorrt = pytest.mark.skipif(import_torch_tensorrt() is None,
                                    reason='needs CUDA and torch-tensorrt')


@pytest.mark.gpu
@needs_tensorrt
def test_tensorrt_backend_matches_fp32_and_reuses_its_cache(model, tmp_path):
    from imposing_ros.runtime.tensorrt import TensorRTBackend

    model = model.cuda()
    trt = TensorRTBackend(model, device='cuda', num_candidates=256, cache_dir=tmp_path)
    assert len(list(tmp_path.glob('*.ep'))) == 2
    images = torch.rand(1, 3, *TINY.image_size, device='cuda')
    poses = model.maps['bench'].initial_poses[None, :256].cuda()
    with torch.no_grad():
        assert _cosine(trt.encode_images(images), model.encode_images(images)).min() > 0.99
        assert _cosine(trt.encode_poses(poses), model.encode_poses(poses)).min() > 0.99
    again = TensorRTBackend(model, device='cuda', num_candidates=256, cache_dir=tmp_path)
    assert len(list(tmp_path.glob('*.ep'))) == 2  # loaded, not rebuilt
    with torch.no_grad():
        assert torch.allclose(again.encode_poses(poses), trt.encode_poses(poses))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_cuda_backend_search_runs_on_the_gpu(model):
    localizer = Localizer(model.cuda(), config=LocalizerConfig(search=SEARCH), device='cuda',
                          backend='torch-fp16')
    result = localizer.localize(np.zeros((48, 80, 3), np.uint8))
    assert np.isfinite(result.pose).all() and np.isfinite(result.covariance).all()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_cuda_graph_search_gives_the_eager_result(model):
    model = model.cuda()
    image = np.random.default_rng(2).integers(0, 255, (48, 80, 3), np.uint8)
    graphed = Localizer(model, config=LocalizerConfig(search=SEARCH), device='cuda',
                        backend='torch')
    assert graphed._graph is not None
    eager = Localizer(model, config=LocalizerConfig(search=SEARCH, cuda_graph=False),
                      device='cuda', backend='torch')
    a, b = graphed.localize(image), eager.localize(image)
    assert np.abs(a.pose[:3] - b.pose[:3]).max() < 1e-3 and abs(a.score - b.score) < 1e-4
    again = graphed.localize(image)  # replays give the same answer
    assert np.array_equal(again.pose, a.pose)


def test_preprocess_gives_one_layout_for_any_input_size():
    # A compiled image encoder is rebuilt (about a second) for a new memory layout: an image
    # that needs no resizing must come out laid out like a resized one.
    from imposing_ros.localization.localizer import preprocess

    exact = preprocess(np.zeros((48, 80, 3), np.uint8), (48, 80))
    resized = preprocess(np.zeros((120, 160, 3), np.uint8), (48, 80))
    assert exact.shape == resized.shape and exact.stride() == resized.stride()


def test_tensorrt_cache_key_follows_weights_shapes_and_target(model):
    from imposing_ros.runtime.backends import PreparedPoseEncoder
    from imposing_ros.runtime.programs import cache_key

    net = PreparedPoseEncoder(model, 'bench', torch.float16)  # holds 0-d buffers too
    poses = torch.zeros(1, 256, 7)
    key = cache_key(net, poses, 'gpu A')
    assert key == cache_key(net, poses, 'gpu A')
    assert key != cache_key(net, poses, 'gpu B')
    assert key != cache_key(net, torch.zeros(1, 512, 7), 'gpu A')
    with torch.no_grad():
        net.weights[0][0, 0] += 1
    assert key != cache_key(net, poses, 'gpu A')
