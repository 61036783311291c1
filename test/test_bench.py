"""Benchmark and export tools run end to end on tiny models (timings are not asserted)."""

import json

import pytest

from imposing_ros import cli
from imposing_ros.evaluation.bench import benchmark, hardware_floor, random_model
from imposing_ros.localization.localizer import Localizer, LocalizerConfig
from imposing_ros.localization.search import SearchConfig
from imposing_ros.model.checkpoint import load_model, save_checkpoint
from imposing_ros.model.encoders import ModelConfig

TINY = ModelConfig(backbone='resnet18', dim=16, image_size=(32, 64), pose_layers=2,
                   pose_width=32)


def test_benchmark_reports_every_stage():
    model = random_model(TINY, 500)
    search = SearchConfig(num_candidates=128, levels=3, top_k=8, num_average=16)
    localizer = Localizer(model, config=LocalizerConfig(search=search, tracking_levels=2),
                          backend='torch', inductor='off')
    stages = benchmark(localizer, frames=2, warmup=1)
    expected = {'preprocess', 'image_encoder', 'level0', 'level1/encode', 'level2/score',
                'average+covariance', 'result', 'frame'}
    assert expected <= set(stages) and 'level3/encode' not in stages
    assert stages['levels_run']['median'] == 3
    parts = sum(v['median'] for k, v in stages.items() if k not in ('frame', 'levels_run'))
    assert 0 < parts <= stages['frame']['median'] * 1.5
    tracking = benchmark(localizer, frames=2, warmup=1, mode='tracking')
    assert 'prior_candidates' in tracking and 'level2/encode' not in tracking
    floor = hardware_floor(localizer, repeats=2)
    assert floor['floor_ms'] == pytest.approx(floor['image_encoder_ms']
                                              + 3 * floor['pose_encoder_ms'])
    assert tracking['levels_run']['median'] == 2
    # The floor counts the levels the frames ran: tracking's two, not the global search's three.
    floor = hardware_floor(localizer, repeats=2, levels=2)
    assert floor['levels'] == 2 and floor['floor_ms'] == pytest.approx(
        floor['image_encoder_ms'] + 2 * floor['pose_encoder_ms'])


def test_bench_and_export_commands(tmp_path, capsys):
    model = random_model(TINY, 200)
    path = save_checkpoint(tmp_path / 'm.pt', model, seed=3, epoch=7)
    assert cli.main(['bench', '--model', str(path), '--candidates', '64', '--levels', '2',
                     '--frames', '2', '--warmup', '1', '--threads', '1', '--backend', 'torch',
                     '--inductor', 'off', '--json', str(tmp_path / 'b.json')]) == 0
    report = json.loads((tmp_path / 'b.json').read_text())
    assert report['frame_ms_median'] > 0 and report['threads'] == 1
    assert report['floor']['ratio'] == pytest.approx(report['frame_ms_median']
                                                     / report['floor']['floor_ms'])
    assert report['backend']['backend'] == 'torch'
    out = capsys.readouterr().out
    assert 'frames per second' in out and 'floor ratio' in out
    out = tmp_path / 'half.pt'
    assert cli.main(['export', '--model', str(path), '--out', str(out)]) == 0
    assert out.stat().st_size < 0.6 * path.stat().st_size
    loaded, data = load_model(out)
    assert data['seed'] == 3 and data['epoch'] == 7 and 'optimizer' not in data
    assert cli.main(['export', '--model', str(tmp_path / 'none.pt'), '--out', str(out)]) == 2


def test_tensorrt_export_needs_a_gpu(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip('CUDA present')
    path = save_checkpoint(tmp_path / 'm.pt', random_model(TINY, 200), seed=0)
    assert cli.main(['export', '--model', str(path), '--format', 'tensorrt',
                     '--out', str(tmp_path / 'engines')]) == 2
    assert 'needs a CUDA GPU' in capsys.readouterr().err
    assert not (tmp_path / 'engines').exists()


@pytest.mark.slow
def test_bench_times_int8_of_the_random_model(tmp_path, capsys):
    # No --model: the random model is calibrated on noise (timing only) in a temporary folder.
    assert cli.main(['bench', '--backbone', 'resnet18', '--pose-layers', '2', '--candidates',
                     '128', '--levels', '2', '--frames', '2', '--warmup', '1', '--backend',
                     'torch-int8', '--json', str(tmp_path / 'b.json')]) == 0
    report = json.loads((tmp_path / 'b.json').read_text())
    assert report['backend']['backend'] == 'torch-int8'
    assert report['backend']['precision'] == 'int8' and report['frame_ms_median'] > 0
    assert cli.main(['bench', '--candidates', '128', '--frames', '1', '--backend', 'torch-int8',
                     '--inductor', 'off']) == 2
    assert 'inductor cannot be off' in capsys.readouterr().err
