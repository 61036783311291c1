"""Training lowers the loss, the trained model localizes far better than chance, and resumes."""

import numpy as np
import pytest
import torch

from imposing_ros.data.cache import CachedPosedImages, ImageCache
from imposing_ros.data.synthetic import SyntheticRoad
from imposing_ros.evaluation.metrics import pose_errors, summarize
from imposing_ros.localization.localizer import Localizer, LocalizerConfig, search_batch
from imposing_ros.localization.search import SearchConfig
from imposing_ros.model.checkpoint import load_model, read_checkpoint
from imposing_ros.model.encoders import ModelConfig
from imposing_ros.training.losses import score_loss, target_scores
from imposing_ros.training.trainer import build_scene_map, SceneData, train, TrainConfig

MODEL = ModelConfig(backbone='resnet18', dim=64, image_size=(32, 64), pose_layers=2,
                    pose_width=128)
SEARCH = SearchConfig(num_candidates=512, levels=4, top_k=32, num_average=64)


def train_config(epochs, **kw):
    kw.setdefault('val_every', epochs)
    return TrainConfig(epochs=epochs, batch_size=16, lr=1e-3, num_candidates=256, levels=4,
                       top_k=32, val_frames=32, augment=False, **kw)


@pytest.fixture(scope='module')
def road_data(tmp_path_factory):
    root = tmp_path_factory.mktemp('road')
    road = SyntheticRoad(length=200.0, size=(32, 64))
    train_cache = ImageCache.build(road.frames(320, seed=1), root / 'train', (32, 64))
    val_cache = ImageCache.build(road.frames(48, seed=2), root / 'val', (32, 64))
    return road, train_cache, val_cache


def test_target_scores_units():
    truth = torch.tensor([[0.0, 0, 0, 0, 0, 0, 1]])
    yaw5 = [0, 0, float(np.sin(np.radians(2.5))), float(np.cos(np.radians(2.5)))]
    candidates = torch.tensor([[[0.0, 0, 0, 0, 0, 0, 1], [20.0, 0, 0, 0, 0, 0, 1],
                                [0.0, 0, 0, *yaw5], [400.0, 0, 0, 0, 0, 0, 1]]])
    s = target_scores(truth, candidates, scale=2000.0)  # 2 km map: 5 / 2000 per metre
    assert torch.allclose(s, torch.tensor([[1.0, 0.95, 0.5, 0.0]]), atol=1e-4)
    assert score_loss([s], [s]) == 0


@pytest.mark.slow
def test_training_learns_to_localize(road_data, tmp_path):
    road, train_cache, val_cache = road_data
    scenes = {'road': SceneData(CachedPosedImages(train_cache), CachedPosedImages(val_cache),
                                road.reference_poses())}
    result = train(scenes, tmp_path / 'run', MODEL, train_config(16), SEARCH, resume=False)
    losses = [h['loss'] for h in result.history]
    assert losses[-1] < 0.6 * losses[0], losses

    val = CachedPosedImages(val_cache)
    images = torch.stack([val[i][0] for i in range(len(val))])
    truth = torch.stack([val[i][1] for i in range(len(val))])
    model, data = load_model(result.checkpoint)
    et, er = pose_errors(search_batch(model, images, None, SEARCH).pose, truth)
    trained = summarize(et, er)
    # Chance: a reference pose drawn at random (half of them face the wrong way).
    ref = torch.as_tensor(road.reference_poses()).float()
    chance = summarize(*pose_errors(ref[torch.randint(len(ref), (len(truth),))], truth))
    # Bound: median under 10 m and a fifth of chance, recall (5 m, 10 deg) over 30 % and five
    # times chance; chance is ~55 m and ~3 %. Kernels differ between CPUs, and so does the
    # training: after 10 epochs, median 2.7 / 3.6 m (seeds 0 / 1) on an AVX-512 machine but
    # 16.4 m (seed 0) on an AVX2 one, where 16 epochs give 2.6 / 2.6 m, recall 77 / 69 %.
    assert trained['median_m'] < 10.0 and trained['median_m'] < chance['median_m'] / 5
    assert trained['recall_5m_10deg'] > 0.3
    assert trained['recall_5m_10deg'] > 5 * chance['recall_5m_10deg']
    assert data['history'][-1]['val_median_m'] < 10.0  # logged validation error
    # the single-image localizer agrees with the batched search
    loc = Localizer(model, config=LocalizerConfig(search=SEARCH))
    out = loc.localize(val_cache.images[0])
    assert out.pose.shape == (7,) and np.isfinite(out.covariance).all()
    assert 0 <= out.score <= 1 and out.mode == 'global'
    tracked = loc.localize(val_cache.images[0], out.pose, out.covariance)
    assert tracked.mode == 'tracking'
    assert np.linalg.norm(tracked.pose[:3] - out.pose[:3]) < 20.0


