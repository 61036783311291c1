"""Training of the baselines with ImPosing's loop (:func:`imposing_ros.training.loop.run_epochs`).

Same data, augmentation, schedule, precision choice, progress log and checkpoints as ImPosing:
what differs is the loss.

* retrieval: InfoNCE over a batch of (anchor, positive) pairs. A positive is another training
  frame within ``positive_m`` and ``positive_deg`` of the anchor (pose-defined, as NetVLAD's
  training); every other frame of the batch farther than ``negative_m`` is a negative, frames in
  between are left out of the softmax. At the end of a run the descriptors of every training
  frame become the database (stored in ``last.pt``).
* apr: L1 position (normalised map frame) and quaternion errors weighted by learned
  homoscedastic uncertainties (Kendall & Cipolla 2017).
"""

from __future__ import annotations

from dataclasses import dataclass
import logging
import math
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, RandomSampler

from imposing_ros.baselines.models import (
    Baseline,
    BaselineConfig,
    build_baseline,
    load_baseline,
    RetrievalNet,
)
from imposing_ros.model.checkpoint import read_checkpoint, save_checkpoint
from imposing_ros.training.loop import (
    appearance_augmentation,
    make_loaders,
    read_resumable,
    run_epochs,
    SceneData,
    ScheduleConfig,
    TrainResult,
)
from imposing_ros.training.trainer import build_scene_map
from imposing_ros.utils import resolve_device

LOGGER = logging.getLogger('imposing_ros.training')


@dataclass(frozen=True)
class BaselineTrainConfig(ScheduleConfig):
    """Baseline training: ImPosing's schedule fields plus the retrieval loss settings."""

    # Retrieval: a positive lies within positive_m and positive_deg of its anchor, a negative
    # farther than negative_m; temperature of the InfoNCE softmax.
    positive_m: float = 5.0
    positive_deg: float = 30.0
    negative_m: float = 25.0
    temperature: float = 0.05
    # Retrieval validation: database of every N-th training frame (the final one holds all).
    val_database_stride: int = 4

    def __post_init__(self):
        super().__post_init__()
        if not 0 < self.positive_m < self.negative_m:
            raise ValueError('need 0 < positive_m < negative_m')
        if self.temperature <= 0 or self.val_database_stride < 1 or self.batch_size < 2:
            raise ValueError('temperature must be > 0, val_database_stride >= 1, '
                             'batch_size >= 2')


def positive_pairs(poses: np.ndarray, max_m: float, max_deg: float,
                   chunk: int = 2048) -> list[np.ndarray]:
    """For each pose ``[M, 7]``, the indices of the other poses within ``max_m`` / ``max_deg``."""
    poses_t = torch.as_tensor(np.asarray(poses), dtype=torch.float32)
    positions, quats = poses_t[:, :3], nn.functional.normalize(poses_t[:, 3:], dim=-1)
    cos_half = math.cos(math.radians(max_deg) / 2)
    out = []
    for start in range(0, len(poses_t), chunk):
        near = torch.cdist(positions[start:start + chunk], positions) < max_m
        near &= (quats[start:start + chunk] @ quats.T).abs() > cos_half
        for row, i in enumerate(range(start, min(start + chunk, len(poses_t)))):
            near[row, i] = False
            out.append(near[row].nonzero().flatten().numpy())
    return out


class PairedImages(torch.utils.data.Dataset):
    """``(images [2, 3, H, W], poses [2, 7])``: a frame and a random positive of it."""

    def __init__(self, base, positives: list[np.ndarray], seed: int):
        self.base, self.positives = base, positives
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        candidates = self.positives[i]
        j = int(self.rng.choice(candidates)) if len(candidates) else i
        (a, pa), (b, pb) = self.base[i], self.base[j]
        return torch.stack([a, b]), torch.stack([pa, pb])


def _pair_collate(batch):
    """Anchors first, then their positives in the same order: ``[B, ...]`` with B = 2 x pairs."""
    images = torch.stack([b[0] for b in batch], dim=1).flatten(0, 1)
    poses = torch.stack([b[1] for b in batch], dim=1).flatten(0, 1)
    return images, poses


