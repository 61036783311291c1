"""Worker for test_distributed: one short training under torchrun, parameters saved per rank."""

import os
from pathlib import Path
import sys

import numpy as np
import torch

from imposing_ros.data.cache import CachedPosedImages, ImageCache
from imposing_ros.data.synthetic import SyntheticRoad
from imposing_ros.localization.search import SearchConfig
from imposing_ros.model.encoders import ModelConfig
from imposing_ros.model.imposing import ImPosing
from imposing_ros.training.trainer import SceneData, train, TrainConfig


def main(out: Path) -> None:
    torch.set_num_threads(1)
    rank = int(os.environ['RANK'])
    road = SyntheticRoad(size=(32, 64))
    cache = ImageCache.build(road.frames(32, seed=1), out / f'cache{rank}', (32, 64))
    scenes = {'road': SceneData(CachedPosedImages(cache), None, road.reference_poses())}
    model = ModelConfig(backbone='resnet18', dim=16, image_size=(32, 64), pose_layers=2,
                        pose_width=32)
    config = TrainConfig(epochs=1, batch_size=4, num_candidates=64, levels=3, top_k=8,
                         val_every=0, augment=False, lr=1e-2)
    result = train(scenes, out / 'run', model, config, SearchConfig(num_candidates=64, top_k=8,
                                                                    num_average=16),
                   resume=False, device='cpu')
    # Parameters (not BatchNorm running statistics, which each rank updates on its own data).
    params = {k: v.detach().clone() for k, v in result.model.named_parameters()}
    torch.save(params, out / f'rank{rank}.pt')
    torch.manual_seed(config.seed)  # the trainer seeds this way before building the model
    initial = dict(ImPosing(model, result.model.maps).named_parameters())
    moved = max(float((params[k] - initial[k]).abs().max()) for k in params)
    np.save(out / f'moved{rank}.npy', np.array([moved]))
    np.save(out / f'world{rank}.npy', np.array([torch.distributed.get_world_size()]))


if __name__ == '__main__':
    main(Path(sys.argv[1]))