def test_resume_continues_from_checkpoint(road_data, tmp_path):
    road, train_cache, _ = road_data
    scenes = {'road': SceneData(CachedPosedImages(train_cache, np.arange(64)), None,
                                road.reference_poses())}
    first = train(scenes, tmp_path, MODEL, train_config(1, val_every=0), SEARCH, resume=False)
    again = train(scenes, tmp_path, MODEL, train_config(2, val_every=0), SEARCH, resume=True)
    assert [h['epoch'] for h in again.history] == [1, 2]
    assert again.history[0] == first.history[0]
    with pytest.raises(ValueError, match='other configs'):
        train(scenes, tmp_path, MODEL, train_config(3, val_every=0, seed=5), SEARCH, resume=True)


def test_bad_training_input(road_data, tmp_path):
    road, train_cache, _ = road_data
    empty = CachedPosedImages(train_cache, np.arange(0))
    with pytest.raises(ValueError, match='empty'):
        train({'road': SceneData(empty, None, road.reference_poses())}, tmp_path, MODEL,
              train_config(1), SEARCH)
    bad = road.reference_poses()
    bad[3, 0] = np.nan
    with pytest.raises(ValueError, match='NaN'):
        build_scene_map(bad, 16, 0)
    with pytest.raises(ValueError, match=r'\[M>0, 7\]'):
        build_scene_map(np.zeros((0, 7)), 16, 0)
    with pytest.raises(ValueError, match='no frames'):
        ImageCache.build(iter(()), tmp_path / 'none', (32, 64))


def test_multi_scene_training_shares_the_backbone(tmp_path):
    from imposing_ros.model.imposing import ImPosing
    caches = {}
    for i, name in enumerate(('north', 'south')):
        road = SyntheticRoad(length=100.0, size=(32, 64), seed=10 + i)
        cache = ImageCache.build(road.frames(32, seed=i), tmp_path / name, (32, 64))
        caches[name] = SceneData(CachedPosedImages(cache), None, road.reference_poses())
    config = train_config(1, val_every=0)
    result = train(caches, tmp_path / 'run', MODEL, config, SEARCH, resume=False)
    model = result.model
    assert model.scenes == ['north', 'south']
    torch.manual_seed(config.seed)  # the trainer's seeding before it builds the model
    initial = ImPosing(MODEL, model.maps)
    for scene in model.scenes:  # every scene's head and pose encoder were trained
        for ours, init in ((model.pose_encoders[scene], initial.pose_encoders[scene]),
                           (model.image_encoder.heads[scene], initial.image_encoder.heads[scene])):
            delta = max((a - b).abs().max() for a, b in zip(ours.parameters(), init.parameters()))
            assert delta > 1e-5
    loaded, data = load_model(result.checkpoint)
    assert sorted(data['scenes']) == ['north', 'south']


def _collapsed_run(road, train_cache, folder, config):
    """A run directory whose last.pt is a model with every image-pose cosine near -0.9.

    Image codes are a constant e1 + 0.5 e2 and pose codes a constant -e1 (zero weights, biases
    only): the collapse seen on small datasets, where the ReLU score is 0 for every pair.
    """
    from imposing_ros.config import config_to_dict
    from imposing_ros.model.checkpoint import save_checkpoint
    from imposing_ros.model.imposing import ImPosing

    scene_map = build_scene_map(road.reference_poses(), SEARCH.num_candidates, config.seed)
    model = ImPosing(MODEL, {'road': scene_map})
    head = model.image_encoder.heads['road']
    last = model.pose_encoders['road'].mlp[-1]
    with torch.no_grad():
        for layer in (head, last):
            layer.weight.zero_()
            layer.bias.zero_()
        head.bias[0], head.bias[1], last.bias[0] = 1.0, 0.5, -1.0
    save_checkpoint(folder / 'last.pt', model, config.seed, train_config=config_to_dict(config),
                    epoch=0, history=[])
    return {'road': SceneData(CachedPosedImages(train_cache, np.arange(64)), None,
                              road.reference_poses())}


