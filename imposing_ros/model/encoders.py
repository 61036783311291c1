"""Image encoder f_I, pose encoder f_M and the similarity score (paper section 3.1)."""

from __future__ import annotations

from dataclasses import dataclass
import logging
import math
from pathlib import Path

import torch
from torch import nn
import torchvision

from imposing_ros.geometry import canonical_poses

LOGGER = logging.getLogger('imposing_ros.model')

BACKBONES = {'resnet18': 512, 'resnet34': 512, 'resnet50': 2048}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of an ImPosing model; saved in every checkpoint and rebuilt from it."""

    # torchvision ResNet of the image encoder: resnet18, resnet34 (paper) or resnet50.
    backbone: str = 'resnet34'
    # Latent dimension d shared by image and pose codes (paper: 256).
    dim: int = 256
    # Network input (height, width) in pixels (paper: 135 x 240).
    image_size: tuple[int, int] = (135, 240)
    # Fourier frequencies per pose component: k = 0 .. fourier_frequencies - 1 (paper: 0..10).
    fourier_frequencies: int = 11
    # Linear layers of the pose MLP, all of width pose_width, ReLU after all but the last
    # (paper: 4 layers of 256; its supplementary A found 2 layers, one hidden, better).
    pose_layers: int = 4
    pose_width: int = 256

    def __post_init__(self):
        if self.backbone not in BACKBONES:
            raise ValueError(f'backbone must be one of {sorted(BACKBONES)}, got {self.backbone!r}')
        if self.dim < 1 or self.pose_width < 1 or self.pose_layers < 1:
            raise ValueError('dim, pose_width and pose_layers must be positive')
        if len(self.image_size) != 2 or min(self.image_size) < 16:
            raise ValueError(f'image_size must be (height, width) >= 16, got {self.image_size}')
        if self.fourier_frequencies < 0:
            raise ValueError('fourier_frequencies must be >= 0')


class ImageEncoder(nn.Module):
    """ResNet backbone, global average pooling and one linear head per scene.

    Input ``images [B, 3, H, W]``: RGB in [0, 1]; ImageNet normalisation happens inside, so every
    backend exported from this module sees the same input. Output ``[B, dim]`` (not normalised).
    Multi-scene models (paper 4.2) share the backbone and keep one head per scene.
    """

    def __init__(self, config: ModelConfig, scenes: list[str]):
        super().__init__()
        resnet = getattr(torchvision.models, config.backbone)(weights=None)
        resnet.fc = nn.Identity()  # keep conv layers and global average pooling
        self.backbone = resnet
        self.feature_dim, self.dim = BACKBONES[config.backbone], config.dim
        self.heads = nn.ModuleDict({s: nn.Linear(self.feature_dim, self.dim) for s in scenes})
        self.register_buffer('mean', torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), False)
        self.register_buffer('std', torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), False)
        self.backbone_frozen = False

    def add_head(self, scene: str) -> None:
        """A freshly initialised head for a new scene."""
        device = self.mean.device
        self.heads[scene] = nn.Linear(self.feature_dim, self.dim).to(device)

    def freeze_backbone(self) -> None:
        """Keep the backbone as it is while training: no gradient, batch-norm statistics fixed.

        Training then changes the heads only (and the pose encoders): the features every scene
        shares stay the same, so adding a scene leaves the others' results unchanged.
        """
        self.backbone_frozen = True
        self.backbone.requires_grad_(False)
        self.backbone.eval()

    def train(self, mode: bool = True) -> ImageEncoder:
        """As :meth:`nn.Module.train`; a frozen backbone stays in eval mode."""
        super().train(mode)
        if self.backbone_frozen:
            self.backbone.eval()
        return self

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Pooled backbone features ``[B, C]``."""
        return self.backbone((images - self.mean) / self.std)

    def forward(self, images: torch.Tensor, scene: str) -> torch.Tensor:
        """Image codes ``[B, dim]`` for ``images [B, 3, H, W]`` of ``scene``."""
        return self.heads[scene](self.features(images))

    def load_backbone_weights(self, path: str | Path) -> None:
        """Initialise the backbone from a local torchvision state dict (never downloads).

        The classifier (``fc.*``) of an ImageNet file is dropped; every other key must match.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f'backbone weights file not found: {path}')
        try:
            state = torch.load(path, map_location='cpu', weights_only=True)
        except Exception as exc:
            raise ValueError(f'cannot read backbone weights {path}: {exc}') from exc
        state = {k: v for k, v in state.items() if not k.startswith('fc.')}
        try:
            self.backbone.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise ValueError(f'backbone weights {path} do not match the backbone: {exc}') from exc
        LOGGER.info('initialised backbone from %s', path)


class FourierFeatures(nn.Module):
    """Fourier features of every pose component (Tancik et al., paper ref. 48).

    Exact formula, per component x: ``(x, sin(2^k pi x), cos(2^k pi x)) for k = 0 .. F-1``.
    The paper writes ``sin(2kx)``; powers of two are what Tancik et al. and NeRF use, and with
    positions normalised to [-0.5, 0.5] and F = 11 the finest wavelength is 2 / 1024 of the map
    extent (about 2 m for a 1 km map). Output width: ``7 * (1 + 2F)`` (161 for F = 11).
    """

    def __init__(self, frequencies: int):
        super().__init__()
        self.register_buffer('freqs', math.pi * 2.0 ** torch.arange(frequencies), False)

    @property
    def out_features(self) -> int:
        """Width of the output for a 7-vector pose."""
        return 7 * (1 + 2 * self.freqs.numel())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [..., 7]`` -> ``[..., 7 * (1 + 2F)]``."""
        angles = x[..., None] * self.freqs  # [..., 7, F]
        feats = torch.cat([x[..., None], angles.sin(), angles.cos()], dim=-1)
        return feats.flatten(-2)


class PoseEncoder(nn.Module):
    """f_M: Fourier features then an MLP; input poses with *normalised* positions.

    ``forward(poses [..., 7]) -> [..., dim]``. Quaternions are made sign-canonical first: q and -q
    are one rotation and must get one code.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.fourier = FourierFeatures(config.fourier_frequencies)
        layers: list[nn.Module] = []
        width_in = self.fourier.out_features
        for i in range(config.pose_layers):
            last = i == config.pose_layers - 1
            layers.append(nn.Linear(width_in, config.dim if last else config.pose_width))
            if not last:
                layers.append(nn.ReLU(inplace=True))
            width_in = config.pose_width
        self.mlp = nn.Sequential(*layers)

    def forward(self, poses: torch.Tensor) -> torch.Tensor:
        """Pose codes ``[..., dim]`` for normalised poses ``[..., 7]``."""
        return self.mlp(self.fourier(canonical_poses(poses)))


def cosine(image_codes: torch.Tensor, pose_codes: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of image and pose codes, in [-1, 1].

    Args:
        image_codes: ``[B, d]``.
        pose_codes: ``[N, d]`` (shared by all images) or ``[B, N, d]``.

    Returns:
        ``[B, N]`` cosines.
    """
    image = nn.functional.normalize(image_codes, dim=-1)
    poses = nn.functional.normalize(pose_codes, dim=-1)
    if poses.ndim == 2:
        return image @ poses.transpose(0, 1)
    return torch.einsum('bd,bnd->bn', image, poses)


def similarity(image_codes: torch.Tensor, pose_codes: torch.Tensor) -> torch.Tensor:
    """Score of eq. 1: ReLU of the :func:`cosine` similarity, ``[B, N]`` in [0, 1]."""
    return cosine(image_codes, pose_codes).relu()
