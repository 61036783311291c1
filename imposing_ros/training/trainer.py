"""ImPosing's training (paper section 3.2): scores supervised at every level of the search.

The loop itself (schedule, precision, progress, checkpoints) is :mod:`.loop`, shared with the
baselines. Runs on one process or under ``torchrun --nproc_per_node=N``
(DistributedDataParallel; gloo on CPU, nccl on CUDA). Checkpoints hold the model config, the
seed, the maps (normalisation and initial candidates), the train config, the optimizer and the
history, and training resumes from them.
"""

from __future__ import annotations

from dataclasses import dataclass
import logging
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from imposing_ros.config import config_to_dict
from imposing_ros.geometry import canonical_poses, MapNormalization, perturb_poses
from imposing_ros.localization.search import gather_poses, sample_mixture, SearchConfig
from imposing_ros.model.checkpoint import load_model
from imposing_ros.model.encoders import cosine, ModelConfig
from imposing_ros.model.imposing import ImPosing, SceneMap
from imposing_ros.training.loop import (
    make_loaders,
    read_resumable,
    run_epochs,
    SceneData,
    ScheduleConfig,
    TrainResult,
)
from imposing_ros.training.losses import score_loss, target_scores
from imposing_ros.utils import resolve_device

LOGGER = logging.getLogger('imposing_ros.training')
# A final-level training batch where fewer than this share of cosines is positive is collapsing:
# the ReLU score is 0 almost everywhere, so the search has nothing to rank.
COLLAPSE_POSITIVE_SHARE = 0.01


@dataclass(frozen=True)
class TrainConfig(ScheduleConfig):
    """ImPosing's training hyperparameters (paper section 4 where it gives them)."""

    # The L1 loss of eq. 5 compares targets with the raw cosine (no ReLU): a cosine below 0 still
    # gets a gradient towards 0. With the ReLU score of eq. 1 in the loss, a model whose cosines
    # all turn negative has no gradient left and never recovers (seen on small datasets).
    # Inference always uses the ReLU score; false restores the paper's loss.
    loss_on_cosine: bool = True
    # Candidates per level during training; inference uses SearchConfig.num_candidates (4096).
    # Fewer here keeps a CPU step affordable; every level is still supervised.
    num_candidates: int = 1024
    levels: int = 6
    # Mixture components; half come from the top predicted scores, half from the top targets.
    top_k: int = 100
    # Proposer standard deviation, as SearchConfig.sigma (m and degrees, ROS axes).
    sigma: tuple[float, ...] = (8.0, 8.0, 0.2, 1.0, 1.0, 5.0)
    schedule: str = 'halve'
    # Eq. 3 weights: lambda_t per normalised map unit, lambda_r per degree.
    lambda_t: float = 5.0
    lambda_r: float = 0.1
    # Train the per-scene heads and pose encoders only; the shared backbone stays as loaded
    # (--init-from). With a scene the loaded model lacks, this adds a map to a trained model and
    # leaves its other scenes' results exactly as they were.
    freeze_backbone: bool = False

    def __post_init__(self):
        super().__post_init__()
        if self.num_candidates < 2:
            raise ValueError('num_candidates must be >= 2')
        if not 2 <= self.top_k <= self.num_candidates:
            raise ValueError('top_k must be in [2, num_candidates]')
        SearchConfig(num_candidates=self.num_candidates, levels=self.levels, top_k=self.top_k,
                     sigma=self.sigma, schedule=self.schedule, num_average=1)

    def search_config(self) -> SearchConfig:
        """The proposer settings as a SearchConfig."""
        return SearchConfig(num_candidates=self.num_candidates, levels=self.levels,
                            top_k=self.top_k, sigma=self.sigma, schedule=self.schedule,
                            num_average=min(256, self.num_candidates))


