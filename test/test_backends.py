"""Inference backends: prepared torch backends agree with the model; TensorRT on GPUs only."""

import logging

import numpy as np
import pytest
import torch

from imposing_ros.evaluation.bench import random_model
from imposing_ros.localization.localizer import Localizer, LocalizerConfig
from imposing_ros.localization.search import SearchConfig
from imposing_ros.model.encoders import ModelConfig
from imposing_ros.runtime import backends, select
from imposing_ros.runtime.backends import TorchBackend
from imposing_ros.runtime.select import resolve_backend_name, select_backend
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
        scores = bf16.steps.score(model.encode_images(images), bf16.encode_poses(poses))
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
    # The search's compiled steps (proposer with and without the refinement, the estimate):
    # the same search in global and in tracking mode.
    config = LocalizerConfig(search=SEARCH)
    image = np.random.default_rng(1).integers(0, 255, (96, 160, 3), np.uint8)
    eager_localizer = Localizer(model, config=config, backend=eager)
    compiled_localizer = Localizer(model, config=config, backend=compiled)
    a, b = eager_localizer.localize(image), compiled_localizer.localize(image)
    assert np.abs(a.pose[:3] - b.pose[:3]).max() < 1e-2
    assert abs(a.score - b.score) < 1e-4
    assert np.allclose(a.covariance, b.covariance, rtol=1e-2, atol=1e-6)
    prior_pose, prior = a.pose, np.diag([4.0, 4.0, 0.04, 1e-3, 1e-3, 1e-2])
    a = eager_localizer.localize(image, prior_pose, prior)
    b = compiled_localizer.localize(image, prior_pose, prior)
    assert a.mode == b.mode == 'tracking'
    assert np.abs(a.pose[:3] - b.pose[:3]).max() < 1e-2
    assert np.allclose(a.covariance, b.covariance, rtol=1e-2, atol=1e-6)


def test_auto_on_a_cpu_chooses_by_measurement(monkeypatch, model, caplog, tmp_path):
    from imposing_ros.runtime import choice as choice_module

    assert resolve_backend_name('auto', 'cpu') == select.CPU_AUTO
    measured = {}

    def fake_timing(named, image, poses, levels):  # ({name: ms}, {name: codes}) as measured
        return ({name: measured[name] for name in named},
                {name: backend.encode_poses(poses) for name, backend in named.items()})

    monkeypatch.setattr(choice_module, '_time_backends', fake_timing)
    monkeypatch.setattr(choice_module, 'CACHE_FILE', tmp_path / 'auto.json')
    monkeypatch.setattr(backends, 'cpu_has_native_bf16', lambda: True)
    cache = tmp_path / 'auto.json'
    # bf16 emulated (slower than fp32): never chosen, whatever the CPU flag says.
    measured.update(fp32=10.0, bf16=30.0)
    slow = choice_module.choose_cpu_precision(model, 'bench', 64, 3, cache_file=cache)
    assert slow.precision == 'fp32' and slow.source == 'measured'
    assert slow.agreement > 0.99  # the codes agree: speed decided
    # The next start reads the cache, measures nothing.
    measured.update(fp32=10.0, bf16=1.0)
    again = choice_module.choose_cpu_precision(model, 'bench', 64, 3, cache_file=cache)
    assert again.precision == 'fp32' and again.source == 'cache'
    # Native bf16 (faster by more than MIN_GAIN) on another search size: chosen.
    fast = choice_module.choose_cpu_precision(model, 'bench', 128, 3, cache_file=cache)
    assert fast.precision == 'bf16' and fast.milliseconds == {'fp32': 10.0, 'bf16': 1.0}
    # A gain within timing noise keeps fp32.
    measured.update(fp32=10.0, bf16=9.5)
    assert choice_module.choose_cpu_precision(model, 'bench', 256, 3,
                                              cache_file=None).precision == 'fp32'
    # No bf16 kernels at all: fp32 without measuring.
    monkeypatch.setattr(backends, 'cpu_has_native_bf16', lambda: False)
    assert choice_module.choose_cpu_precision(model, 'bench', 512, 3, cache_file=None).source == \
        'no bf16 kernels'
    # select_backend uses it and says why.
    monkeypatch.setattr(backends, 'cpu_has_native_bf16', lambda: True)
    measured.update(fp32=10.0, bf16=2.0)
    with caplog.at_level(logging.INFO, logger='imposing_ros.runtime'):
        backend = select_backend('auto', model, num_candidates=1024, inductor='off')
    assert backend.name == 'torch-bf16' and 'backend auto -> torch-bf16 on cpu' in caplog.text
    assert 'bf16 2.0 ms' in backend.describe()['auto']
    assert backend.describe()['inductor'] is False


