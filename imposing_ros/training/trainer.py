"""Training (paper section 3.2): scores supervised at every level of the candidate search.

Runs on one process or under ``torchrun --nproc_per_node=N`` (DistributedDataParallel; gloo on
CPU, nccl on CUDA). Checkpoints hold the model config, the seed, the maps (normalisation and
initial candidates), the train config, the optimizer and the history, and training resumes
from them.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
import logging
import math
import os
from pathlib import Path
import time
from typing import Callable, NamedTuple

import numpy as np
import torch
from torch import nn
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from torchvision.transforms import v2
from tqdm import tqdm

from imposing_ros.config import config_to_dict
from imposing_ros.geometry import canonical_poses, MapNormalization, perturb_poses
from imposing_ros.localization.search import gather_poses, sample_mixture, SearchConfig
from imposing_ros.model.checkpoint import load_model, read_checkpoint, save_checkpoint
from imposing_ros.model.encoders import cosine, ModelConfig
from imposing_ros.model.imposing import ImPosing, SceneMap
from imposing_ros.training.losses import score_loss, target_scores

LOGGER = logging.getLogger('imposing_ros.training')
LR_SCHEDULES = ('constant', 'cosine')
PRECISIONS = ('auto', 'fp32', 'bf16')
# A final-level training batch where fewer than this share of cosines is positive is collapsing:
# the ReLU score is 0 almost everywhere, so the search has nothing to rank.
COLLAPSE_POSITIVE_SHARE = 0.01


@dataclass(frozen=True)
class ScheduleConfig:
    """What every training method shares: epochs, batches, learning-rate schedule, precision."""

    epochs: int = 250
    batch_size: int = 16
    # Adam's peak learning rate (paper: 1e-4, constant).
    lr: float = 1e-4
    # 'constant' (paper) or 'cosine': decay from lr to lr_final_fraction * lr over the run.
    lr_schedule: str = 'constant'
    lr_final_fraction: float = 0.02
    # Linear warm-up from lr / 10 over the first warmup_epochs epochs (fractional; 0 = none).
    warmup_epochs: float = 0.0
    # Arithmetic of the forward pass: 'fp32', 'bf16' (autocast; weights and optimizer stay
    # fp32) or 'auto': on CUDA bf16 where the GPU supports it; on a CPU, a few timed steps of
    # each at start-up and the faster one (an AVX-512 CPU without AVX512_BF16 emulates bf16
    # and runs ~3x slower than fp32, while AMX runs it much faster: only a measurement tells).
    precision: str = 'auto'
    # Images in channels-last memory layout (faster convolutions in oneDNN and cuDNN).
    channels_last: bool = True
    # Appearance augmentation for day / night / weather change (photometric only: geometric
    # changes would break the image-pose correspondence).
    augment: bool = True
    # Validate (median error on held-out frames) every N epochs; 0 = never.
    val_every: int = 5
    val_frames: int = 64
    checkpoint_every: int = 1
    num_workers: int = 0
    seed: int = 0

    def __post_init__(self):
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError('epochs and batch_size must be >= 1')
        if not 0 < self.lr < 1:
            raise ValueError(f'lr must be in (0, 1), got {self.lr}')
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f'lr_schedule must be one of {LR_SCHEDULES}, got '
                             f'{self.lr_schedule!r}')
        if not 0 < self.lr_final_fraction <= 1 or self.warmup_epochs < 0:
            raise ValueError('lr_final_fraction must be in (0, 1] and warmup_epochs >= 0')
        if self.precision not in PRECISIONS:
            raise ValueError(f'precision must be one of {PRECISIONS}, got {self.precision!r}')

    def lr_factor(self, progress: float) -> float:
        """Learning rate / ``lr`` at ``progress`` epochs (fractional) into the run."""
        factor = 1.0
        if self.lr_schedule == 'cosine':
            t = min(max(progress / self.epochs, 0.0), 1.0)
            low = self.lr_final_fraction
            factor = low + (1 - low) * 0.5 * (1 + math.cos(math.pi * t))
        if progress < self.warmup_epochs:
            factor *= 0.1 + 0.9 * progress / self.warmup_epochs
        return factor


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


def appearance_augmentation() -> Callable[[torch.Tensor], torch.Tensor]:
    """Photometric changes of the kind day/night, weather and camera exposure produce."""
    return v2.Compose([
        v2.RandomApply([v2.ColorJitter(brightness=0.6, contrast=0.5, saturation=0.6,
                                       hue=0.05)], p=0.9),
        v2.RandomApply([v2.GaussianBlur(5, sigma=(0.1, 1.5))], p=0.3),
        v2.RandomGrayscale(p=0.1),
        v2.RandomApply([v2.GaussianNoise(sigma=0.03)], p=0.3),
    ])


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


@dataclass
class SceneData:
    """What the trainer needs of one scene: training and validation datasets."""

    train: torch.utils.data.Dataset
    val: torch.utils.data.Dataset | None
    reference_poses: np.ndarray


class TrainResult(NamedTuple):
    """What :func:`train` returns: the last checkpoint, the trained model, the history."""

    checkpoint: Path
    model: ImPosing
    history: list


def train(scenes: dict[str, SceneData], out: str | Path, model_config: ModelConfig,
          train_config: TrainConfig, search_config: SearchConfig | None = None,
          resume: bool = True, backbone_weights: str | None = None,
          device: str | None = None, init_from: str | Path | None = None,
          stop_after: int | None = None) -> TrainResult:
    """Train a (multi-scene) model (see :class:`TrainResult`).

    ``out`` is a directory: ``last.pt`` (with the optimizer state, to resume) is written every
    ``checkpoint_every`` epochs and ``best.pt`` (weights only) at the best validation median
    error. An existing ``last.pt`` is resumed when ``resume`` is set (its configs must match).
    ``init_from``: a checkpoint of the same architecture whose weights and maps a new run
    starts from (a second stage with other training settings; fresh optimizer and schedule).
    ``stop_after``: stop once this many epochs of the configured schedule are done (the run
    resumes later where it stopped).
    """
    rank, world = _distributed()
    cfg = train_config
    out = Path(out)
    last = out / 'last.pt'
    device = torch.device(device or ('cuda' if torch.cuda.is_available() else 'cpu'))
    torch.manual_seed(cfg.seed)
    search_config = search_config or SearchConfig()

    history: list[dict] = []
    start_epoch = 0
    if resume and last.is_file():
        data = read_checkpoint(last)

        def same(saved, current):  # the epoch count may grow to train longer
            return {k: v for k, v in (saved or {}).items() if k != 'epochs'} == \
                {k: v for k, v in config_to_dict(current).items() if k != 'epochs'}
        if not same(data.get('train_config'), cfg) or \
                not same(data['model_config'], model_config):
            raise ValueError(f'{last}: exists with other configs; pass resume=False or another '
                             f'output directory')
        model, _ = load_model(last, device)
        start_epoch, history = int(data['epoch']), list(data.get('history', []))
        optimizer_state = data.get('optimizer')
        LOGGER.info('resuming %s at epoch %d', last, start_epoch)
    elif init_from is not None:
        model, data = load_model(init_from, device)
        if config_to_dict(model.config) != config_to_dict(model_config):
            raise ValueError(f"{init_from}: its model config differs from this run's")
        history = [dict(h, stage=str(init_from)) for h in data.get('history', [])]
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
    if set(model.scenes) != set(scenes):
        raise ValueError(f"scenes {sorted(scenes)} differ from the model's {model.scenes}")

    step = ScoreLoss(model, cfg).to(device)
    ddp = DistributedDataParallel(step, find_unused_parameters=len(scenes) > 1) \
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


def make_loaders(scenes: dict[str, SceneData], cfg, rank: int = 0,
                 world: int = 1) -> dict[str, DataLoader]:
    """Shuffled training loaders per scene, with the appearance augmentation of ``cfg``."""
    augment = appearance_augmentation() if cfg.augment else None
    loaders = {}
    for name, s in scenes.items():
        if len(s.train) == 0:
            raise ValueError(f'scene {name!r}: the training set is empty')
        if augment is not None and hasattr(s.train, 'transform'):
            s.train.transform = augment
        sampler = DistributedSampler(s.train, world, rank, seed=cfg.seed) if world > 1 else None
        loaders[name] = DataLoader(
            s.train, batch_size=cfg.batch_size, shuffle=sampler is None, sampler=sampler,
            num_workers=cfg.num_workers, drop_last=len(s.train) >= cfg.batch_size * world,
            persistent_workers=cfg.num_workers > 0,
            generator=torch.Generator().manual_seed(cfg.seed))
    return loaders


def run_epochs(model: nn.Module, forward: Callable, loaders: dict[str, DataLoader], cfg,
               out: Path, history: list, start_epoch: int, stop_after: int | None,
               optimizer_state: dict | None, end_of_epoch: Callable[[dict], dict],
               rank: int = 0, save_extra: dict | None = None) -> list:
    """The training loop shared by every method: schedule, precision, progress, checkpoints.

    ``forward(images, poses, scene, trial=False) -> (loss, stats)`` is one step's forward pass
    (its float ``stats`` are averaged over the epoch into the record; ``trial``: a step of the
    precision measurement, which must not advance training's random streams); ``cfg`` is a
    :class:`ScheduleConfig`. ``end_of_epoch(record)`` returns validation entries (on rank 0), whose
    ``val_median_m`` selects ``best.pt``. ``model`` must be saveable by
    :func:`~imposing_ros.model.checkpoint.save_checkpoint`. Returns the history.
    """
    device = next(model.parameters()).device
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    if optimizer_state is not None:
        optimizer.load_state_dict(optimizer_state)
    steps_per_epoch = sum(len(loader) for loader in loaders.values())
    precision = cfg.precision
    if precision == 'auto':
        name, (images, poses) = next(_interleave(loaders))
        images = images.to(device, memory_format=memory_format)
        precision = choose_precision(
            lambda: forward(images, poses.to(device), name, trial=True)[0], model)
    LOGGER.info('training in %s on %s (%s), %d steps an epoch', precision, device,
                'channels-last' if cfg.channels_last else 'contiguous', steps_per_epoch)
    best = min((h['val_median_m'] for h in history if 'val_median_m' in h), default=math.inf)
    end_epoch = cfg.epochs if stop_after is None else min(cfg.epochs, stop_after)
    for epoch in range(start_epoch, end_epoch):
        model.train()
        for loader in loaders.values():
            if isinstance(loader.sampler, DistributedSampler):
                loader.sampler.set_epoch(epoch)
        t0, losses, stats = time.perf_counter(), [], {}
        bar = tqdm(_interleave(loaders), desc=f'epoch {epoch + 1}/{cfg.epochs}', leave=False,
                   total=steps_per_epoch, disable=True if rank else None,
                   dynamic_ncols=True)  # None: off if no tty
        for i, (name, (images, poses)) in enumerate(bar):
            for group in optimizer.param_groups:
                group['lr'] = cfg.lr * cfg.lr_factor(epoch + i / steps_per_epoch)
            with _autocast(precision, device):
                loss, step_stats = forward(images.to(device, memory_format=memory_format),
                                           poses.to(device), name)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
            for key, value in step_stats.items():
                stats.setdefault(key, []).append(value)
            bar.set_postfix(loss=f'{losses[-1]:.4f}')
            if bar.disable and rank == 0 and len(losses) % 100 == 0:  # no tty: log progress
                elapsed = time.perf_counter() - t0
                left = elapsed / len(losses) * (steps_per_epoch * (cfg.epochs - epoch)
                                                - len(losses))
                LOGGER.info('epoch %d step %d/%d: loss %.4f, %.2f s/step, %.1f frames/s, '
                            'ETA %s', epoch + 1, len(losses), steps_per_epoch,
                            np.mean(losses[-100:]), elapsed / len(losses),
                            len(losses) * cfg.batch_size / elapsed, _hms(left))
        seconds = time.perf_counter() - t0
        record = {'epoch': epoch + 1, 'loss': float(np.mean(losses)) if losses else math.nan,
                  'seconds': seconds, 'frames_per_s': len(losses) * cfg.batch_size / seconds,
                  'lr': optimizer.param_groups[0]['lr'],
                  **{k: float(np.mean(v)) for k, v in stats.items()}}
        is_best = False
        if rank == 0:
            model.eval()
            record.update(end_of_epoch(record))
            model.train()
            if record.get('val_median_m', math.inf) < best:
                best, is_best = record['val_median_m'], True
        history.append(record)
        if rank == 0:
            LOGGER.info('epoch %d: %s', epoch + 1,
                        ', '.join(f'{k} {v:.4g}' for k, v in record.items() if k != 'epoch'))
            extra = dict(train_config=config_to_dict(cfg), epoch=epoch + 1, history=history,
                         optimizer=optimizer.state_dict(), **(save_extra or {}))
            if (epoch + 1) % cfg.checkpoint_every == 0 or epoch + 1 == cfg.epochs:
                save_checkpoint(out / 'last.pt', model, cfg.seed, **extra)
            if is_best:  # weights for use, no optimizer state: a third of the size
                save_checkpoint(out / 'best.pt', model, cfg.seed,
                                **{k: v for k, v in extra.items() if k != 'optimizer'})
    return history


def _hms(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f'{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}'


def _autocast(precision: str, device: torch.device):
    """bf16 autocast region for ``precision == 'bf16'``, else nothing."""
    if precision == 'bf16':
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def choose_precision(step: Callable[[], torch.Tensor], model: nn.Module,
                     repeats: int = 3) -> str:
    """'bf16' or 'fp32' for training ``model`` with ``step() -> loss``, by measurement on a CPU.

    CUDA: bf16 where the GPU supports it. CPU: ``repeats`` timed forward + backward passes of
    each after one warm-up, on a real batch; bf16 only if at least 10 % faster. The weights are
    not changed (gradients cleared, batch-norm statistics restored).
    """
    device = next(model.parameters()).device
    if device.type == 'cuda':
        return 'bf16' if torch.cuda.is_bf16_supported() else 'fp32'
    saved = {k: v.clone() for k, v in model.state_dict().items()}  # batch-norm statistics
    seconds = {}
    for precision in ('fp32', 'bf16'):
        times = []
        for _ in range(repeats + 1):
            t0 = time.perf_counter()
            with _autocast(precision, device):
                loss = step()
            loss.backward()
            times.append(time.perf_counter() - t0)
        model.zero_grad(set_to_none=True)
        seconds[precision] = float(np.median(times[1:]))
    model.load_state_dict(saved)
    choice = 'bf16' if seconds['bf16'] < 0.9 * seconds['fp32'] else 'fp32'
    LOGGER.info('training precision by measurement: fp32 %.3f s, bf16 %.3f s a step -> %s',
                seconds['fp32'], seconds['bf16'], choice)
    return choice


def _interleave(loaders: dict[str, DataLoader]):
    """Batches ``(scene, batch)`` of every scene, alternating scenes, loaded lazily."""
    iterators = {name: iter(loader) for name, loader in loaders.items()}
    while iterators:
        for name in list(iterators):
            batch = next(iterators[name], None)
            if batch is None:
                del iterators[name]
            else:
                yield name, batch


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