def test_collapse_is_detected_and_the_default_loss_recovers(road_data, tmp_path, caplog):
    road, train_cache, _ = road_data
    paper = train_config(2, val_every=0, loss_on_cosine=False)
    scenes = _collapsed_run(road, train_cache, tmp_path / 'paper', paper)
    with caplog.at_level('WARNING', logger='imposing_ros.training'):
        stuck = train(scenes, tmp_path / 'paper', MODEL, paper, SEARCH, resume=True)
    # The paper's ReLU score has no gradient left: nothing moves and the log says so.
    assert [h['positive_share'] for h in stuck.history] == [0.0, 0.0]
    assert 'training has collapsed' in caplog.text
    head = stuck.model.image_encoder.heads['road']
    assert float(head.weight.detach().abs().max()) == 0.0 and float(head.bias[0].detach()) == 1.0

    ours = train_config(2, val_every=0)
    assert ours.loss_on_cosine  # the default
    scenes = _collapsed_run(road, train_cache, tmp_path / 'ours', ours)
    recovered = train(scenes, tmp_path / 'ours', MODEL, ours, SEARCH, resume=True)
    assert recovered.history[-1]['positive_share'] > 0.2
    assert recovered.history[-1]['loss'] < stuck.history[-1]['loss']


def test_lr_schedule():
    config = TrainConfig(epochs=10, lr_schedule='cosine', lr_final_fraction=0.1,
                         warmup_epochs=1.0)
    assert config.lr_factor(0.0) == pytest.approx(0.1)  # warm-up starts at lr / 10
    assert config.lr_factor(1.0) == pytest.approx(0.5 * (1.1 + 0.9 * np.cos(np.pi / 10)))
    assert config.lr_factor(10.0) == pytest.approx(0.1)
    assert TrainConfig(epochs=10).lr_factor(7.3) == 1.0  # constant, as the paper
    for bad in (dict(lr_schedule='step'), dict(precision='fp16'), dict(warmup_epochs=-1),
                dict(checkpoint_every=0)):
        with pytest.raises(ValueError):
            TrainConfig(**bad)


@pytest.mark.slow
def test_small_dataset_recipe_localizes(tmp_path):
    """config/train_small.yaml on 40 frames of a 100 m road: no collapse, well above chance."""
    from pathlib import Path

    from imposing_ros.training.cli import load_configs

    model_cfg, train_cfg, search_cfg = load_configs(
        Path(__file__).parents[1] / 'config' / 'train_small.yaml')
    road = SyntheticRoad(length=100.0, size=model_cfg.image_size, seed=3)
    train_cache = ImageCache.build(road.frames(40, seed=1), tmp_path / 'train',
                                   model_cfg.image_size)
    val_cache = ImageCache.build(road.frames(16, seed=2), tmp_path / 'val', model_cfg.image_size)
    scenes = {'road': SceneData(CachedPosedImages(train_cache), CachedPosedImages(val_cache),
                                road.reference_poses())}
    result = train(scenes, tmp_path / 'run', model_cfg, train_cfg, search_cfg, resume=False)
    assert min(h['positive_share'] for h in result.history[5:]) > 0.05
    val = CachedPosedImages(val_cache)
    images = torch.stack([val[i][0] for i in range(len(val))])
    truth = torch.stack([val[i][1] for i in range(len(val))])
    out = search_batch(result.model.eval(), images, None, search_cfg)
    trained = summarize(*pose_errors(out.pose, truth))
    ref = torch.as_tensor(road.reference_poses()).float()
    chance = summarize(*pose_errors(ref[torch.randint(len(ref), (len(truth),))], truth))
    assert (out.score > 0).all()
    assert trained['median_m'] < chance['median_m'] / 4, (trained, chance)


def test_stages_stop_after_and_init_from(road_data, tmp_path):
    road, train_cache, _ = road_data
    scenes = {'road': SceneData(CachedPosedImages(train_cache, np.arange(32)), None,
                                road.reference_poses())}
    first = train(scenes, tmp_path / 'one', MODEL,
                  train_config(3, val_every=0, lr_schedule='cosine', checkpoint_every=2),
                  SEARCH, resume=False, stop_after=1)
    assert [h['epoch'] for h in first.history] == [1]  # 1 epoch of a 3-epoch schedule
    # written where the run stopped, though not at a checkpoint_every boundary
    assert read_checkpoint(first.checkpoint)['epoch'] == 1
    assert first.history[0]['lr'] > 0.5 * 1e-3  # the schedule of 3 epochs, not of 1
    second = train(scenes, tmp_path / 'two', MODEL, train_config(1, val_every=0, lambda_t=15.0),
                   SEARCH, resume=False, init_from=first.checkpoint)
    assert [h.get('stage') for h in second.history] == [str(first.checkpoint), None]
    assert np.allclose(second.model.maps['road'].initial_poses,
                       first.model.maps['road'].initial_poses)
    other = ModelConfig(backbone='resnet18', dim=32, image_size=(32, 64), pose_layers=2,
                        pose_width=128)
    with pytest.raises(ValueError, match='model config differs'):
        train(scenes, tmp_path / 'three', other, train_config(1, val_every=0), SEARCH,
              resume=False, init_from=first.checkpoint)


