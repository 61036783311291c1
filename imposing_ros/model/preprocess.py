"""Camera image -> network input: the one preprocessing of training tools, backends and nodes."""

from __future__ import annotations

import numpy as np
import torch


def preprocess(image: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """``[H, W, 3]`` uint8 RGB -> ``[1, 3, h, w]`` float in [0, 1] at ``size = (h, w)``."""
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f'image must be an [H, W, 3] RGB array, got '
                         f'{getattr(image, "shape", type(image).__name__)}')
    if image.dtype != np.uint8:
        raise ValueError(f'image must be uint8, got {image.dtype}')
    if min(image.shape[:2]) < 8:
        raise ValueError(f'image is too small: {image.shape[1]}x{image.shape[0]} pixels')
    # np.require copies read-only arrays (decoded images often are): torch wants writable memory.
    array = np.require(image, requirements=['C_CONTIGUOUS', 'WRITEABLE'])
    tensor = torch.from_numpy(array).permute(2, 0, 1)[None].float() / 255
    if tuple(tensor.shape[-2:]) != tuple(size):
        tensor = torch.nn.functional.interpolate(tensor, size=size, mode='bilinear',
                                                 antialias=True, align_corners=False)
    # One memory layout whatever the input size: a compiled image encoder (inductor) would
    # otherwise be rebuilt, for about a second, when an image needs no resizing.
    return tensor.contiguous()
