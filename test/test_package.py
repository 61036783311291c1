"""The package builds as an ament_python package with colcon and declares its ROS dependencies."""

from pathlib import Path
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_package_xml_declares_ros_dependencies():
    root = ET.parse(ROOT / 'package.xml').getroot()
    assert root.get('format') == '3' and root.findtext('name') == 'imposing_ros'
    deps = {e.text for e in root if e.tag.endswith('depend')}
    for name in ('rclpy', 'sensor_msgs', 'geometry_msgs', 'nav_msgs', 'visualization_msgs',
                 'diagnostic_msgs', 'std_srvs', 'lifecycle_msgs', 'tf2_ros', 'cv_bridge',
                 'message_filters', 'launch', 'launch_ros', 'python3-numpy'):
        assert name in deps, name
    assert root.find('export/build_type').text == 'ament_python'


def test_colcon_build(tmp_path):
    colcon = shutil.which('colcon') or str(Path(sys.executable).with_name('colcon'))
    if not Path(colcon).exists():
        pytest.skip('colcon is not installed (pip install -e .[test] brings it)')
    files = subprocess.run(['git', 'ls-files'], cwd=ROOT, capture_output=True, text=True)
    if files.returncode != 0:
        pytest.skip('not a git checkout')
    src = tmp_path / 'src' / 'imposing_ros'
    for name in files.stdout.split():
        if (ROOT / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, src / name)
    proc = subprocess.run([colcon, 'build', '--base-paths', 'src'], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    install = tmp_path / 'install' / 'imposing_ros'
    for executable in ('localizer_node', 'motion_filter_node', 'imposing-ros'):
        assert (install / 'lib' / 'imposing_ros' / executable).is_file(), executable
    share = install / 'share'
    assert (share / 'ament_index' / 'resource_index' / 'packages' / 'imposing_ros').is_file()
    assert (share / 'imposing_ros' / 'package.xml').is_file()
    for launch_file in (ROOT / 'launch').glob('*.py'):
        assert (share / 'imposing_ros' / 'launch' / launch_file.name).is_file()
    for config in (ROOT / 'config').glob('*.yaml'):
        assert (share / 'imposing_ros' / 'config' / config.name).is_file()
