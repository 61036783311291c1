"""Linters as tests: ruff configured to ament_flake8 / ament_pep257 rules (ruff.toml)."""

from pathlib import Path
import shutil
import subprocess
import sys

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_clean():
    ruff = shutil.which('ruff') or str(Path(sys.executable).with_name('ruff'))
    if not Path(ruff).exists():
        pytest.skip('ruff is not installed (pip install -e .[test])')
    proc = subprocess.run([ruff, 'check', '--no-cache', '.'], cwd=ROOT, capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-2000:]


def test_method_library_imports_no_ros():
    """The method knows nothing of ROS: only nodes/ may import rclpy and messages."""
    offenders = []
    for path in (ROOT / 'imposing_ros').rglob('*.py'):
        if 'nodes' in path.relative_to(ROOT).parts:
            continue
        text = path.read_text()
        for needle in ('import rclpy', 'from rclpy', '_msgs', 'import launch'):
            if needle in text:
                offenders.append(f'{path.relative_to(ROOT)}: {needle}')
    assert not offenders, offenders
