"""Linters as tests: ruff configured to ament_flake8 / ament_pep257 rules (ruff.toml)."""

from pathlib import Path
import re
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
    ros_import = re.compile(r'^\s*(from|import)\s+(rclpy|\w+_msgs|\w+_srvs|launch|launch_ros|'
                            r'tf2_ros|cv_bridge|message_filters)\b', re.MULTILINE)
    offenders = []
    for path in (ROOT / 'imposing_ros').rglob('*.py'):
        if 'nodes' in path.relative_to(ROOT).parts:
            continue
        for match in ros_import.finditer(path.read_text()):
            offenders.append(f'{path.relative_to(ROOT)}: {match.group(0).strip()}')
    assert not offenders, offenders
