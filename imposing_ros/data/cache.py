"""Image cache: resized uint8 images in one memory-mapped array, so epochs skip JPEG decoding.

Layout of a cache directory (written to a temporary directory, renamed when complete):

* ``images.npy``: ``[M, H, W, 3]`` uint8 RGB at the model's input size;
* ``poses.npy``: ``[M, 7]`` float64 ``T_map_camera`` (geometry conventions);
* ``stamps.npy``: ``[M]`` int64 nanoseconds;
* ``meta.json``: size, count, sources and a key describing what was cached.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
import shutil
import tempfile
from typing import Iterable

import numpy as np
import torch
from torch.utils.data import Dataset

from imposing_ros.data.frames import Frame
from imposing_ros.model.preprocess import resize_uint8

LOGGER = logging.getLogger('imposing_ros.data')


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize ``[H, W, 3]`` uint8 to ``size = (height, width)``: the localizer's resize."""
    return resize_uint8(image, size)[0].permute(1, 2, 0).numpy()


class ImageCache:
    """A read-only, memory-mapped set of posed images (see module docstring)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        meta_path = self.root / 'meta.json'
        if not meta_path.is_file():
            raise FileNotFoundError(f'image cache {self.root}: meta.json not found')
        self.meta = json.loads(meta_path.read_text())
        self.images = np.load(self.root / 'images.npy', mmap_mode='r')
        self.poses = np.load(self.root / 'poses.npy')
        self.stamps = np.load(self.root / 'stamps.npy')
        if not len(self.images) == len(self.poses) == len(self.stamps) == self.meta['count']:
            raise ValueError(f'image cache {self.root}: arrays disagree on the frame count')

    def __len__(self) -> int:
        return len(self.poses)

    @classmethod
    def build(cls, frames: Iterable[Frame], root: str | Path, size: tuple[int, int],
              key: str = '', overwrite: bool = False) -> ImageCache:
        """Write ``frames`` resized to ``size`` into ``root``; reuse it if ``key`` matches.

        The images are streamed to disk, so memory stays flat however long the input is.
        """
        root = Path(root)
        if root.exists() and not overwrite:
            try:
                cache = cls(root)
            except (FileNotFoundError, ValueError, KeyError):
                cache = None
            if cache is not None and cache.meta.get('key') == key and \
                    tuple(cache.meta['size']) == tuple(size):
                LOGGER.info('using image cache %s (%d frames)', root, len(cache))
                return cache
        root.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=root.parent, prefix=f'.{root.name}.'))
        try:
            raw_path = tmp / 'images.raw'
            poses, stamps, sources = [], [], set()
            with open(raw_path, 'wb') as raw:
                for frame in frames:
                    raw.write(np.ascontiguousarray(resize_image(frame.image, size)).tobytes())
                    poses.append(frame.pose)
                    stamps.append(frame.stamp_ns)
                    sources.add(frame.source.split(':')[0])
            if not poses:
                raise ValueError(f'image cache {root}: the dataset yielded no frames')
            count = len(poses)
            images = np.lib.format.open_memmap(tmp / 'images.npy', mode='w+', dtype=np.uint8,
                                               shape=(count, *size, 3))
            images[:] = np.fromfile(raw_path, dtype=np.uint8).reshape(count, *size, 3)
            images.flush()
            del images
            raw_path.unlink()
            np.save(tmp / 'poses.npy', np.stack(poses))
            np.save(tmp / 'stamps.npy', np.asarray(stamps, dtype=np.int64))
            meta = {'count': count, 'size': list(size), 'key': key, 'sources': sorted(sources)}
            (tmp / 'meta.json').write_text(json.dumps(meta, indent=1))
            tmp.chmod(0o755)  # mkdtemp makes it private; the cache is ordinary data
            if root.exists():
                shutil.rmtree(root)
            os.replace(tmp, root)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp)
        LOGGER.info('wrote image cache %s (%d frames)', root, count)
        return cls(root)


class CachedPosedImages(Dataset):
    """Torch dataset over an :class:`ImageCache`: ``(image [3, H, W] float in [0, 1], pose [7])``.

    ``transform`` (optional) takes and returns the float image tensor (augmentations).
    """

    def __init__(self, cache: ImageCache, indices: np.ndarray | None = None, transform=None):
        self.cache = cache
        self.indices = np.arange(len(cache)) if indices is None else np.asarray(indices)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        j = int(self.indices[i])
        image = torch.from_numpy(np.array(self.cache.images[j])).permute(2, 0, 1).float() / 255
        if self.transform is not None:
            image = self.transform(image)
        return image, torch.from_numpy(self.cache.poses[j]).float()
