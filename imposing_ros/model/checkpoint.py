"""Checkpoint format: safe to load (``weights_only=True``), strict, self-describing.

A checkpoint is a dict of plain Python values and tensors:

``format``, ``code_version``, ``method`` (``imposing``, or a baseline of
:mod:`imposing_ros.baselines`; absent in older files: ``imposing``), ``model_config``,
``scenes`` (name -> map: normalisation and initial poses), ``state_dict``, ``seed``, and,
from training, ``train_config``, ``epoch``, ``optimizer`` and ``history``. The model is
rebuilt from ``model_config`` and its weights loaded with ``strict=True``.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch

from imposing_ros import __version__
from imposing_ros.config import config_from_dict, config_to_dict
from imposing_ros.model.encoders import ModelConfig
from imposing_ros.model.imposing import ImPosing, SceneMap
from imposing_ros.utils import atomic_write_bytes

FORMAT = 'imposing_ros.checkpoint/1'


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable, or does not fit the model it describes."""


def save_checkpoint(path: str | Path, model: torch.nn.Module, seed: int, half: bool = False,
                    **extra: Any) -> Path:
    """Write ``model`` (and ``extra`` training state) atomically to ``path``.

    ``model``: an :class:`ImPosing` or a baseline (anything with ``config``, ``maps`` and,
    for baselines, ``method``).

    ``half`` stores floating point weights as fp16 (the committed demo model: half the bytes;
    they are cast back to fp32 at load).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: (v.half() if half and v.is_floating_point() else v).cpu()
             for k, v in model.state_dict().items()}
    payload = {
        'format': FORMAT,
        'code_version': __version__,
        'method': getattr(model, 'method', 'imposing'),
        'model_config': config_to_dict(model.config),
        'scenes': {name: m.to_dict() for name, m in model.maps.items()},
        'state_dict': state,
        'seed': int(seed),
        **extra,
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return atomic_write_bytes(path, buffer.getbuffer())


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load the raw checkpoint dict safely, with one clear error naming the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f'checkpoint {path}: file not found')
    if path.stat().st_size == 0:
        raise CheckpointError(f'checkpoint {path}: the file is empty (0 bytes)')
    try:
        data = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt or foreign files
        reason = (str(exc).strip().splitlines() or ['no message'])[0]
        raise CheckpointError(f'checkpoint {path}: not a readable checkpoint, truncated or '
                              f'foreign ({type(exc).__name__}: {reason})') from exc
    if not isinstance(data, dict) or data.get('format') != FORMAT:
        found = data.get('format') if isinstance(data, dict) else type(data).__name__
        raise CheckpointError(f'checkpoint {path}: format is {found!r}, expected {FORMAT!r}')
    for key in ('model_config', 'scenes', 'state_dict', 'seed'):
        if key not in data:
            raise CheckpointError(f'checkpoint {path}: missing key {key!r}')
    return data


def load_model(path: str | Path, device: str | torch.device = 'cpu'
               ) -> tuple[ImPosing, dict[str, Any]]:
    """Rebuild the model of checkpoint ``path`` in eval mode; return it and the raw dict."""
    data = read_checkpoint(path)
    if data.get('method', 'imposing') != 'imposing':
        raise CheckpointError(f"checkpoint {path}: a {data['method']} baseline, not an ImPosing "
                              f"model (evaluate and benchmark read both)")
    try:
        config = config_from_dict(ModelConfig, data['model_config'], where=str(path))
        maps = {name: SceneMap.from_dict(m) for name, m in data['scenes'].items()}
        model = ImPosing(config, maps)
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f'checkpoint {path}: invalid model description: {exc}') from exc
    state = {k: v.float() if v.is_floating_point() else v for k, v in data['state_dict'].items()}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f'checkpoint {path}: weights do not match the model: '
                              f'{str(exc)[:400]}') from exc
    return model.to(device).eval(), data
