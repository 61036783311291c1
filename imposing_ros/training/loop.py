"""The training loop every method shares (ImPosing's and the baselines').

Schedule (warm-up, cosine), precision chosen by measurement, channels-last images, progress log
with an ETA, per-epoch records, ``last.pt`` (resumable) and ``best.pt`` (weights only, at the
best validation median). A method brings its forward pass and its validation
(:func:`run_epochs`); :mod:`imposing_ros.training.trainer` is ImPosing's.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
import logging
import math
from pathlib import Path
import time
from typing import Callable, NamedTuple

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler, WeightedRandomSampler
from torchvision.transforms import v2
from tqdm import tqdm

from imposing_ros.config import config_to_dict
from imposing_ros.model.checkpoint import read_checkpoint, save_checkpoint
from imposing_ros.runtime.backends import cpu_has_native_bf16

LOGGER = logging.getLogger('imposing_ros.training')
LR_SCHEDULES = ('constant', 'cosine')
PRECISIONS = ('auto', 'fp32', 'bf16')


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
    # Sampling weight of the frames taken in a turn (imposing_ros.geometry.turning: street
    # corners) relative to the others; 1 samples uniformly. An epoch keeps its length (frames
    # drawn with replacement). Corners are a few frames per drive whose view changes fast, and
    # they held most of the large errors of the demo model (docs/training.md).
    turn_weight: float = 1.0
    # Training frames drawn from each scene per epoch; 0: every frame of every scene. With
    # several scenes of unequal size it balances them: a larger scene gives a new random subset
    # each epoch, a smaller one is drawn with replacement. One epoch is then
    # scene_frames x scenes frames, whatever the scenes' sizes.
    scene_frames: int = 0
    # Validate (median error on held-out frames) every N epochs; 0 = never.
    val_every: int = 5
    val_frames: int = 64
    # Write last.pt every N epochs (and at the run's last epoch, also with stop_after): a
    # ResNet18 checkpoint with Adam's state is ~135 MB, half a second, which short epochs feel.
    checkpoint_every: int = 1
    num_workers: int = 0
    seed: int = 0

    def __post_init__(self):
        if min(self.epochs, self.batch_size, self.checkpoint_every) < 1:
            raise ValueError('epochs, batch_size and checkpoint_every must be >= 1')
        if not 0 < self.lr < 1:
            raise ValueError(f'lr must be in (0, 1), got {self.lr}')
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f'lr_schedule must be one of {LR_SCHEDULES}, got '
                             f'{self.lr_schedule!r}')
        if not 0 < self.lr_final_fraction <= 1 or self.warmup_epochs < 0:
            raise ValueError('lr_final_fraction must be in (0, 1] and warmup_epochs >= 0')
        if self.turn_weight <= 0:
            raise ValueError(f'turn_weight must be > 0, got {self.turn_weight}')
        if self.scene_frames < 0:
            raise ValueError(f'scene_frames must be >= 0 (0: every frame), got '
                             f'{self.scene_frames}')
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


def appearance_augmentation() -> Callable[[torch.Tensor], torch.Tensor]:
    """Photometric changes of the kind day/night, weather and camera exposure produce."""
    return v2.Compose([
        v2.RandomApply([v2.ColorJitter(brightness=0.6, contrast=0.5, saturation=0.6,
                                       hue=0.05)], p=0.9),
        v2.RandomApply([v2.GaussianBlur(5, sigma=(0.1, 1.5))], p=0.3),
        v2.RandomGrayscale(p=0.1),
        v2.RandomApply([v2.GaussianNoise(sigma=0.03)], p=0.3),
    ])


@dataclass
class SceneData:
    """What the trainer needs of one scene: training and validation datasets.

    ``turning``: bool per training sample, taken in a turn (for ``turn_weight``); None: unknown.
    """

    train: torch.utils.data.Dataset
    val: torch.utils.data.Dataset | None
    reference_poses: np.ndarray
    turning: np.ndarray | None = None


class TrainResult(NamedTuple):
    """What a training run returns: the last checkpoint, the trained model, the history."""

    checkpoint: Path
    model: nn.Module
    history: list


def read_resumable(last: Path, train_config, model_config) -> dict:
    """The checkpoint ``last`` to resume, refused when it was made with other configs.

    The epoch count may differ (a run may be continued for longer).
    """
    data = read_checkpoint(last)

    def same(saved, current):
        return {k: v for k, v in (saved or {}).items() if k != 'epochs'} == \
            {k: v for k, v in config_to_dict(current).items() if k != 'epochs'}
    if not same(data.get('train_config'), train_config) or \
            not same(data['model_config'], model_config):
        raise ValueError(f'{last}: exists with other configs; pass resume=False (--no-resume) '
                         f'or another output directory')
    return data


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
        draws = cfg.scene_frames or len(s.train)
        if (cfg.turn_weight != 1.0 or cfg.scene_frames) and world > 1:
            raise ValueError('turn_weight and scene_frames are not supported with several '
                             'processes yet')
        generator = torch.Generator().manual_seed(cfg.seed)
        if cfg.turn_weight != 1.0:
            if s.turning is None or len(s.turning) != len(s.train):
                raise ValueError(f'scene {name!r}: turn_weight needs which training frames turn')
            weights = np.where(s.turning, cfg.turn_weight, 1.0)
            sampler = WeightedRandomSampler(weights, draws, replacement=True, generator=generator)
            LOGGER.info('scene %s: %d of %d training frames turn, sampled %.3g x as often '
                        '(%.0f %% of the draws)', name, int(s.turning.sum()), len(weights),
                        cfg.turn_weight, 100 * weights[s.turning].sum() / weights.sum())
        elif cfg.scene_frames:
            sampler = RandomSampler(s.train, replacement=draws > len(s.train),
                                    num_samples=draws, generator=generator)
        if cfg.scene_frames:
            LOGGER.info('scene %s: %d training frames drawn an epoch from %d', name, draws,
                        len(s.train))
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
    # The fused kernel: one pass over all parameters instead of a loop of small ops (ResNet18,
    # 2-core AMD EPYC AVX2: 11 ms an optimizer step against 76 ms).
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr,
                                 fused=device.type in ('cpu', 'cuda'))
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
            if (epoch + 1) % cfg.checkpoint_every == 0 or epoch + 1 == end_epoch:
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
    not changed (gradients cleared, batch-norm statistics restored). Where oneDNN has no bf16
    kernels at all (AVX2 CPUs) there is nothing to time: fp32, as the inference backends decide.
    """
    device = next(model.parameters()).device
    if device.type == 'cuda':
        return 'bf16' if torch.cuda.is_bf16_supported() else 'fp32'
    if not cpu_has_native_bf16():
        LOGGER.info('training precision: fp32 (this CPU has no bf16 kernels)')
        return 'fp32'
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
