"""The ImPosing model: a shared image encoder and, per scene, a map (pose encoder + reference).

The map of a scene is its pose encoder's weights plus a normalisation and the initial candidate
poses: its size does not grow with the number of reference images.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from imposing_ros.geometry import canonical_poses, check_poses, MapNormalization
from imposing_ros.model.encoders import ImageEncoder, ModelConfig, PoseEncoder, similarity


@dataclass
class SceneMap:
    """What the model knows of one scene besides its weights.

    ``initial_poses [N, 7]``: level-0 candidates in metres (T_map_camera), drawn from the reference
    poses (or a grid). ``normalization``: positions -> [-0.5, 0.5].
    """

    normalization: MapNormalization
    initial_poses: torch.Tensor

    def __post_init__(self):
        check_poses(self.initial_poses, 'initial_poses')
        if self.initial_poses.ndim != 2:
            shape = tuple(self.initial_poses.shape)
            raise ValueError(f'initial_poses must be [N, 7], got {shape}')
        self.initial_poses = canonical_poses(self.initial_poses.float())

    def to_dict(self) -> dict:
        """Checkpoint form."""
        return {'normalization': self.normalization.to_dict(),
                'initial_poses': self.initial_poses.cpu()}

    @classmethod
    def from_dict(cls, data: dict) -> SceneMap:
        """Inverse of :meth:`to_dict`."""
        return cls(MapNormalization.from_dict(data['normalization']), data['initial_poses'])


class ImPosing(nn.Module):
    """Image encoder shared by all scenes, one pose encoder (and image head) per scene."""

    def __init__(self, config: ModelConfig, maps: dict[str, SceneMap]):
        super().__init__()
        if not maps:
            raise ValueError('an ImPosing model needs at least one scene map')
        self.config = config
        self.maps = dict(maps)
        self.image_encoder = ImageEncoder(config, list(maps))
        self.pose_encoders = nn.ModuleDict({s: PoseEncoder(config) for s in maps})

    def add_scene(self, name: str, scene_map: SceneMap) -> None:
        """A new scene with a freshly initialised image head and pose encoder (paper 4.2).

        The backbone and the other scenes are unchanged: a trained model learns another map.
        """
        if name in self.maps:
            raise ValueError(f'the model already has scene {name!r}')
        device = next(self.parameters()).device
        self.maps[name] = scene_map
        self.image_encoder.add_head(name)
        self.pose_encoders[name] = PoseEncoder(self.config).to(device)

    @property
    def scenes(self) -> list[str]:
        """Scene names, in checkpoint order."""
        return list(self.maps)

    def default_scene(self, scene: str | None = None) -> str:
        """``scene`` checked, or the only scene of a single-scene model."""
        if scene is None:
            if len(self.maps) != 1:
                raise ValueError(f'model has scenes {self.scenes}: name one')
            return self.scenes[0]
        if scene not in self.maps:
            raise ValueError(f'unknown scene {scene!r}; model has {self.scenes}')
        return scene

    def encode_images(self, images: torch.Tensor, scene: str | None = None) -> torch.Tensor:
        """``images [B, 3, H, W]`` RGB in [0, 1] -> codes ``[B, d]``."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f'images must be [B, 3, H, W], got {tuple(images.shape)}')
        return self.image_encoder(images, self.default_scene(scene))

    def encode_poses(self, poses: torch.Tensor, scene: str | None = None) -> torch.Tensor:
        """Poses in metres ``[..., 7]`` -> codes ``[..., d]`` (normalisation applied here)."""
        scene = self.default_scene(scene)
        return self.pose_encoders[scene](self.maps[scene].normalization.normalize(poses))

    def score(self, image_codes: torch.Tensor, pose_codes: torch.Tensor) -> torch.Tensor:
        """Eq. 1, see :func:`imposing_ros.model.encoders.similarity`."""
        return similarity(image_codes, pose_codes)
