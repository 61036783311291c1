"""Retrieval and pose-regression baselines: they train with ImPosing's loop and localize."""

import numpy as np
import pytest
import torch

from imposing_ros.baselines.localizers import open_localizer, RetrievalLocalizer
from imposing_ros.baselines.models import BaselineConfig, load_baseline
from imposing_ros.baselines.training import BaselineTrainConfig, positive_pairs, train_baseline
from imposing_ros.data.cache import CachedPosedImages, ImageCache
from imposing_ros.data.synthetic import SyntheticRoad
from imposing_ros.evaluation.cli import evaluate
from imposing_ros.evaluation.metrics import pose_errors, summarize
from imposing_ros.model.checkpoint import CheckpointError, load_model
from imposing_ros.training.trainer import SceneData


def config(method):
    return BaselineConfig(method=method, backbone='resnet18', image_size=(32, 64), dim=64)


def train_config(epochs, **kw):
    kw.setdefault('val_every', epochs)
    return BaselineTrainConfig(epochs=epochs, batch_size=16, lr=1e-3, val_frames=32,
                               augment=False, precision='fp32', **kw)


@pytest.fixture(scope='module')
def road(tmp_path_factory):
    root = tmp_path_factory.mktemp('road')
    road = SyntheticRoad(length=200.0, size=(32, 64))
    train_cache = ImageCache.build(road.frames(320, seed=1), root / 'train', (32, 64))
    val_cache = ImageCache.build(road.frames(48, seed=2), root / 'val', (32, 64))
    scenes = {'road': SceneData(CachedPosedImages(train_cache), CachedPosedImages(val_cache),
                                np.asarray(train_cache.poses))}
    return road, scenes, val_cache


def test_positive_pairs_are_near_in_position_and_heading():
    yaw = np.radians([0, 0, 90, 0])
    poses = np.zeros((4, 7))
    poses[:, 0] = [0, 3, 1, 50]
    poses[:, 5], poses[:, 6] = np.sin(yaw / 2), np.cos(yaw / 2)
    pairs = positive_pairs(poses, max_m=5.0, max_deg=30.0)
    assert [p.tolist() for p in pairs] == [[1], [0], [], []]


def _chance(road, truth):
    ref = torch.as_tensor(road.reference_poses()).float()
    return summarize(*pose_errors(ref[torch.randint(len(ref), (len(truth),))], truth))


@pytest.fixture(scope='module')
def trained(road, tmp_path_factory):
    """A retrieval and an APR baseline, 6 epochs each on the 200 m road."""
    _, scenes, _ = road
    root = tmp_path_factory.mktemp('baselines')
    return {method: train_baseline(scenes, root / method, config(method), train_config(6),
                                   resume=False) for method in ('retrieval', 'apr')}


@pytest.mark.parametrize('method', ['retrieval', 'apr'])
def test_baseline_trains_and_localizes(road, trained, method):
    road_, scenes, val_cache = road
    result = trained[method]
    losses = [h['loss'] for h in result.history]
    assert losses[-1] < 0.8 * losses[0], losses
    assert 'val_median_m' in result.history[-1]
    with pytest.raises(CheckpointError, match=f'a {method} baseline'):
        load_model(result.checkpoint)
    model, data = load_baseline(result.checkpoint)
    assert data['method'] == method
    frames = [type('F', (), {'image': val_cache.images[i], 'pose': val_cache.poses[i],
                             'stamp_ns': i, 'source': str(i)})() for i in range(len(val_cache))]
    summary = evaluate(result.checkpoint, frames).summary
    chance = _chance(road_, torch.as_tensor(np.asarray(val_cache.poses)).float())
    # Chance is ~55 m; a trained baseline on this 200 m road does far better (retrieval measured
    # 1-3 m, regression 10-20 m after 6 epochs here).
    assert summary['median_m'] < chance['median_m'] / 2, (summary, chance)
    localizer = open_localizer(result.checkpoint)
    out = localizer.localize(val_cache.images[0])
    assert out.pose.shape == (7,) and out.mode == 'global'
    if method == 'retrieval':
        assert isinstance(localizer, RetrievalLocalizer)
        assert localizer.database_size == len(scenes['road'].train)
        assert np.isfinite(out.covariance).all() and 0 <= out.score <= 1
    else:
        assert np.isnan(out.covariance).all()