def test_auto_times_backends_in_turns():
    from imposing_ros.runtime import choice as choice_module

    calls = []

    class Recorder:
        def __init__(self, name):
            self.name = name

        def encode_images(self, image):
            calls.append(self.name)

        def encode_poses(self, poses):
            return poses

    ms, codes = choice_module._time_backends({'a': Recorder('a'), 'b': Recorder('b')},
                                             None, torch.zeros(1, 4, 7), levels=2)
    rounds = choice_module.WARMUP + choice_module.REPEATS
    assert calls == ['a', 'b'] * rounds  # in turns, so a slow spell hits both
    assert set(ms) == set(codes) == {'a', 'b'} and all(v >= 0 for v in ms.values())


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
    from imposing_ros.model.preprocess import preprocess

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


# The GPU path's logic that runs without a GPU (issue 18); test/test_gpu_path.py has the rest.

def test_tensorrt_cache_key_names_library_versions_and_the_gpu_index(monkeypatch, model):
    import sys
    from types import SimpleNamespace

    from imposing_ros.runtime import tensorrt
    from imposing_ros.runtime.backends import PreparedPoseEncoder
    from imposing_ros.runtime.programs import cache_key

    installed = {'torch-tensorrt': '2.14.0', 'tensorrt': '10.13.0'}

    def version(name):
        if name not in installed:
            raise tensorrt.importlib.metadata.PackageNotFoundError(name)
        return installed[name]

    monkeypatch.setattr(tensorrt.importlib.metadata, 'version', version)
    before = tensorrt.library_versions()
    assert 'torch-tensorrt 2.14.0' in before and 'tensorrt 10.13.0' in before
    assert f'torch {torch.__version__}' in before
    net = PreparedPoseEncoder(model, 'bench', torch.float16)
    poses = torch.zeros(1, 256, 7)
    key = cache_key(net, poses, before)
    installed['tensorrt'] = '10.14.1'  # a TensorRT upgrade alone makes a new key
    assert cache_key(net, poses, tensorrt.library_versions()) != key
    del installed['tensorrt']  # JetPack: no metadata, the imported module's version
    monkeypatch.setitem(sys.modules, 'tensorrt', SimpleNamespace(__version__='10.3.0'))
    assert 'tensorrt 10.3.0' in tensorrt.library_versions()
    # Engines are built for the backend's GPU, named with its index.
    second = torch.device('cuda', 1)
    assert tensorrt.cuda_device(second) == second
    settings = tensorrt.compile_settings(second)
    assert settings['device'] == second and 'use_explicit_typing' not in settings
    # use_explicit_typing only for a compiler that reads it (2.14's does not: always typed).
    assert not tensorrt.takes_explicit_typing(SimpleNamespace())
    older = SimpleNamespace(dynamo=SimpleNamespace(
        compile=lambda program, *, device=None, use_explicit_typing=False: program))
    assert tensorrt.takes_explicit_typing(older)
    assert tensorrt.compile_settings(second, True)['use_explicit_typing'] is True