def retrieval_loss(descriptors: torch.Tensor, poses: torch.Tensor,
                   cfg: BaselineTrainConfig) -> tuple[torch.Tensor, float]:
    """InfoNCE of unit ``descriptors [B, d]`` ordered as :func:`_pair_collate`; and accuracy."""
    batch = len(descriptors)
    half = batch // 2
    logits = descriptors @ descriptors.T / cfg.temperature
    target = (torch.arange(batch, device=logits.device) + half) % batch
    excluded = torch.cdist(poses[:, :3].float(), poses[:, :3].float()) < cfg.negative_m
    excluded[torch.arange(batch), target] = False
    excluded.fill_diagonal_(True)
    logits = logits.masked_fill(excluded, -math.inf)
    loss = nn.functional.cross_entropy(logits, target)
    accuracy = float((logits.argmax(dim=1) == target).float().mean())
    return loss, accuracy


def apr_loss(model, predicted: torch.Tensor, poses: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """Kendall & Cipolla's learned weighting of L1 position (metres) and quaternion errors.

    The quaternion error does not depend on the sign of the true quaternion.

    The position error is taken in metres, as in their paper and its initial weights: in
    normalised map units it is ``scale`` times smaller and the rotation term takes the
    backbone over (measured: 40 m median on a 200 m road where metres gave a few).
    """
    normalization = model.maps[model.scene].normalization
    truth = normalization.normalize(poses.float())
    loss_t = (predicted[:, :3] - truth[:, :3]).abs().sum(dim=-1).mean() * normalization.scale
    # q and -q are one rotation: the error is to the nearer of the two (a fixed sign, w >= 0,
    # would jump for headings near 180 deg, where w changes sign).
    q = truth[:, 3:]
    loss_q = torch.minimum((predicted[:, 3:] - q).abs().sum(dim=-1),
                           (predicted[:, 3:] + q).abs().sum(dim=-1)).mean()
    loss = (loss_t * torch.exp(-model.log_var_t) + model.log_var_t
            + loss_q * torch.exp(-model.log_var_q) + model.log_var_q)
    return loss, {'loss_t_m': float(loss_t.detach()), 'loss_q': float(loss_q.detach())}


@torch.no_grad()
def descriptors_of(model, dataset, batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Descriptors ``[M, d]`` and poses ``[M, 7]`` of every frame of ``dataset``."""
    device = next(model.parameters()).device
    model.eval()
    codes, poses = [], []
    for images, pose in DataLoader(dataset, batch_size=batch_size):
        codes.append(model(images.to(device)).cpu())
        poses.append(pose)
    return torch.cat(codes), torch.cat(poses)


def train_baseline(scenes: dict[str, SceneData], out: str | Path, model_config: BaselineConfig,
                   train_config: BaselineTrainConfig, resume: bool = True,
                   backbone_weights: str | None = None, device: str | None = None,
                   stop_after: int | None = None) -> TrainResult:
    """Train a retrieval or APR baseline on one scene; ``out`` as :func:`train`'s."""
    from imposing_ros.localization.search import SearchConfig

    if len(scenes) != 1:
        raise ValueError(f'baselines train on one scene, got {sorted(scenes)}')
    scene, data = next(iter(scenes.items()))
    cfg, out = train_config, Path(out)
    last = out / 'last.pt'
    device = torch.device(resolve_device(device))
    torch.manual_seed(cfg.seed)
    history, start_epoch, optimizer_state = [], 0, None
    if resume and last.is_file():
        saved = read_resumable(last, cfg, model_config)
        model, _ = load_baseline(last, device)
        start_epoch, history = int(saved['epoch']), list(saved.get('history', []))
        optimizer_state = saved.get('optimizer')
        LOGGER.info('resuming %s at epoch %d', last, start_epoch)
    else:
        maps = {scene: build_scene_map(data.reference_poses, SearchConfig().num_candidates,
                                       cfg.seed)}
        model = build_baseline(model_config, maps)
        if backbone_weights:
            model.encoder.load_backbone_weights(backbone_weights)
        model = model.to(device)

    if model_config.method == 'retrieval':
        loaders = {scene: _pair_loader(data, cfg)}

        def forward(images, poses, scene, trial=False):
            loss, accuracy = retrieval_loss(model(images), poses.to(images.device), cfg)
            return loss, {'pair_accuracy': accuracy}
    else:
        loaders = make_loaders(scenes, cfg)

        def forward(images, poses, scene, trial=False):
            return apr_loss(model, model(images), poses)

    def end_of_epoch(record: dict) -> dict:
        if cfg.val_every and record['epoch'] % cfg.val_every == 0 and data.val is not None:
            return _validate(model, data, cfg)
        return {}

    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model.to(memory_format=memory_format)
    history = run_epochs(model, forward, loaders, cfg, out, history, start_epoch, stop_after,
                         optimizer_state, end_of_epoch)
    model.to(memory_format=torch.contiguous_format)
    if model_config.method == 'retrieval' and last.is_file():
        _store_database(model, data, last)
    return TrainResult(last, model, history)


def _pair_loader(data: SceneData, cfg: BaselineTrainConfig) -> DataLoader:
    """Batches of ``batch_size`` images: half anchors, half their positives.

    An epoch sees as many images as there are training frames (ImPosing's epoch).
    """
    base = data.train
    if cfg.augment and hasattr(base, 'transform'):
        base.transform = appearance_augmentation()
    poses = np.stack([base.cache.poses[int(j)] for j in base.indices])
    positives = positive_pairs(poses, cfg.positive_m, cfg.positive_deg)
    LOGGER.info('retrieval pairs: %d of %d frames have a positive within %.0f m / %.0f deg',
                sum(len(p) > 0 for p in positives), len(positives), cfg.positive_m,
                cfg.positive_deg)
    pairs = PairedImages(base, positives, cfg.seed)
    sampler = RandomSampler(pairs, num_samples=len(pairs) // 2,
                            generator=torch.Generator().manual_seed(cfg.seed))
    return DataLoader(pairs, batch_size=cfg.batch_size // 2, sampler=sampler,
                      num_workers=cfg.num_workers, collate_fn=_pair_collate, drop_last=True)


def _plain(dataset):
    """The same frames without augmentation (for databases and validation)."""
    from imposing_ros.data.cache import CachedPosedImages

    return CachedPosedImages(dataset.cache, dataset.indices)


@torch.no_grad()
def _validate(model: Baseline, data: SceneData, cfg: BaselineTrainConfig) -> dict:
    """Median translation / rotation error on ``val_frames`` held-out frames."""
    from imposing_ros.evaluation.metrics import pose_errors

    val = _plain(data.val)
    count = min(cfg.val_frames, len(val))
    index = np.linspace(0, len(val) - 1, count).round().astype(int)
    subset = torch.utils.data.Subset(val, index.tolist())
    device = next(model.parameters()).device
    if model.method == 'retrieval':
        train = _plain(data.train)
        database = torch.utils.data.Subset(train, range(0, len(train), cfg.val_database_stride))
        db_codes, db_poses = descriptors_of(model, database)
        codes, truth = descriptors_of(model, subset)
        estimate = db_poses[(codes @ db_codes.T).argmax(dim=1)]
    else:
        images = torch.stack([val[i][0] for i in index]).to(device)
        truth = torch.stack([val[i][1] for i in index])
        estimate = model.predict(images).cpu()
    et, er = pose_errors(estimate, truth)
    return {'val_median_m': float(et.median()), 'val_median_deg': float(er.median())}


def _store_database(model: RetrievalNet, data: SceneData, last: Path) -> None:
    """Descriptors of every training frame into ``last.pt`` (the retrieval map)."""
    codes, poses = descriptors_of(model, _plain(data.train))
    model.set_database(codes, poses)
    saved = read_checkpoint(last)
    extra = {k: v for k, v in saved.items() if k not in (
        'format', 'code_version', 'method', 'model_config', 'scenes', 'state_dict', 'seed')}
    save_checkpoint(last, model, saved['seed'], **extra)
    LOGGER.info('retrieval database: %d descriptors stored in %s', len(codes), last)
