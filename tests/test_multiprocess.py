"""Two JAX processes on this machine (loopback coordinator, gloo CPU collectives) train like one."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from flanx.train.writers import read_metrics

DRIVER = textwrap.dedent("""
    import json, sys
    model_dir, num, pid, port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    from flanx import partitioning
    if num > 1:
        partitioning.initialize_distributed(f"127.0.0.1:{port}", num, pid)
    import jax
    from flanx.models import get_config
    from flanx.train import trainer
    from flanx.train.config import OptimizerConfig, TrainConfig
    from flanx.train.synthetic import SyntheticBatches

    assert jax.process_count() == num and jax.device_count() == num, (jax.process_count(), jax.devices())
    seen = []

    def data(shard):
        seen.append([shard.index, shard.num_shards, shard.local_batch_size])
        return SyntheticBatches(shard, 16, 8, vocab_size=64)

    cfg = TrainConfig(train_steps=4, batch_size=8, log_every=1, checkpoint_period=2, model_dir=model_dir,
                      optimizer=OptimizerConfig(learning_rate=1e-3, min_dim_size_to_factor=32))
    res = trainer.train(cfg, get_config("tiny", dropout_rate=0.0), data)
    print("RESULT " + json.dumps({"shard": seen[0], "step": res.step}), flush=True)
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1")
    for var in ("SLURM_JOB_ID", "SLURM_PROCID", "SLURM_NTASKS", "FLANX_COORDINATOR_ADDRESS",
                "FLANX_NUM_PROCESSES", "FLANX_PROCESS_ID"):
        env.pop(var, None)

    single = subprocess.run([sys.executable, str(script), str(tmp_path / "one"), "1", "0", "0"], env=env,
                            capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-3000:]

    port = str(_free_port())
    two_dir = tmp_path / "two"
    procs = [subprocess.Popen([sys.executable, str(script), str(two_dir), "2", str(i), port], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    outs = []
    for p in procs:
        try:
            out, err = p.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        assert p.returncode == 0, err[-3000:]
        outs.append(json.loads([x for x in out.splitlines() if x.startswith("RESULT ")][-1][7:]))
    # Each process loads its own half of the global batch.
    assert [o["shard"] for o in outs] == [[0, 2, 4], [1, 2, 4]]
    assert all(o["step"] == 4 for o in outs)

    one = {r["step"]: r["loss"] for r in read_metrics(str(tmp_path / "one"), "train")}
    two = {r["step"]: r["loss"] for r in read_metrics(str(two_dir), "train")}
    assert sorted(one) == sorted(two) == [1, 2, 3, 4]
    np.testing.assert_allclose([two[s] for s in range(1, 5)], [one[s] for s in range(1, 5)], atol=1e-5, rtol=0)
    assert one[1] != one[4]

    # Both runs' final checkpoints hold the same parameters.
    from flanx.checkpoints import load_params
    p1, _, s1 = load_params(str(tmp_path / "one"))
    p2, _, s2 = load_params(str(two_dir))
    assert s1 == s2 == 4
    from flax import traverse_util
    f1, f2 = traverse_util.flatten_dict(p1), traverse_util.flatten_dict(p2)
    assert set(f1) == set(f2)
    assert max(float(np.max(np.abs(f1[k] - f2[k]))) for k in f1) <= 1e-5


@pytest.mark.slow
def test_locked_model_dir_stops_every_process_at_start(tmp_path):
    """Process 0 holds the run's lock; when another run holds MODEL_DIR, every process fails at start with
    the holder named (none waits for the others at a collective)."""
    from flanx.lock import DirLock

    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1")
    for var in ("SLURM_JOB_ID", "SLURM_PROCID", "SLURM_NTASKS", "FLANX_COORDINATOR_ADDRESS",
                "FLANX_NUM_PROCESSES", "FLANX_PROCESS_ID"):
        env.pop(var, None)
    model_dir = tmp_path / "run"
    holder = DirLock(str(model_dir)).acquire()  # this test process is the other, live run
    try:
        port = str(_free_port())
        procs = [subprocess.Popen([sys.executable, str(script), str(model_dir), "2", str(i), port], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
        for p in procs:
            try:
                _, err = p.communicate(timeout=240)
            except subprocess.TimeoutExpired:
                for q in procs:
                    q.kill()
                raise
            assert p.returncode != 0
            assert f"is in use by another run (host {socket.gethostname()}, pid {os.getpid()}" in err, err[-2000:]
        assert sorted(os.listdir(model_dir)) == ["flanx.lock"]  # nothing else written
    finally:
        holder.release()