class _FakeTorchTensorRT:
    """torch_tensorrt stand-in: 'compiles' to the module itself, saves an exported program."""

    def __init__(self):
        self.compiled = []

    def compile(self, module, **kwargs):
        self.compiled.append(kwargs)
        return module

    def save(self, module, path, output_format, arg_inputs):
        assert output_format == 'exported_program'
        torch.export.save(torch.export.export(module, tuple(arg_inputs)), path)


def test_tensorrt_cache_rebuilds_a_program_that_does_not_load(monkeypatch, tmp_path, caplog):
    from imposing_ros.runtime import tensorrt

    fake = _FakeTorchTensorRT()
    monkeypatch.setattr(tensorrt, 'import_torch_tensorrt', lambda: fake)
    monkeypatch.setattr(tensorrt, 'target_description',
                        lambda device: f'{device}|{tensorrt.library_versions()}')
    net, example = torch.nn.Linear(7, 4).eval(), torch.rand(1, 8, 7)
    with caplog.at_level(logging.INFO, logger='imposing_ros.runtime'):
        tensorrt.compile_cached(net, example, tmp_path, 'pose')
    assert 'building the TensorRT pose engine' in caplog.text  # said before minutes of work
    assert len(fake.compiled) == 1 and fake.compiled[0]['device'] == example.device
    assert 'use_explicit_typing' not in fake.compiled[0]
    (path,) = tmp_path.glob('pose-*.ep')
    loaded = tensorrt.compile_cached(net, example, tmp_path, 'pose')
    assert len(fake.compiled) == 1  # loaded, not rebuilt
    with torch.no_grad():
        assert torch.allclose(loaded(example), net(example))
    path.write_bytes(b'an engine of another TensorRT')
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger='imposing_ros.runtime'):
        tensorrt.compile_cached(net, example, tmp_path, 'pose')
    assert len(fake.compiled) == 2 and 'does not load here' in caplog.text
    assert tensorrt.load_program(path, example) is not None  # the rebuilt program replaced it


def test_auto_falls_back_to_torch_fp16_when_tensorrt_fails(monkeypatch, model, caplog):
    from imposing_ros.runtime import tensorrt

    class FailingTensorRT:
        def __init__(self, *args, **kwargs):
            raise RuntimeError('Unsupported operator: aten.fancy_op')

    built = []

    class RecordingTorchBackend:
        def __init__(self, model, scene, device, precision, inductor=False):
            built.append((torch.device(device), precision))
            self.name = 'torch-' + precision

    monkeypatch.setattr(select, 'tensorrt_available', lambda: True)
    monkeypatch.setattr(tensorrt, 'TensorRTBackend', FailingTensorRT)
    monkeypatch.setattr(backends, 'TorchBackend', RecordingTorchBackend)
    assert resolve_backend_name('auto', 'cuda:1') == 'tensorrt'
    with caplog.at_level(logging.WARNING, logger='imposing_ros.runtime'):
        backend = select_backend('auto', model, device='cuda:1')
    assert backend.name == 'torch-fp16' and built == [(torch.device('cuda:1'), 'fp16')]
    assert 'TensorRT failed on cuda:1' in caplog.text and 'aten.fancy_op' in caplog.text
    with pytest.raises(RuntimeError, match='aten.fancy_op'):  # asked for by name: no fallback
        select_backend('tensorrt', model, device='cuda:1')


class _StaticShape(torch.nn.Module):
    """A module that refuses any input shape but one, like a TensorRT engine."""

    def __init__(self, module, shape):
        super().__init__()
        self.module, self.shape = module, tuple(shape)

    def forward(self, x):
        if tuple(x.shape) != self.shape:
            raise RuntimeError(f'engine built for {self.shape}, got {tuple(x.shape)}')
        return self.module(x)


