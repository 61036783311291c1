"""DistributedDataParallel training: 2 CPU processes (gloo) under torchrun stay in sync."""

import os
from pathlib import Path
import subprocess
import sys

import numpy as np
import pytest
import torch


@pytest.mark.slow
def test_two_process_gloo_training_keeps_ranks_identical(tmp_path):
    env = dict(os.environ, MASTER_ADDR='127.0.0.1', OMP_NUM_THREADS='1')
    worker = Path(__file__).with_name('ddp_worker.py')
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
           str(worker), str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert all(np.load(tmp_path / f'world{r}.npy')[0] == 2 for r in (0, 1))
    a = torch.load(tmp_path / 'rank0.pt', weights_only=True)
    b = torch.load(tmp_path / 'rank1.pt', weights_only=True)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-6), key
    # and the step did move the weights away from their (seeded) initial values
    assert np.load(tmp_path / 'moved0.npy')[0] > 1e-4
    assert (tmp_path / 'run' / 'last.pt').is_file()
