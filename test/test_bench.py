"""Benchmark and export tools run end to end on tiny models (timings are not asserted)."""

import json

from imposing_ros import cli
from imposing_ros.evaluation.bench import benchmark, random_model
from imposing_ros.localization.search import SearchConfig
from imposing_ros.model.checkpoint import load_model, save_checkpoint
from imposing_ros.model.encoders import ModelConfig

TINY = ModelConfig(backbone='resnet18', dim=16, image_size=(32, 64), pose_layers=2,
                   pose_width=32)


def test_benchmark_reports_every_stage():
    model = random_model(TINY, 500)
    stages = benchmark(model, SearchConfig(num_candidates=128, levels=3, top_k=8,
                                           num_average=16), frames=2, warmup=1, threads=1)
    expected = {'preprocess', 'image_encoder', 'level0', 'level1/encode', 'level2/score',
                'average+covariance', 'frame'}
    assert expected <= set(stages) and 'level3/encode' not in stages
    parts = sum(v['median'] for k, v in stages.items() if k != 'frame')
    assert 0 < parts <= stages['frame']['median'] * 1.5


def test_bench_and_export_commands(tmp_path, capsys):
    model = random_model(TINY, 200)
    path = save_checkpoint(tmp_path / 'm.pt', model, seed=3, epoch=7)
    assert cli.main(['bench', '--model', str(path), '--candidates', '64', '--levels', '2',
                     '--frames', '2', '--warmup', '1', '--threads', '1',
                     '--json', str(tmp_path / 'b.json')]) == 0
    report = json.loads((tmp_path / 'b.json').read_text())
    assert report['frame_ms_median'] > 0 and report['threads'] == 1
    assert 'frames per second' in capsys.readouterr().out
    out = tmp_path / 'half.pt'
    assert cli.main(['export', '--model', str(path), '--out', str(out)]) == 0
    assert out.stat().st_size < 0.6 * path.stat().st_size
    loaded, data = load_model(out)
    assert data['seed'] == 3 and data['epoch'] == 7 and 'optimizer' not in data
    assert cli.main(['export', '--model', str(tmp_path / 'none.pt'), '--out', str(out)]) == 2