def test_a_fixed_batch_pose_engine_takes_any_candidate_count(model):
    from imposing_ros.runtime.backends import encode_in_chunks, PreparedPoseEncoder

    n = 64
    net = PreparedPoseEncoder(model, 'bench', torch.float32)
    engine = _StaticShape(net, (n, 7))
    poses = model.maps['bench'].initial_poses
    with torch.no_grad():
        for count in (1, n - 1, n, 2 * n + 3):
            assert torch.allclose(encode_in_chunks(engine, poses[:count], n),
                                  net(poses[:count]), atol=1e-6)
        batched = poses[:3 * n].reshape(3, n, 7)  # [B, N, 7], the tracking search's shape
        assert torch.allclose(encode_in_chunks(engine, batched, n), net(batched), atol=1e-6)
    with pytest.raises(ValueError, match='no poses'):
        encode_in_chunks(engine, poses[:0], n)


def test_localizer_takes_m_level0_poses_on_an_n_pose_engine(model):
    # Localizer(initial_poses=M != N) and bench --level0 M with --backend tensorrt: the pose
    # engine's batch is N, the level-0 set M.
    from imposing_ros.runtime.backends import PreparedImageEncoder, PreparedPoseEncoder
    from imposing_ros.runtime.tensorrt import TensorRTBackend

    n = SEARCH.num_candidates
    image_engine = _StaticShape(PreparedImageEncoder(model, 'bench', torch.float32, False),
                                (1, 3, *TINY.image_size))
    pose_engine = _StaticShape(PreparedPoseEncoder(model, 'bench', torch.float32), (1, n, 7))
    static = TensorRTBackend.from_engines(model, None, 'cpu', image_engine, pose_engine, n)
    level0 = model.maps['bench'].initial_poses[:1000]  # M = 1000, N = 256
    config = LocalizerConfig(search=SEARCH)
    image = np.random.default_rng(3).integers(0, 255, (48, 80, 3), np.uint8)
    a = Localizer(model, config=config, backend=static, initial_poses=level0).localize(image)
    b = Localizer(model, config=config, backend='torch', initial_poses=level0,
                  inductor='off').localize(image)
    assert np.abs(a.pose[:3] - b.pose[:3]).max() < 1e-3 and abs(a.score - b.score) < 1e-4


def test_saved_programs_take_the_writers_format_whatever_the_suffix(tmp_path):
    from imposing_ros.runtime.programs import save_atomically

    net, example = torch.nn.Linear(7, 4).eval(), torch.rand(2, 7)
    program = torch.export.export(net, (example,))
    for name in ('program.ep', 'program.pt2', 'program.bin'):
        path = save_atomically(tmp_path / name, lambda tmp: torch.export.save(program, str(tmp)))
        with torch.no_grad():
            assert torch.allclose(torch.export.load(str(path)).module()(example), net(example))

    def broken(tmp):
        tmp.write_bytes(b'half a program')
        raise OSError('disk full')

    with pytest.raises(OSError, match='disk full'):
        save_atomically(tmp_path / 'other.ep', broken)
    assert sorted(p.name for p in tmp_path.iterdir()) == ['program.bin', 'program.ep',
                                                          'program.pt2']


def test_graph_capture_falls_back_to_eager_off_cuda(model, caplog):
    from imposing_ros.localization.search import draw_noise, unit_codes
    from imposing_ros.runtime import graphs

    backend = TorchBackend(model)
    poses = model.maps['bench'].initial_poses[:SEARCH.num_candidates]
    with torch.no_grad():
        unit = unit_codes(backend.encode_poses(poses))
    with caplog.at_level(logging.WARNING, logger='imposing_ros.runtime'):
        assert graphs.try_capture(backend, poses, unit, SEARCH, draw_noise(SEARCH, 1),
                                  TINY.dim) is None
    assert 'need a CUDA device' in caplog.text
    if torch.torch_version.TorchVersion(torch.__version__) >= '2.14':
        assert graphs.CAN_CHECK_INPUTS  # the pinned torch can check inputs at replay
