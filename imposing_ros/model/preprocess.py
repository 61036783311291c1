"""Camera image -> network input: the one preprocessing of training tools, backends and nodes."""

from __future__ import annotations

import numpy as np
import torch


def center_crop_box(height: int, width: int, size: tuple[int, int]) -> tuple[int, int, int, int]:
    """``(top, left, h, w)``: the largest centred window with the aspect ratio of ``size``."""
    target = size[1] / size[0]
    if width / height > target:  # too wide: keep the full height
        w = max(1, round(height * target))
        return 0, (width - w) // 2, height, w
    h = max(1, round(width / target))
    return (height - h) // 2, 0, h, width


def preprocess(image: np.ndarray, size: tuple[int, int], crop: bool = False) -> torch.Tensor:
    """``[H, W, 3]`` uint8 RGB -> ``[1, 3, h, w]`` float in [0, 1] at ``size = (h, w)``.

    The image is resized to ``size`` (stretched when its aspect ratio differs, as training
    does); ``crop``: centre-cropped to the aspect ratio of ``size`` first (a camera other than
    the training one: stretching would distort what the model sees).
    """
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f'image must be an [H, W, 3] RGB array, got '
                         f'{getattr(image, "shape", type(image).__name__)}')
    if image.dtype != np.uint8:
        raise ValueError(f'image must be uint8, got {image.dtype}')
    if min(image.shape[:2]) < 8:
        raise ValueError(f'image is too small: {image.shape[1]}x{image.shape[0]} pixels')
    # np.require copies read-only arrays (decoded images often are): torch wants writable memory.
    if crop:
        top, left, h, w = center_crop_box(image.shape[0], image.shape[1], size)
        image = image[top:top + h, left:left + w]
    array = np.require(image, requirements=['C_CONTIGUOUS', 'WRITEABLE'])
    tensor = torch.from_numpy(array).permute(2, 0, 1)[None].float() / 255
    if tuple(tensor.shape[-2:]) != tuple(size):
        tensor = torch.nn.functional.interpolate(tensor, size=size, mode='bilinear',
                                                 antialias=True, align_corners=False)
    # One memory layout whatever the input size: a compiled image encoder (inductor) would
    # otherwise be rebuilt, for about a second, when an image needs no resizing.
    return tensor.contiguous()
