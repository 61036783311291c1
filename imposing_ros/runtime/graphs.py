"""The whole global search captured in one CUDA graph (CUDA only).

The search is written for capture (:mod:`imposing_ros.localization.search`): static shapes, no
host reads, its random numbers drawn beforehand, its per-level deviations passed in as a device
tensor. A captured graph replays every level's kernels with one launch, which removes the
per-kernel launch cost that dominates small batches on a GPU. What stays outside: the image
encoder (it is not part of the search), early stopping (a host read per level) and the
eigensolver of the rotation average (replaced by its power-iteration form, same result for the
clustered candidates the search averages).

Capture follows PyTorch's documented recipe: warm-up on a side stream, then
``torch.cuda.graph``; inputs are copied into static tensors before each replay.
"""

from __future__ import annotations

from dataclasses import replace
import logging

import torch

from imposing_ros.localization.search import (
    hierarchical_search,
    level0_scores,
    level_sigmas,
    SearchConfig,
    SearchNoise,
    SearchResult,
)
from imposing_ros.runtime.backends import Backend

LOGGER = logging.getLogger('imposing_ros.runtime')


class GraphedSearch:
    """A global search of one image, captured once, replayed per frame.

    ``initial_unit [M, d]``: unit codes of ``initial_poses``
    (:func:`~imposing_ros.localization.search.unit_codes`).
    ``search(image_codes [1, d]) -> SearchResult`` (tensors owned by the graph: copy them before
    the next call).
    """

    def __init__(self, backend: Backend, initial_poses: torch.Tensor,
                 initial_unit: torch.Tensor, config: SearchConfig, noise: SearchNoise,
                 dim: int, warmup: int = 3):
        device = initial_poses.device
        if device.type != 'cuda':
            raise ValueError('CUDA graphs need a CUDA device')
        if config.early_stop:
            raise ValueError('early stopping reads the host every level: it cannot be captured')
        config = replace(config, averaging='power')
        sigmas = level_sigmas(config, config.levels).to(device)
        self.codes = torch.zeros((1, dim), device=device)

        def run() -> SearchResult:
            return hierarchical_search(self.codes, backend.encode_poses, initial_poses, config,
                                       noise, score=backend.score, sample=backend.sample,
                                       sigmas=sigmas,
                                       initial_scores=level0_scores(self.codes, initial_unit))

        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side), torch.no_grad():
            for _ in range(warmup):  # allocator, cuBLAS workspaces, lazy engine setup
                run()
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph), torch.no_grad():
            self.result = run()

    def __call__(self, image_codes: torch.Tensor) -> SearchResult:
        """Replay the search for ``image_codes [1, d]``."""
        self.codes.copy_(image_codes)
        self.graph.replay()
        return self.result


def try_capture(*args, **kwargs) -> GraphedSearch | None:
    """A :class:`GraphedSearch`, or None (logged) where capture fails: the caller runs eagerly."""
    try:
        return GraphedSearch(*args, **kwargs)
    except Exception as exc:  # capture support differs across backends and drivers
        LOGGER.warning('CUDA graph capture of the search failed, running it eagerly: %s', exc)
        return None