class ScoreLoss(nn.Module):
    """One training step's forward pass: image codes, candidates at every level, eq. 5 loss.

    A module of its own so that DistributedDataParallel wraps one forward.
    """

    def __init__(self, model: ImPosing, config: TrainConfig):
        super().__init__()
        self.model = model
        self.config = config
        self.search = config.search_config()

    def forward(self, images: torch.Tensor, poses: torch.Tensor, scene: str,
                generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Loss and final-level cosines ``[B, N]`` for ``images [B, 3, H, W]``, ``poses [B, 7]``.

        Codes may come out of a bf16 autocast region; cosines, targets and the loss are float32.
        """
        cfg, model = self.config, self.model
        scene_map = model.maps[scene]
        scale = scene_map.normalization.scale
        image_codes = model.encode_images(images, scene).float()
        batch, device = images.shape[0], images.device
        n = cfg.num_candidates
        # Level 0: a random subset of the initial candidates, uniform noise in [-v, v].
        reference = scene_map.initial_poses.to(device)
        pick = torch.randint(len(reference), (n,), generator=generator, device=device)
        sigma0 = self.search.level_sigma(1).to(device)
        noise = torch.rand((n, 6), generator=generator, device=device) * 2 - 1
        candidates = perturb_poses(reference[pick], noise, sigma0).expand(batch, n, 7)
        predicted, targets = [], []
        for level in range(cfg.levels):
            if level > 0:
                candidates = self._propose(candidates, predicted[-1].detach().relu(),
                                           targets[-1], level, generator)
            codes = model.encode_poses(candidates if level else candidates[0], scene).float()
            raw = cosine(image_codes, codes)
            predicted.append(raw if cfg.loss_on_cosine else raw.relu())
            targets.append(target_scores(poses, candidates, scale, cfg.lambda_t, cfg.lambda_r))
        return score_loss(predicted, targets), predicted[-1].detach()

    @torch.no_grad()
    def _propose(self, candidates, predicted, target, level, generator):
        half = self.config.top_k // 2
        top_p, idx_p = predicted.topk(self.config.top_k - half, dim=1)
        top_t, idx_t = target.topk(half, dim=1)
        centers = torch.cat([gather_poses(candidates, idx_p), gather_poses(candidates, idx_t)],
                            dim=1)
        weights = torch.cat([top_p, top_t], dim=1)
        shape = candidates.shape[:2]
        uniform = torch.rand(shape, generator=generator, device=candidates.device)
        normal = torch.randn((*shape, 6), generator=generator, device=candidates.device)
        return sample_mixture(centers, weights, uniform, normal, self.search.level_sigma(level))


def build_scene_map(poses: np.ndarray, num_initial: int, seed: int) -> SceneMap:
    """Map of a scene from its reference poses ``[M, 7]``: normalisation + initial candidates.

    Initial candidates are ``num_initial`` reference poses spread evenly through the set (with
    repetition when there are fewer).
    """
    poses_t = torch.as_tensor(np.asarray(poses), dtype=torch.float64)
    if poses_t.ndim != 2 or poses_t.shape[1] != 7 or len(poses_t) == 0:
        raise ValueError(f'reference poses must be [M>0, 7], got {tuple(poses_t.shape)}')
    normalization = MapNormalization.from_positions(poses_t[:, :3])
    g = torch.Generator().manual_seed(seed)
    if len(poses_t) >= num_initial:
        index = torch.randperm(len(poses_t), generator=g)[:num_initial].sort().values
    else:
        index = torch.randint(len(poses_t), (num_initial,), generator=g)
    return SceneMap(normalization, canonical_poses(poses_t[index].float()))


def _distributed() -> tuple[int, int]:
    """(rank, world size); initialises the process group under torchrun."""
    world = int(os.environ.get('WORLD_SIZE', '1'))
    if world > 1 and not dist.is_initialized():
        backend = 'nccl' if torch.cuda.is_available() else 'gloo'
        dist.init_process_group(backend)
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get('LOCAL_RANK', '0')))
    if world > 1:
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def train(scenes: dict[str, SceneData], out: str | Path, model_config: ModelConfig,
          train_config: TrainConfig, search_config: SearchConfig | None = None,
          resume: bool = True, backbone_weights: str | None = None,
          device: str | None = None, init_from: str | Path | None = None,
          stop_after: int | None = None) -> TrainResult:
    """Train a (multi-scene) model (see :class:`TrainResult`).

    ``out`` is a directory: ``last.pt`` (with the optimizer state, to resume) is written every
    ``checkpoint_every`` epochs and at the run's last epoch, and ``best.pt`` (weights only) at
    the best validation median error. An existing ``last.pt`` is resumed when ``resume`` is
    set (its configs must match).
    ``init_from``: a checkpoint of the same architecture whose weights and maps a new run
    starts from (a second stage with other training settings; fresh optimizer and schedule).
    ``stop_after``: stop once this many epochs of the configured schedule are done (the run
    resumes later where it stopped).
    """
    rank, world = _distributed()
    cfg = train_config
    out = Path(out)
    last = out / 'last.pt'
    device = torch.device(resolve_device(device))
    torch.manual_seed(cfg.seed)
    search_config = search_config or SearchConfig()

    history: list[dict] = []
    start_epoch = 0
    if resume and last.is_file():
        data = read_resumable(last, cfg, model_config)
        model, _ = load_model(last, device)
        start_epoch, history = int(data['epoch']), list(data.get('history', []))
        optimizer_state = data.get('optimizer')
        LOGGER.info('resuming %s at epoch %d', last, start_epoch)
    elif init_from is not None:
        model, data = load_model(init_from, device)
        if config_to_dict(model.config) != config_to_dict(model_config):
            raise ValueError(f"{init_from}: its model config differs from this run's")
        # Each epoch of earlier stages keeps the checkpoint it was trained into.
        history = [{'stage': str(init_from), **h} for h in data.get('history', [])]
        optimizer_state = None
        LOGGER.info('starting from the weights of %s', init_from)
    else:
        maps = {name: build_scene_map(s.reference_poses, search_config.num_candidates,
                                      cfg.seed) for name, s in scenes.items()}
        model = ImPosing(model_config, maps)
        if backbone_weights:
            model.image_encoder.load_backbone_weights(backbone_weights)
        model = model.to(device)
        optimizer_state = None
    if start_epoch == 0:  # a new run: scenes the loaded model lacks are added to it
        for name in [n for n in scenes if n not in model.maps]:
            if init_from is not None:
                LOGGER.info('adding scene %s to the model of %s', name, init_from)
            model.add_scene(name, build_scene_map(scenes[name].reference_poses,
                                                  search_config.num_candidates, cfg.seed))
    if not set(scenes) <= set(model.scenes):
        raise ValueError(f"scenes {sorted(scenes)} are not all in the model's {model.scenes}")
    if cfg.freeze_backbone:
        if init_from is None and start_epoch == 0 and not backbone_weights:
            raise ValueError('freeze_backbone needs trained features: pass --init-from (or '
                             '--backbone-weights)')
        model.image_encoder.freeze_backbone()

    step = ScoreLoss(model, cfg).to(device)
    ddp = DistributedDataParallel(step, find_unused_parameters=len(model.scenes) > 1) \
        if world > 1 else step
    loaders = make_loaders(scenes, cfg, rank, world)
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model.to(memory_format=memory_format)
    generator = torch.Generator(device=device).manual_seed(cfg.seed * 1000 + rank)

    def forward(images, poses, scene, trial=False):
        # The precision trial draws from its own generator: training's stream stays the same.
        loss, final = ddp(images, poses, scene,
                          torch.Generator(device=device).manual_seed(0) if trial else generator)
        return loss, {'positive_share': float((final > 0).float().mean())}

    def end_of_epoch(record: dict) -> dict:
        if record['positive_share'] < COLLAPSE_POSITIVE_SHARE:
            LOGGER.warning('epoch %d: training has collapsed: only %.2f %% of final-level '
                           'cosines are positive, so the ReLU score is 0 almost everywhere and '
                           'the search cannot rank candidates. Lower train.lr, add '
                           'train.warmup_epochs, or keep train.loss_on_cosine true.',
                           record['epoch'], 100 * record['positive_share'])
        if cfg.val_every and record['epoch'] % cfg.val_every == 0:
            return _validate(model, scenes, search_config, cfg, device)
        return {}

    history = run_epochs(model, forward, loaders, cfg, out, history, start_epoch, stop_after,
                         optimizer_state, end_of_epoch, rank)
    if world > 1:
        dist.barrier()
    model.to(memory_format=torch.contiguous_format)
    return TrainResult(last, model, history)


@torch.no_grad()
def _validate(model: ImPosing, scenes: dict[str, SceneData], search: SearchConfig,
              cfg: TrainConfig, device: torch.device) -> dict:
    """Median translation / rotation error of the full search on a few held-out frames."""
    from imposing_ros.evaluation.metrics import pose_errors
    from imposing_ros.localization.localizer import search_batch

    model.eval()
    errors_t, errors_r = [], []
    for name, s in scenes.items():
        if s.val is None or len(s.val) == 0:
            continue
        count = min(cfg.val_frames, len(s.val))
        index = np.linspace(0, len(s.val) - 1, count).round().astype(int)
        images = torch.stack([s.val[i][0] for i in index]).to(device)
        truth = torch.stack([s.val[i][1] for i in index])
        result = search_batch(model, images, name, search, seed=cfg.seed)
        et, er = pose_errors(result.pose.cpu(), truth)
        errors_t.append(et)
        errors_r.append(er)
    model.train()
    if not errors_t:
        return {}
    et, er = torch.cat(errors_t), torch.cat(errors_r)
    return {'val_median_m': float(et.median()), 'val_median_deg': float(er.median())}