def test_baseline_resume_and_bad_settings(road, tmp_path):
    _, scenes, _ = road
    small = {'road': SceneData(CachedPosedImages(scenes['road'].train.cache, np.arange(64)),
                               None, scenes['road'].reference_poses)}
    train_baseline(small, tmp_path, config('apr'), train_config(1, val_every=0), resume=False)
    again = train_baseline(small, tmp_path, config('apr'), train_config(2, val_every=0))
    assert [h['epoch'] for h in again.history] == [1, 2]
    with pytest.raises(ValueError, match='other configs'):
        train_baseline(small, tmp_path, config('apr'), train_config(3, val_every=0, seed=4))
    with pytest.raises(ValueError, match='method'):
        BaselineConfig(method='netvlad')
    with pytest.raises(ValueError, match='positive_m'):
        BaselineTrainConfig(positive_m=30.0, negative_m=25.0)
    with pytest.raises(ValueError, match='one scene'):
        train_baseline({'a': small['road'], 'b': small['road']}, tmp_path / 'two',
                       config('apr'), train_config(1))


@pytest.fixture(scope='module')
def imposing_model(road, tmp_path_factory):
    """A small ImPosing model of the same road.

    2 epochs: the benchmark's plumbing, not its accuracy, is under test here.
    """
    from imposing_ros.localization.search import SearchConfig
    from imposing_ros.model.encoders import ModelConfig
    from imposing_ros.training.trainer import train, TrainConfig

    _, scenes, _ = road
    model = ModelConfig(backbone='resnet18', dim=64, image_size=(32, 64), pose_layers=2,
                        pose_width=128)
    cfg = TrainConfig(epochs=2, batch_size=16, lr=1e-3, num_candidates=256, levels=4, top_k=32,
                      augment=False, val_every=0, precision='fp32')
    return train(scenes, tmp_path_factory.mktemp('imposing'), model, cfg,
                 SearchConfig(num_candidates=512, levels=4, top_k=32, num_average=64),
                 resume=False).checkpoint


def test_benchmark_writes_table_plots_csv_and_result_bag(road, trained, imposing_model,
                                                         tmp_path):
    import json

    from rosbags.highlevel import AnyReader

    from imposing_ros.cli import main
    from imposing_ros.data.frames import Frame
    from imposing_ros.data.plain import write_plain_folder

    _, _, val_cache = road
    frames = [Frame(int(1e9) + i * 100_000_000, val_cache.poses[i], val_cache.images[i])
              for i in range(12)]
    data = write_plain_folder(tmp_path / 'data', frames)
    models = [str(imposing_model), str(trained['retrieval'].checkpoint),
              str(trained['apr'].checkpoint)]
    out = tmp_path / 'bench'
    assert main(['benchmark', '--data', str(data), '--out', str(out), '--models', *models]) == 0
    summary = json.loads((out / 'summary.json').read_text())
    assert set(summary['methods']) == {'imposing', 'retrieval', 'apr'}
    for row in summary['methods'].values():
        assert row['frames'] == 12 and '5.0m/10.0deg' in row['recall']
        assert row['frame_ms_median'] > 0 and row['model_bytes'] > 0
    sizes = {(r['method'], r['reference_images']): r for r in summary['scaling']}
    # The retrieval database grows with the reference set; ImPosing's map does not.
    assert sizes['retrieval', 100_000]['model_bytes'] > \
        sizes['retrieval', 1_000]['model_bytes'] + 99_000 * 64 * 4
    assert sizes['imposing', 100_000]['model_bytes'] == sizes['imposing', 1_000]['model_bytes']
    for name in ('map.png', 'cdf.png', 'latency.png', 'scaling.png', 'levels.png',
                 'report.md', 'frames_imposing.csv', 'frames_retrieval.csv', 'frames_apr.csv'):
        assert (out / name).stat().st_size > 0, name
    assert (out / 'frames_apr.csv').read_text().count('\n') == 13
    assert '| retrieval |' in (out / 'report.md').read_text()
    with AnyReader([out / 'result']) as reader:
        counts = {c.topic: c.msgcount for c in reader.connections}
    assert counts['/camera/image/compressed'] == 12 and counts['/ground_truth/pose'] == 12
    assert counts['/apr/pose'] == 12 and counts['/retrieval/candidates'] == 12


