"""Compiled inference programs cached on disk: their key and their atomic save.

The ``tensorrt`` and ``torch-int8`` backends both turn a prepared encoder into a program that
takes minutes (TensorRT) or needs calibration data (int8) to make, so both keep them in a
folder (the node's ``engine_cache`` parameter) under a key of everything the program depends on.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable

import torch


def cache_key(module: torch.nn.Module, example: torch.Tensor, target: str) -> str:
    """Hash of a module's weights and buffers, of an input's shape and dtype, and of ``target``.

    Buffers are hashed whether persistent or not (the map normalisation of a pose encoder is a
    non-persistent buffer, and a program built for another map must not be picked up).
    ``target`` names what else a program depends on: device, library versions.
    """
    digest = hashlib.sha256()
    tensors = dict(module.named_parameters())
    tensors.update(module.named_buffers())
    for name, tensor in sorted(tensors.items()):
        digest.update(name.encode())
        flat = tensor.detach().cpu().contiguous().reshape(-1)  # 0-d buffers included
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    digest.update(f'{tuple(example.shape)}|{example.dtype}|{target}'.encode())
    return digest.hexdigest()[:32]


def save_atomically(path: Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a hidden file beside ``path``, then rename it to ``path``.

    A crash or an error leaves no half-written program under the real name. The format is
    whatever ``write`` writes: neither ``torch.export.save`` nor ``torch_tensorrt.save`` reads
    it from the file name (``torch_tensorrt.save`` takes ``output_format``), so the temporary
    name only keeps ``path``'s suffix for people and tools that look at it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f'.{path.name}')
    try:
        write(tmp)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
