"""The two baselines' networks: image retrieval (GeM descriptor) and absolute pose regression.

Both use ImPosing's image encoder (:class:`~imposing_ros.model.encoders.ImageEncoder`: the same
ResNet, input size and ImageNet normalisation) so that a comparison measures the methods, not
the backbones. They keep ImPosing's checkpoint format (``method`` names the kind) and a
:class:`~imposing_ros.model.imposing.SceneMap` per scene for the position normalisation.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn

from imposing_ros.config import config_from_dict
from imposing_ros.geometry import canonical_quat
from imposing_ros.model.checkpoint import CheckpointError, read_checkpoint
from imposing_ros.model.encoders import ImageEncoder, ModelConfig
from imposing_ros.model.imposing import SceneMap

METHODS = ('retrieval', 'apr')


@dataclass(frozen=True)
class BaselineConfig:
    """Architecture of a baseline; saved in its checkpoint as ``model_config``."""

    # 'retrieval' (GeM descriptor, nearest database image) or 'apr' (PoseNet-style regression).
    method: str = 'retrieval'
    backbone: str = 'resnet18'
    image_size: tuple[int, int] = (68, 120)
    # Retrieval: descriptor width. APR: width of the hidden layer before the pose heads.
    dim: int = 256
    # Initial exponent of the generalised-mean pooling (Radenovic et al. 2018), learned.
    gem_p: float = 3.0

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f'method must be one of {METHODS}, got {self.method!r}')
        if self.gem_p < 1:
            raise ValueError(f'gem_p must be >= 1, got {self.gem_p}')
        self.encoder_config()  # validates backbone, dim, image_size

    def encoder_config(self) -> ModelConfig:
        """ImPosing's ModelConfig for the shared image encoder."""
        return replace(ModelConfig(), backbone=self.backbone, dim=self.dim,
                       image_size=tuple(self.image_size))


class GeM(nn.Module):
    """Generalised-mean pooling ``[B, C, H, W] -> [B, C, 1, 1]`` with a learned exponent.

    torchvision has no GeM layer; this is the three-line formula of Radenovic et al.
    """

    def __init__(self, p: float, eps: float = 1e-6):
        super().__init__()
        self.p = nn.Parameter(torch.tensor(float(p)))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled ``[B, C, 1, 1]`` (computed in float32: the power overflows bf16)."""
        p = self.p.float()
        pooled = x.float().clamp(min=self.eps).pow(p).mean(dim=(-2, -1), keepdim=True)
        return pooled.pow(1.0 / p).to(x.dtype)


class Baseline(nn.Module):
    """Common part: the image encoder, the maps, the method's name."""

    def __init__(self, config: BaselineConfig, maps: dict[str, SceneMap]):
        super().__init__()
        if len(maps) != 1:
            raise ValueError(f'baselines are single-scene, got scenes {sorted(maps)}')
        self.config = config
        self.maps = dict(maps)
        self.scene = next(iter(maps))
        self.encoder = ImageEncoder(config.encoder_config(), [self.scene])

    @property
    def method(self) -> str:
        """Checkpoint ``method`` key."""
        return self.config.method

    @property
    def scenes(self) -> list[str]:
        """Scene names (one)."""
        return [self.scene]

    def default_scene(self, scene: str | None = None) -> str:
        """The model's scene; another name is refused."""
        if scene not in (None, self.scene):
            raise ValueError(f'unknown scene {scene!r}; this model has {self.scenes}')
        return self.scene


class RetrievalNet(Baseline):
    """Global descriptor: ResNet with GeM pooling, a linear head, L2-normalised ``[B, dim]``.

    The database (descriptors and poses of the reference images) is kept in buffers, so a
    checkpoint is a complete retrieval map; it is empty until
    :meth:`set_database` fills it after training.
    """

    def __init__(self, config: BaselineConfig, maps: dict[str, SceneMap],
                 database_size: int = 0):
        super().__init__(config, maps)
        self.encoder.backbone.avgpool = GeM(config.gem_p)
        self.register_buffer('db_descriptors', torch.zeros(database_size, config.dim))
        self.register_buffer('db_poses', torch.zeros(database_size, 7))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Unit descriptors ``[B, dim]`` of ``images [B, 3, H, W]`` in [0, 1]."""
        return nn.functional.normalize(self.encoder(images, self.scene).float(), dim=-1)

    def set_database(self, descriptors: torch.Tensor, poses: torch.Tensor) -> None:
        """Store the reference descriptors ``[M, dim]`` and their poses ``[M, 7]``."""
        if descriptors.ndim != 2 or descriptors.shape[1] != self.config.dim or \
                poses.shape != (len(descriptors), 7):
            raise ValueError(f'database must be [M, {self.config.dim}] descriptors and [M, 7] '
                             f'poses, got {tuple(descriptors.shape)} and {tuple(poses.shape)}')
        self.db_descriptors = descriptors.float().to(self.db_descriptors.device)
        self.db_poses = poses.float().to(self.db_poses.device)


class PoseRegressor(Baseline):
    """PoseNet-style regression: features -> hidden layer -> position and quaternion.

    Positions are regressed in the map's normalised frame (the loss compares them in metres);
    the quaternion (x, y, z, w) is normalised and made sign-canonical. ``log_var_t`` and
    ``log_var_q`` are the learned loss weights of Kendall & Cipolla (2017), initialised as they
    advise (0 and -3).
    """

    def __init__(self, config: BaselineConfig, maps: dict[str, SceneMap]):
        super().__init__(config, maps)
        self.dropout = nn.Dropout(0.3)
        self.position = nn.Linear(config.dim, 3)
        self.rotation = nn.Linear(config.dim, 4)
        self.log_var_t = nn.Parameter(torch.tensor(0.0))
        self.log_var_q = nn.Parameter(torch.tensor(-3.0))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Poses ``[B, 7]`` with normalised positions for ``images [B, 3, H, W]`` in [0, 1]."""
        hidden = self.dropout(torch.relu(self.encoder(images, self.scene))).float()
        quat = canonical_quat(nn.functional.normalize(self.rotation(hidden), dim=-1))
        return torch.cat([self.position(hidden), quat], dim=-1)

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Poses ``[B, 7]`` in metres (T_map_camera)."""
        return self.maps[self.scene].normalization.denormalize(self(images))


def load_baseline(path, device: str | torch.device = 'cpu') -> tuple[Baseline, dict]:
    """Rebuild the baseline of checkpoint ``path`` in eval mode; return it and the raw dict."""
    data = read_checkpoint(path)
    if data.get('method') not in METHODS:
        raise CheckpointError(f"checkpoint {path}: method {data.get('method', 'imposing')!r} "
                              f"is not a baseline ({', '.join(METHODS)})")
    state = {k: v.float() if v.is_floating_point() else v for k, v in data['state_dict'].items()}
    try:
        config = config_from_dict(BaselineConfig, data['model_config'], where=str(path))
        maps = {name: SceneMap.from_dict(m) for name, m in data['scenes'].items()}
        model = build_baseline(config, maps, state)
        model.load_state_dict(state, strict=True)
    except (ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise CheckpointError(f'checkpoint {path}: invalid baseline: {str(exc)[:400]}') from exc
    return model.to(device).eval(), data


def build_baseline(config: BaselineConfig, maps: dict[str, SceneMap],
                   state_dict: dict | None = None) -> Baseline:
    """The network of ``config`` (with the database size of ``state_dict`` for retrieval)."""
    if config.method == 'retrieval':
        size = len(state_dict['db_descriptors']) if state_dict else 0
        return RetrievalNet(config, maps, size)
    return PoseRegressor(config, maps)
