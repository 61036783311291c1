"""Small shared helpers."""

from __future__ import annotations

import os
from pathlib import Path
import tempfile


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file: never a half-written file."""
    return atomic_write_bytes(path, text.encode())


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file: never a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f'.{path.name}.', suffix='.tmp')
    try:
        with os.fdopen(fd, 'wb') as f:
            f.write(data)
        os.chmod(tmp, 0o644)  # mkstemp makes it private
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def stamp_to_ns(stamp) -> int:
    """``builtin_interfaces/Time`` (rclpy or rosbags message) -> integer nanoseconds."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


# Instruction-set flags that decide which arithmetic is fast on a CPU (put beside every figure).
SPEED_FLAGS = ('avx2', 'avx512f', 'avx512_vnni', 'avx512_bf16', 'avx512_fp16', 'amx_bf16',
               'amx_int8', 'avx_vnni')


def cpu_description() -> str:
    """``'<model name>, <cores> cores, flags: avx2 avx512f ...'`` from /proc/cpuinfo."""
    import platform

    model, flags = platform.processor() or 'unknown CPU', set()
    try:
        for line in Path('/proc/cpuinfo').read_text().splitlines():
            if line.startswith('model name'):
                model = line.split(':', 1)[1].strip()
            elif line.startswith('flags'):
                flags = set(line.split(':', 1)[1].split())
                break
    except OSError:  # not Linux: the model string only
        pass
    present = ' '.join(f for f in SPEED_FLAGS if f in flags) or 'none of ' + ' '.join(SPEED_FLAGS)
    return f'{model}, {os.cpu_count()} cores, flags: {present}'


def resolve_device(device: str | None) -> str:
    """``auto``, '' or ``None``: 'cuda' where CUDA is available, else 'cpu'.

    A CUDA device where CUDA is not available is a ValueError.
    """
    import torch  # here: the other helpers are used where torch is not imported

    if device in (None, '', 'auto'):
        return 'cuda' if torch.cuda.is_available() else 'cpu'
    if str(device).startswith('cuda') and not torch.cuda.is_available():
        raise ValueError(f'device {device} requested but CUDA is not available')
    return str(device)