def test_benchmark_refuses_bad_input_before_writing(road, trained, tmp_path, capsys):
    from imposing_ros.cli import main
    from imposing_ros.data.frames import Frame
    from imposing_ros.data.plain import write_plain_folder

    _, _, val_cache = road
    model = str(trained['apr'].checkpoint)
    far = [Frame(i, val_cache.poses[i] + np.array([5000.0, 0, 0, 0, 0, 0, 0]),
                 val_cache.images[i]) for i in range(4)]
    elsewhere = write_plain_folder(tmp_path / 'elsewhere', far)
    empty = tmp_path / 'empty'
    empty.mkdir()
    (empty / 'poses.csv').write_text('timestamp,image,x,y,z,qx,qy,qz,qw\n')
    cases = {str(elsewhere): 'another place', str(empty): 'no poses',
             str(tmp_path / 'missing'): 'not found'}
    for data, reason in cases.items():
        out = tmp_path / 'out'
        assert main(['benchmark', '--data', data, '--out', str(out), '--models', model]) == 2
        assert reason in capsys.readouterr().err
        assert not out.exists()


def test_live_row_counts_a_missed_frame_in_its_mean(tmp_path):
    import json
    import math

    from imposing_ros.evaluation.benchmark import live_entry

    demo = {'median_error_m': 1.4, 'median_error_deg': 0.15, 'missed': 2, 'mean_error_m': math.inf,
            'mean_error_m_localized': 1.6, 'recall': {'5.0m/10.0deg': 0.9},
            'frames_with_truth': 20, 'latency_ms': {'p50': 50.0, 'p90': 60.0}}
    path = tmp_path / 'summary.json'
    path.write_text(json.dumps(demo))  # inf is written as Infinity, as the demo writes it
    row = live_entry(path)
    assert row['mean_error_m'] == math.inf and row['mean_error_m_localized'] == 1.6
    assert row['frames'] == 20 and row['frame_ms_median'] == 50.0


def test_apr_rotation_loss_ignores_the_quaternion_sign():
    from imposing_ros.baselines.models import build_baseline
    from imposing_ros.baselines.training import apr_loss
    from imposing_ros.training.trainer import build_scene_map

    road = SyntheticRoad(length=50.0)
    maps = {'road': build_scene_map(road.reference_poses(5.0), 64, seed=0)}
    model = build_baseline(BaselineConfig(method='apr', image_size=(32, 64), dim=32), maps)
    model.default_scene('road')
    # Heading 180 deg +- 1 deg: w changes sign, the rotation barely does.
    yaw = np.deg2rad([179.0, 181.0])
    poses = torch.tensor([[0.0, 0.0, 1.5, 0.0, 0.0, np.sin(a / 2), np.cos(a / 2)] for a in yaw])
    truth = maps['road'].normalization.normalize(poses.float())
    exact = torch.cat([truth[:, :3], truth[:, 3:]], dim=-1)
    flipped = torch.cat([truth[:, :3], -truth[:, 3:]], dim=-1)
    _, exact_terms = apr_loss(model, exact, poses)
    _, flipped_terms = apr_loss(model, flipped, poses)
    assert exact_terms['loss_q'] == pytest.approx(0.0, abs=1e-6)
    assert flipped_terms['loss_q'] == pytest.approx(0.0, abs=1e-6)
    # A prediction 2 deg off costs about 2 deg of quaternion, whichever sign either side has.
    near = torch.cat([truth[:1, :3], truth[1:, 3:]], dim=-1)  # frame 0 predicted as frame 1
    _, near_terms = apr_loss(model, near, poses[:1])
    assert 0 < near_terms['loss_q'] < 0.05
