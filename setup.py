"""imposing_ros: ament_python package that also installs with pip into a plain venv."""

from glob import glob

from setuptools import find_packages, setup

package_name = 'imposing_ros'

# The ROS 2 Kilted wheels on PyPI; on a robot, rclpy and the messages come from the ROS install.
ROS_WHEELS = [
    'ros-kilted-rclpy[fastrtps]==9.1.2',
    'ros-kilted-std-msgs',
    'ros-kilted-geometry-msgs',
    'ros-kilted-sensor-msgs',
    'ros-kilted-nav-msgs',
    'ros-kilted-visualization-msgs',
    'ros-kilted-diagnostic-msgs',
    'ros-kilted-std-srvs',
    'ros-kilted-lifecycle-msgs',
]

setup(
    name=package_name,
    version='0.1.0',
    packages=find_packages(exclude=['test']),
    data_files=[
        ('share/ament_index/resource_index/packages', ['resource/' + package_name]),
        ('share/' + package_name, ['package.xml']),
        ('share/' + package_name + '/launch', glob('launch/*.py')),
        ('share/' + package_name + '/config', glob('config/*.yaml') + glob('config/*.rviz') +
         glob('config/*.xml') + glob('config/*.json')),
        ('share/' + package_name + '/config/scenes', glob('config/scenes/*.yaml')),
        ('share/' + package_name + '/models', glob('models/*.pt')),
    ],
    python_requires='>=3.10',
    install_requires=[
        'setuptools',
        'numpy>=1.24',
        'torch==2.14.1',
        'torchvision==0.29.1',
        # PT2E int8 quantization of the torch-int8 CPU backend (pure Python wheel; 0.18.0 is the
        # release checked against torch 2.14.1 here, see imposing_ros/runtime/int8.py).
        'torchao==0.18.0',
        'roma==1.8.0',
        'transforms3d==0.4.2',
        'rosbags==0.11.9',
        # rosbags.image (image message <-> numpy) lives in its own package and needs OpenCV.
        'rosbags-image[opencv-headless]==0.10.4',
        'mujoco==4.0.0',
        'pyrosm==0.25.0',
        'shapely>=2.0',
        'pillow>=10',
        'pyyaml>=6',
        'tqdm>=4.66',
        'matplotlib>=3.8',
        # The Foxglove live view (imposing_ros/nodes/live_view.py): WebSocket server and typed
        # messages, no dependencies of its own (19 MB wheel, 54 MB installed).
        'foxglove-sdk==0.30.3',
    ],
    extras_require={
        'ros': ROS_WHEELS,
        # websockets: the Foxglove client of test/test_live_view.py (mujoco-studio needs it too).
        'test': ['pytest==9.2.0', 'ruff==0.17.6', 'scipy>=1.11',
                 'colcon-common-extensions==0.3.0', 'websockets>=13'],
    },
    zip_safe=True,
    maintainer='imposing_ros developers',
    maintainer_email='dev@imposing-ros.org',
    description='Real-time visual localization with implicit pose encoding (ImPosing) for ROS 2.',
    license='Apache-2.0',
    tests_require=['pytest'],
    entry_points={
        'console_scripts': [
            'imposing-ros = imposing_ros.cli:main',
            'localizer_node = imposing_ros.nodes.localizer_node:main',
            'motion_filter_node = imposing_ros.nodes.motion_filter_node:main',
        ],
    },
)
