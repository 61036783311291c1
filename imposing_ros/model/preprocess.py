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


def resize_uint8(image: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """``[H, W, 3]`` uint8 RGB -> ``[1, 3, h, w]`` uint8 at ``size = (h, w)``, channels-last.

    Bilinear with antialiasing, computed on the uint8 pixels: Pillow's ``Image.resize(...,
    BILINEAR)`` to within one grey level on a few pixels in a thousand (rounding; test_model.py),
    in a quarter of the time of the same resize in float (0.19 against 0.77 ms from 480 x 270 to
    240 x 135, 2 cores of an Intel Xeon with AVX-512). The training cache resizes with it too.
    """
    # np.require copies read-only arrays (decoded images often are): torch wants writable memory.
    array = np.require(image, requirements=['C_CONTIGUOUS', 'WRITEABLE'])
    tensor = torch.from_numpy(array).permute(2, 0, 1)[None]
    if tuple(tensor.shape[-2:]) == tuple(size):
        return tensor
    return torch.nn.functional.interpolate(tensor, size=size, mode='bilinear', antialias=True,
                                           align_corners=False)


def preprocess(image: np.ndarray, size: tuple[int, int], crop: bool = False) -> torch.Tensor:
    """``[H, W, 3]`` uint8 RGB -> ``[1, 3, h, w]`` float in [0, 1] at ``size = (h, w)``.

    The image is resized to ``size`` (stretched when its aspect ratio differs, as training
    does); ``crop``: centre-cropped to the aspect ratio of ``size`` first (a camera other than
    the training one: stretching would distort what the model sees). The resize is the training
    cache's (:func:`resize_uint8`): a frame reaches the networks as it did in training.
    """
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f'image must be an [H, W, 3] RGB array, got '
                         f'{getattr(image, "shape", type(image).__name__)}')
    if image.dtype != np.uint8:
        raise ValueError(f'image must be uint8, got {image.dtype}')
    if min(image.shape[:2]) < 8:
        raise ValueError(f'image is too small: {image.shape[1]}x{image.shape[0]} pixels')
    if crop:
        top, left, h, w = center_crop_box(image.shape[0], image.shape[1], size)
        image = image[top:top + h, left:left + w]
    # One memory layout whatever the input size: a compiled image encoder (inductor) would
    # otherwise be rebuilt, for about a second, when an image needs no resizing.
    return resize_uint8(image, size).float().div_(255).contiguous()
