"""The whole global search captured in one CUDA graph (CUDA only).

The search is written for capture (:mod:`imposing_ros.localization.search`): static shapes, no
host reads, its random numbers drawn beforehand, its per-level deviations passed in as a device
tensor. A captured graph replays every level's kernels with one launch, which removes the
per-kernel launch cost that dominates small batches on a GPU. What stays outside: the image
encoder (it is not part of the search), early stopping (a host read per level) and the
eigensolver of the rotation average (replaced by its power-iteration form, same result for the
clustered candidates the search averages).

Capture follows PyTorch's documented recipe: warm-up on a side stream, then
``torch.cuda.graph``; inputs are copied into static tensors before each replay. Three rules the
recipe leaves to the caller:

* A graph replays raw device addresses and keeps none of its inputs alive. Every tensor the
  search reads (the code slot, the level-0 poses and unit codes, the noise, the per-level
  deviations, the backend's weights) is an attribute of :class:`GraphedSearch`; one freed would
  hand its memory to the next allocation and a replay would read whatever was written there.
  ``check_inputs=True`` also has torch verify this at every replay, where its
  ``torch.cuda.graph`` has ``check_input_liveness`` (:data:`CAN_CHECK_INPUTS`).
* Warm-up, capture and replay run on the search's own device (``torch.cuda.device``), the
  capture on a stream made there: ``torch.cuda.graph``'s default capture stream belongs to
  whichever device was current when the first graph of the process was captured.
* ``torch.cuda.graph`` leaves its capture stream current when ending a failed capture raises;
  the caller's stream is restored, so the eager fallback runs where it would have run.
"""

from __future__ import annotations

from dataclasses import replace
import inspect
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


def _graph_checks_inputs() -> bool:
    """Whether this torch's ``torch.cuda.graph`` takes ``check_input_liveness``."""
    try:
        return 'check_input_liveness' in inspect.signature(torch.cuda.graph).parameters
    except (TypeError, ValueError):  # no signature to read: assume an older torch
        return False


# Whether torch can check at replay that a graph's inputs are still alive (newer torch only).
CAN_CHECK_INPUTS = _graph_checks_inputs()


class GraphedSearch:
    """A global search of one image, captured once, replayed per frame.

    ``initial_unit [M, d]``: unit codes of ``initial_poses``
    (:func:`~imposing_ros.localization.search.unit_codes`).
    ``search(image_codes [1, d]) -> SearchResult`` (tensors owned by the graph: copy them before
    the next call). ``check_inputs``: have torch raise at replay if an input was freed (a
    debugging aid, where :data:`CAN_CHECK_INPUTS`; ignored elsewhere).
    """

    def __init__(self, backend: Backend, initial_poses: torch.Tensor,
                 initial_unit: torch.Tensor, config: SearchConfig, noise: SearchNoise,
                 dim: int, warmup: int = 3, check_inputs: bool = False):
        device = initial_poses.device
        if device.type != 'cuda':
            raise ValueError('CUDA graphs need a CUDA device')
        if config.early_stop:
            raise ValueError('early stopping reads the host every level: it cannot be captured')
        self.device = device
        self.config = replace(config, averaging='power')
        # What the graph reads, held as long as the graph (see the module docstring).
        self.backend = backend
        self.initial_poses = initial_poses
        self.initial_unit = initial_unit
        self.noise = noise
        self.sigmas = level_sigmas(self.config, self.config.levels).to(device)
        self.codes = torch.zeros((1, dim), device=device)
        self.checks_inputs = check_inputs and CAN_CHECK_INPUTS
        previous = torch.cuda.current_stream(device)
        try:
            with torch.cuda.device(device), torch.no_grad():
                self._capture(previous, warmup)
        finally:
            torch.cuda.set_stream(previous)

    def _run(self) -> SearchResult:
        return hierarchical_search(self.codes, self.backend.encode_poses, self.initial_poses,
                                   self.config, self.noise, steps=self.backend.steps,
                                   sigmas=self.sigmas,
                                   initial_scores=level0_scores(self.codes, self.initial_unit))

    def _capture(self, previous: torch.cuda.Stream, warmup: int):
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(previous)
        with torch.cuda.stream(stream):
            for _ in range(warmup):  # allocator, cuBLAS workspaces, lazy engine setup
                self._run()
        previous.wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        options = {'check_input_liveness': True} if self.checks_inputs else {}
        with torch.cuda.graph(self.graph, stream=stream, **options):
            self.result = self._run()

    def __call__(self, image_codes: torch.Tensor) -> SearchResult:
        """Replay the search for ``image_codes [1, d]``."""
        with torch.cuda.device(self.device):
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
