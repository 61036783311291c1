"""``auto`` on a CPU: the precision chosen by timing it here, not by a CPU flag.

oneDNN reports bf16 as supported on AVX-512 CPUs that only emulate it (about 3x slower than
fp32 there), while CPUs with AVX512_BF16 or AMX run it faster than fp32: only a measurement
tells. :func:`choose_cpu_precision` times the eager fp32 and bf16 encoders on the real model (one
image and ``levels`` pose batches of ``num_candidates``, a few times, bounded to a few seconds),
keeps bf16 only if it is at least :data:`MIN_GAIN` faster and its codes agree with fp32, and
caches the answer by CPU, model architecture, search size and library versions, so the next
start is instant.

Where the int8 programs of the model exist (cached, or built at first start from the calibration
images the checkpoint carries), :func:`choose_int8` then times them against that float choice,
both as they would run (inductor), and keeps int8 only if it is :data:`MIN_GAIN` faster and its
codes agree with fp32 to :data:`MIN_INT8_AGREEMENT`; cached by the programs' weights key too.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
import hashlib
import json
import logging
import os
from pathlib import Path
import platform
import time

import torch

from imposing_ros.runtime import backends
from imposing_ros.utils import atomic_write_text

LOGGER = logging.getLogger('imposing_ros.runtime')

CACHE_FILE = Path.home() / '.cache' / 'imposing_ros' / 'auto_backend.json'
# bf16 must beat fp32 by this factor to be chosen (timing noise on a shared machine).
MIN_GAIN = 1.1
# Mean cosine between bf16 and fp32 codes under which bf16 is refused.
MIN_AGREEMENT = 0.99
# The same for int8 codes (quantized activations move codes more than bf16 rounding; on the
# demo model 0.99x keeps the median error within 2 % of fp32: docs/backends.md).
MIN_INT8_AGREEMENT = 0.98
# Untimed and timed rounds (each backend once a round), and the time budget per backend (s).
WARMUP = 2
REPEATS = 5
BUDGET_S = 4.0


@dataclass(frozen=True)
class Choice:
    """What ``auto`` chose on this CPU, why, and whether it was measured now or cached."""

    precision: str
    milliseconds: dict
    agreement: float | None
    source: str  # 'measured' or 'cache'

    def summary(self) -> str:
        """One line for logs and /diagnostics."""
        times = ', '.join(f'{p} {ms:.1f} ms' for p, ms in self.milliseconds.items())
        agree = f', codes agree with fp32 {self.agreement:.4f}' \
            if self.agreement is not None else ''
        details = f': {times}{agree}' if times or agree else ''
        return f'{self.precision} ({self.source}{details})'


def cpu_signature() -> str:
    """CPU model name and instruction-set flags (what decides which precision is fast)."""
    model, flags = platform.processor(), ''
    try:
        for line in Path('/proc/cpuinfo').read_text().splitlines():
            if line.startswith('model name') and not model.strip():
                model = line.split(':', 1)[1].strip()
            elif line.startswith('model name'):
                model = line.split(':', 1)[1].strip()
            elif line.startswith('flags'):
                flags = line.split(':', 1)[1].strip()
                break
    except OSError:  # not Linux: the processor string and torch's capability must do
        flags = torch.backends.cpu.get_cpu_capability()
    return f'{model}|{hashlib.sha1(flags.encode()).hexdigest()[:12]}|{os.cpu_count()}'


def _key(model, num_candidates: int, levels: int) -> str:
    parts = [cpu_signature(), json.dumps(asdict(model.config), sort_keys=True, default=str),
             str(num_candidates), str(levels), torch.__version__, str(torch.get_num_threads())]
    return hashlib.sha1('|'.join(parts).encode()).hexdigest()


def _time_backends(named: dict, image: torch.Tensor, poses: torch.Tensor,
                   levels: int) -> tuple[dict, dict]:
    """Median ms of one image + ``levels`` pose passes for each backend, and its last codes.

    The backends take turns, pass by pass, so a slow spell of a shared machine falls on both
    rather than on whichever ran second (timed one after the other, the demo model's int8 and
    bf16 once came out 17.0 against 18.3 ms where interleaved passes give 17 against 23 ms).
    The first :data:`WARMUP` rounds are not timed (oneDNN builds its kernels on first use).
    """
    times = {name: [] for name in named}
    codes = {}
    deadline = time.perf_counter() + BUDGET_S * len(named)
    for i in range(WARMUP + REPEATS):
        for name, backend in named.items():
            start = time.perf_counter()
            backend.encode_images(image)
            for _ in range(levels):
                codes[name] = backend.encode_poses(poses)
            if i >= WARMUP:
                times[name].append(1e3 * (time.perf_counter() - start))
        if time.perf_counter() > deadline and all(times.values()):
            break
    return {name: sorted(t)[len(t) // 2] for name, t in times.items()}, codes


def _read_cache(cache_file: Path | None) -> dict:
    if cache_file is not None and cache_file.is_file():
        try:
            return json.loads(cache_file.read_text())
        except (OSError, ValueError):
            pass
    return {}


def _write_cache(cache_file: Path | None, cache: dict) -> None:
    if cache_file is None:
        return
    try:
        atomic_write_text(cache_file, json.dumps(cache, indent=1))
    except OSError as exc:  # a read-only home: measure again next time
        LOGGER.warning('cannot cache the backend choice in %s: %s', cache_file, exc)


def _remember(cache_file: Path | None, cache: dict, key: str, choice: Choice) -> Choice:
    """Store a measured ``choice`` under ``key`` in ``cache`` and its file; return it."""
    cache[key] = {'precision': choice.precision, 'milliseconds': choice.milliseconds,
                  'agreement': choice.agreement, 'cpu': cpu_signature(),
                  'torch': torch.__version__}
    _write_cache(cache_file, cache)
    return choice


def _int8_key(model, num_candidates: int, levels: int, programs) -> str:
    key = _key(model, num_candidates, levels) + '|int8|' + programs.image_path.name
    return hashlib.sha1(key.encode()).hexdigest()


def cached_int8_choice(model, programs, num_candidates: int, levels: int = 6,
                       cache_file: Path | None | bool = True) -> Choice | None:
    """The verdict of :func:`choose_int8` for these programs on this CPU, if cached."""
    cache_file = CACHE_FILE if cache_file is True else (cache_file or None)
    entry = _read_cache(cache_file).get(_int8_key(model, num_candidates, levels, programs))
    if entry is None:
        return None
    return Choice(entry['precision'], entry['milliseconds'], entry.get('agreement'), 'cache')


def choose_int8(model, scene: str, int8_backend, float_backend, float_name: str,
                num_candidates: int, levels: int = 6, image: torch.Tensor | None = None,
                cache_file: Path | None | bool = True) -> Choice:
    """'int8' or ``float_name`` (the float backend's name), timed here; the verdict is cached.

    Both backends are built (compiled) already. Agreement: the smaller mean cosine of int8 and
    eager fp32 codes, for the map's level-0 candidates and for ``image`` (``[1, 3, H, W]``, a
    real camera image: a random one is outside the calibrated activation ranges; None: poses
    only). ``precision`` of the result is 'int8' or ``float_name``.
    """
    cache_file = CACHE_FILE if cache_file is True else (cache_file or None)
    key = _int8_key(model, num_candidates, levels, int8_backend.programs)
    cache = _read_cache(cache_file)
    generator = torch.Generator().manual_seed(0)
    height, width = model.config.image_size
    real_image = image is not None
    if image is None:
        image = torch.rand((1, 3, height, width), generator=generator)
    reference = model.maps[scene].initial_poses
    poses = reference[torch.randint(len(reference), (num_candidates,), generator=generator)]
    milliseconds, codes = _time_backends({'int8': int8_backend, float_name: float_backend},
                                         image, poses[None], levels)
    exact = backends.TorchBackend(model, scene, 'cpu', 'fp32', inductor=False)

    def agree(a, b):
        return float(torch.nn.functional.cosine_similarity(
            a.float().reshape(-1, a.shape[-1]), b.float().reshape(-1, b.shape[-1]),
            dim=-1).mean())
    with torch.no_grad():
        agreement = agree(codes['int8'], exact.encode_poses(poses))
        if real_image:
            agreement = min(agreement, agree(int8_backend.encode_images(image),
                                             exact.encode_images(image)))
    fast = milliseconds['int8'] * MIN_GAIN <= milliseconds[float_name]
    precision = 'int8' if fast and agreement >= MIN_INT8_AGREEMENT else float_name
    choice = Choice(precision, {k: round(v, 2) for k, v in milliseconds.items()},
                    round(agreement, 5), 'measured')
    return _remember(cache_file, cache, key, choice)


def choose_cpu_precision(model, scene: str, num_candidates: int, levels: int = 6,
                         cache_file: Path | None | bool = True) -> Choice:
    """fp32 or bf16 for ``model`` on this CPU, measured or from the cache (module docstring).

    ``cache_file``: True for :data:`CACHE_FILE`, a path, or None / False for no cache.
    """
    if cache_file is True:
        cache_file = CACHE_FILE
    cache_file = cache_file or None
    key = _key(model, num_candidates, levels)
    cache = _read_cache(cache_file)
    if key in cache:
        entry = cache[key]
        return Choice(entry['precision'], entry['milliseconds'], entry.get('agreement'), 'cache')
    if not backends.cpu_has_native_bf16():  # oneDNN has no bf16 kernels at all here
        return Choice('fp32', {}, None, 'no bf16 kernels')
    generator = torch.Generator().manual_seed(0)
    height, width = model.config.image_size
    image = torch.rand((1, 3, height, width), generator=generator)
    reference = model.maps[scene].initial_poses
    pick = torch.randint(len(reference), (num_candidates,), generator=generator)
    poses = reference[pick][None]
    milliseconds, codes = _time_backends(
        {precision: backends.TorchBackend(model, scene, 'cpu', precision, inductor=False)
         for precision in ('fp32', 'bf16')}, image, poses, levels)
    agreement = float(torch.nn.functional.cosine_similarity(
        codes['bf16'].float(), codes['fp32'].float(), dim=-1).mean())
    fast = milliseconds['bf16'] * MIN_GAIN <= milliseconds['fp32']
    precision = 'bf16' if fast and agreement >= MIN_AGREEMENT else 'fp32'
    choice = Choice(precision, {k: round(v, 2) for k, v in milliseconds.items()},
                    round(agreement, 5), 'measured')
    return _remember(cache_file, cache, key, choice)