def test_adding_a_scene_with_a_frozen_backbone_keeps_the_others(road_data, tmp_path):
    """A trained model learns a second map; its backbone and first scene stay bit-identical."""
    road, train_cache, _ = road_data
    scenes = {'road': SceneData(CachedPosedImages(train_cache, np.arange(32)), None,
                                road.reference_poses())}
    first = train(scenes, tmp_path / 'one', MODEL, train_config(1, val_every=0), SEARCH,
                  resume=False)
    other = SyntheticRoad(length=100.0, size=(32, 64), seed=21)
    cache = ImageCache.build(other.frames(32, seed=3), tmp_path / 'other', (32, 64))
    added = {'other': SceneData(CachedPosedImages(cache), None, other.reference_poses())}
    frozen = train_config(1, val_every=0, freeze_backbone=True)
    second = train(added, tmp_path / 'two', MODEL, frozen, SEARCH, resume=False,
                   init_from=first.checkpoint)
    assert second.model.scenes == ['road', 'other']
    before, after = first.model.state_dict(), second.model.state_dict()
    kept = [k for k in before if k.startswith(('image_encoder.backbone.',
                                               'image_encoder.heads.road.',
                                               'pose_encoders.road.'))]
    assert kept and all(torch.equal(before[k], after[k]) for k in kept)  # BN statistics too
    head = second.model.image_encoder.heads['other']
    assert head.weight.shape == before['image_encoder.heads.road.weight'].shape
    with pytest.raises(ValueError, match='freeze_backbone needs trained features'):
        train(added, tmp_path / 'three', MODEL, frozen, SEARCH, resume=False)


def test_turn_weight_draws_turning_frames_more_often(road_data):
    from imposing_ros.training.loop import make_loaders

    road, train_cache, _ = road_data
    turning = np.zeros(len(train_cache), bool)
    turning[:len(turning) // 10] = True  # a tenth of the frames turn
    data = SceneData(CachedPosedImages(train_cache), None, road.reference_poses(), turning)
    loader = make_loaders({'road': data}, train_config(1, turn_weight=9.0))['road']
    drawn = np.array(list(loader.sampler))
    assert len(drawn) == len(train_cache)  # an epoch keeps its length
    assert 0.4 < turning[drawn].mean() < 0.6  # 9 x 10 % against 90 %: half of the draws
    with pytest.raises(ValueError, match='turn_weight'):
        train_config(1, turn_weight=0.0)
    with pytest.raises(ValueError, match='which training frames turn'):
        make_loaders({'road': SceneData(data.train, None, data.reference_poses)},
                     train_config(1, turn_weight=2.0))


def test_scene_frames_balances_scenes_of_unequal_size(road_data):
    from imposing_ros.training.loop import make_loaders

    road, train_cache, _ = road_data
    big = SceneData(CachedPosedImages(train_cache), None, road.reference_poses())
    small = SceneData(CachedPosedImages(train_cache, np.arange(40)), None, road.reference_poses())
    loaders = make_loaders({'big': big, 'small': small}, train_config(1, scene_frames=100))
    first, second = (np.array(list(loaders['big'].sampler)) for _ in range(2))
    assert len(first) == 100 and len(set(first)) == 100  # a subset of the larger scene
    assert not np.array_equal(np.sort(first), np.sort(second))  # a new one each epoch
    drawn = np.array(list(loaders['small'].sampler))
    assert len(drawn) == 100 and drawn.max() < 40  # the smaller one drawn with replacement
    assert len(loaders['big']) == len(loaders['small']) == 100 // 16  # equal steps a scene
    every = make_loaders({'big': big, 'small': small}, train_config(1))
    assert (len(every['big'].dataset), len(list(every['small'].sampler))) == (320, 40)
    with pytest.raises(ValueError, match='scene_frames'):
        train_config(1, scene_frames=-1)


def test_config_overrides_on_the_command_line(tmp_path):
    from imposing_ros.training.cli import load_configs

    path = tmp_path / 'c.yaml'
    path.write_text('train:\n  lr: 0.001\n  epochs: 3\n')
    _, train_cfg, search_cfg = load_configs(
        str(path), overrides=['train.lr=1e-4', 'train.freeze_backbone=true', 'search.levels=4'])
    assert (train_cfg.lr, train_cfg.epochs, train_cfg.freeze_backbone) == (1e-4, 3, True)
    assert search_cfg.levels == 4
    with pytest.raises(ValueError, match='SECTION.KEY=VALUE'):
        load_configs(str(path), overrides=['lr=1e-4'])
    with pytest.raises(ValueError, match='unknown section'):
        load_configs(str(path), overrides=['optim.lr=1e-4'])
    with pytest.raises(ValueError, match='unknown'):  # a key the section does not have
        load_configs(str(path), overrides=['train.learning_rate=1e-4'])
