"""Train an ImPosing model on posed images (plain folder, rosbag2 or public datasets).

``--method retrieval|apr`` trains a baseline of the benchmark instead
(:mod:`imposing_ros.baselines`), with the same data, schedule and checkpoints.

Datasets are given as ``[SCENE=]SPEC`` (see :func:`imposing_ros.data.datasets.open_dataset`):
specs with the same scene name are joined; several scenes make a multi-scene model (one shared
backbone, one head and pose encoder per scene). The YAML ``--config`` has up to three strict
sections, ``model`` (ModelConfig), ``train`` (TrainConfig) and ``search`` (SearchConfig);
command-line flags override single keys.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
import itertools
import logging
from pathlib import Path

import numpy as np
import yaml

from imposing_ros.config import config_from_dict, parse_override
from imposing_ros.data.cache import CachedPosedImages, ImageCache
from imposing_ros.geometry import turning
from imposing_ros.localization.search import SearchConfig
from imposing_ros.model.encoders import ModelConfig
from imposing_ros.training.trainer import SceneData, train, TrainConfig

LOGGER = logging.getLogger('imposing_ros.training')
DEFAULT_SCENE = 'default'


def parse_scene_spec(text: str) -> tuple[str, str]:
    """``'scene=spec'`` -> (scene, spec); a bare spec belongs to the default scene.

    A scene name holds no ``/``, ``:`` or ``?``: the ``=`` of reader options
    (``bag.mcap?image=/cam``) or of a path is not a scene separator.
    """
    head, sep, tail = text.partition('=')
    if sep and head and not any(c in head for c in '/:?'):
        return head, tail
    return DEFAULT_SCENE, text


def load_configs(path: str | None, method: str = 'imposing', overrides: list[str] = ()):
    """Strict (model, train, search) configs from a YAML file (missing sections: defaults).

    ``method`` 'imposing': ModelConfig, TrainConfig, SearchConfig; a baseline: BaselineConfig
    (whose ``method`` must agree), BaselineTrainConfig and no search section. ``overrides``:
    ``'section.key=value'`` (value in YAML) applied over the file.
    """
    data = {}
    if path:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f'config file not found: {p}')
        data = yaml.safe_load(p.read_text()) or {}
    for text in overrides:
        section, key, value = parse_override(text)
        data[section] = {**(data.get(section) or {}), key: value}
    unknown = set(data) - {'model', 'train', 'search'}
    if unknown:
        raise ValueError(f'{path or "--set"}: unknown section(s) {sorted(unknown)}; '
                         f'expected model, train, search')
    if method != 'imposing':
        from imposing_ros.baselines.models import BaselineConfig
        from imposing_ros.baselines.training import BaselineTrainConfig

        model = dict(data.get('model') or {})
        if model.setdefault('method', method) != method or data.get('search'):
            raise ValueError(f'{path}: a {method} run takes a model section of method {method} '
                             f'and no search section')
        return (config_from_dict(BaselineConfig, model, f'{path}: model'),
                config_from_dict(BaselineTrainConfig, data.get('train'), f'{path}: train'), None)
    return (config_from_dict(ModelConfig, data.get('model'), f'{path}: model'),
            config_from_dict(TrainConfig, data.get('train'), f'{path}: train'),
            config_from_dict(SearchConfig, data.get('search'), f'{path}: search'))


def build_cache(specs: list[str], root: Path, size: tuple[int, int]) -> ImageCache:
    """One image cache for the datasets ``specs`` (reused when their content is unchanged)."""
    from imposing_ros.data.datasets import open_dataset

    readers = [open_dataset(s) for s in specs]
    key = '|'.join(r.cache_key() for r in readers)
    frames = itertools.chain.from_iterable(readers)
    return ImageCache.build(frames, root, size, key=key)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``imposing-ros train``."""
    parser.add_argument('--train', action='append', required=True, metavar='[SCENE=]SPEC',
                        help='training dataset (repeatable)')
    parser.add_argument('--val', action='append', default=[], metavar='[SCENE=]SPEC',
                        help='validation dataset (repeatable)')
    parser.add_argument('--method', choices=('imposing', 'retrieval', 'apr'), default='imposing',
                        help='imposing (default), or a baseline of the benchmark: retrieval '
                             '(GeM descriptor) or apr (pose regression)')
    parser.add_argument('--out', required=True, help='output directory (checkpoints, cache)')
    parser.add_argument('--config', help='YAML with model / train / search sections')
    parser.add_argument('--set', action='append', default=[], metavar='SECTION.KEY=VALUE',
                        help='override one key of the config (repeatable), e.g. '
                             'train.freeze_backbone=false')
    parser.add_argument('--epochs', type=int, help='override train.epochs')
    parser.add_argument('--batch-size', type=int, help='override train.batch_size')
    parser.add_argument('--backbone', help='override model.backbone')
    parser.add_argument('--backbone-weights', help='local torchvision weights to initialise from')
    parser.add_argument('--device', help='cpu or cuda (default: cuda if available)')
    parser.add_argument('--no-resume', action='store_true', help='ignore an existing last.pt')
    parser.add_argument('--init-from', metavar='CKPT',
                        help='start a new run from the weights and maps of CKPT (same model '
                             'config): a second training stage with other settings')
    parser.add_argument('--stop-after', type=int, metavar='N',
                        help='stop once N epochs of the configured schedule are done (resume '
                             'later with the same command without it)')
    parser.add_argument('--cache', help='image cache directory (default: OUT/cache)')
    parser.add_argument('--stride', type=int, default=1,
                        help='train on every STRIDE-th frame (consecutive frames are a few '
                             'metres apart; a stride shortens epochs on small machines)')


