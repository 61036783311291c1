"""Test-wide settings: DDS on loopback in a private domain, deterministic and light torch."""

import os
import random

# Before anything imports rclpy: DDS must stay on this machine, in a domain of this test run.
os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
os.environ.setdefault('ROS_DOMAIN_ID', str(100 + (os.getpid() % 100)))
os.environ.setdefault('MUJOCO_GL', 'egl')

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _seed_everything():
    """Seed Python and torch for every test; keep torch to the 2 cores we have."""
    random.seed(0)
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a hard dependency
        return
    torch.manual_seed(0)
    torch.set_num_threads(min(2, os.cpu_count() or 1))
