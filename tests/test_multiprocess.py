"""Two JAX processes on this machine (loopback coordinator, gloo CPU collectives) share a run's lock.

That two processes train like one is checked through the launcher (`test_launch.py`,
`test_two_process_training_through_local_launcher_matches_one`).
"""
from __future__ import annotations

import os
import socket
import textwrap

import pytest
from helpers import free_port, start_python, subprocess_env, wait_all, write_script

DRIVER = textwrap.dedent("""
    import sys
    model_dir, num, pid, port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    from flanx import partitioning
    partitioning.initialize_distributed(f"127.0.0.1:{port}", num, pid)
    import jax
    from flanx.models import get_config
    from flanx.train import trainer
    from flanx.train.config import OptimizerConfig, TrainConfig
    from flanx.train.synthetic import SyntheticBatches

    assert jax.process_count() == num and jax.device_count() == num, (jax.process_count(), jax.devices())
    cfg = TrainConfig(train_steps=4, batch_size=8, log_every=1, checkpoint_period=2, model_dir=model_dir,
                      optimizer=OptimizerConfig(learning_rate=1e-3, min_dim_size_to_factor=32))
    model = get_config("tiny", dropout_rate=0.0)
    trainer.train(cfg, model, lambda shard: SyntheticBatches(shard, 16, 8, vocab_size=64))
""")


@pytest.mark.slow
def test_locked_model_dir_stops_every_process_at_start(tmp_path):
    """Process 0 holds the run's lock; when another run holds MODEL_DIR, every process fails at start with
    the holder named (none waits for the others at a collective)."""
    from flanx.lock import DirLock

    script = write_script(tmp_path, DRIVER)
    model_dir = tmp_path / "run"
    holder = DirLock(str(model_dir)).acquire()  # this test process is the other, live run
    try:
        port, env = free_port(), subprocess_env(XLA_FLAGS="--xla_force_host_platform_device_count=1")
        results = wait_all([start_python(script, model_dir, 2, i, port, env=env) for i in range(2)], timeout=240)
        for returncode, _, err in results:
            assert returncode != 0
            assert f"is in use by another run (host {socket.gethostname()}, pid {os.getpid()}" in err, err[-2000:]
        assert sorted(os.listdir(model_dir)) == ["flanx.lock"]  # nothing else written
    finally:
        holder.release()