def run(args: argparse.Namespace) -> int:
    """Entry of ``imposing-ros train``."""
    model_cfg, train_cfg, search_cfg = load_configs(args.config, args.method, args.set)
    if args.epochs is not None:
        train_cfg = replace(train_cfg, epochs=args.epochs)
    if args.batch_size is not None:
        train_cfg = replace(train_cfg, batch_size=args.batch_size)
    if args.backbone is not None:
        model_cfg = replace(model_cfg, backbone=args.backbone)
    out = Path(args.out)
    cache_root = Path(args.cache) if args.cache else out / 'cache'
    grouped: dict[str, dict[str, list[str]]] = {}
    for split in ('train', 'val'):
        for text in getattr(args, split):
            scene, spec = parse_scene_spec(text)
            grouped.setdefault(scene, {'train': [], 'val': []})[split].append(spec)
    scenes = {}
    for scene, specs in grouped.items():
        if not specs['train']:
            raise ValueError(f'scene {scene!r} has validation data but no training data')
        train_cache = build_cache(specs['train'], cache_root / f'{scene}-train',
                                  model_cfg.image_size)
        val_cache = build_cache(specs['val'], cache_root / f'{scene}-val',
                                model_cfg.image_size) if specs['val'] else None
        if args.stride < 1:
            raise ValueError(f'--stride must be >= 1, got {args.stride}')
        index = np.arange(0, len(train_cache), args.stride)
        scenes[scene] = SceneData(CachedPosedImages(train_cache, index),
                                  CachedPosedImages(val_cache) if val_cache else None,
                                  np.asarray(train_cache.poses),
                                  turning(train_cache.poses, train_cache.stamps)[index])
        LOGGER.info('scene %s: %d training, %d validation frames', scene, len(train_cache),
                    len(val_cache) if val_cache else 0)
    if args.stop_after is not None and args.stop_after < 1:
        raise ValueError(f'--stop-after must be >= 1, got {args.stop_after}')
    if args.method == 'imposing':
        result = train(scenes, out, model_cfg, train_cfg, search_cfg, resume=not args.no_resume,
                       backbone_weights=args.backbone_weights, device=args.device,
                       init_from=args.init_from, stop_after=args.stop_after)
    else:
        from imposing_ros.baselines.training import train_baseline

        if args.init_from:
            raise ValueError('--init-from is for ImPosing stages; baselines resume from last.pt')
        result = train_baseline(scenes, out, model_cfg, train_cfg, resume=not args.no_resume,
                                backbone_weights=args.backbone_weights, device=args.device,
                                stop_after=args.stop_after)
    print(f'checkpoint: {result.checkpoint}')
    return 0
