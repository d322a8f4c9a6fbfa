"""flanx.distributed: nodelists, process resolution from flags/SLURM/env/TPU, starting jax's runtime."""
from __future__ import annotations

import pytest

from flanx import distributed as D


# ------------------------------------------------------------------ nodelists

@pytest.mark.parametrize("nodelist, hosts", [
    ("gpu-[01-04,07]", ["gpu-01", "gpu-02", "gpu-03", "gpu-04", "gpu-07"]),
    ("node7", ["node7"]),
    ("a1,b2", ["a1", "b2"]),
    ("n[8-10],login", ["n8", "n9", "n10", "login"]),
    ("c[08-10]", ["c08", "c09", "c10"]),
    ("r[1-2]-g[01-02]", ["r1-g01", "r1-g02", "r2-g01", "r2-g02"]),
    ("x[3],y[001-002]", ["x3", "y001", "y002"]),
])
def test_expand_nodelist(nodelist, hosts):
    assert D.expand_nodelist(nodelist) == hosts


@pytest.mark.parametrize("bad", ["gpu-[01-04", "gpu-01]", "n[[1]]", "n[4-2]", "n[a-b]", "", " , "])
def test_expand_nodelist_rejects_malformed(bad):
    with pytest.raises(ValueError, match="nodelist"):
        D.expand_nodelist(bad)


# ------------------------------------------------------------------ resolution

def slurm_env(procid, ntasks, localid, nodelist="gpu-[03-04]", **extra):
    env = {"SLURM_PROCID": str(procid), "SLURM_NTASKS": str(ntasks), "SLURM_LOCALID": str(localid),
           "SLURM_JOB_ID": "4242", "SLURM_STEP_NODELIST": nodelist, "SLURM_STEP_NUM_NODES": "2"}
    env.update(extra)
    return env


def test_slurm_one_process_per_gpu():
    # 2 nodes x 8 GPUs, task 11 is the 4th task on the second node.
    info = D.resolve(env=slurm_env(11, 16, 3, MASTER_PORT="29500"))
    assert info == D.ProcessInfo("gpu-03:29500", 16, 11, (3,), "slurm")


def test_slurm_one_process_per_node_keeps_all_gpus():
    info = D.resolve(env=slurm_env(1, 2, 0))
    assert (info.process_id, info.num_processes, info.local_device_ids) == (1, 2, None)
    # The generated per-node script says so explicitly too.
    assert D.resolve(env=slurm_env(1, 2, 0, FLANX_LOCAL_DEVICE_IDS="all")).local_device_ids is None
    assert D.resolve(env=slurm_env(1, 16, 1, FLANX_LOCAL_DEVICE_IDS="0,1")).local_device_ids == (0, 1)


def test_slurm_port_and_nodelist_sources():
    # No MASTER_PORT: derived from the job id, so two jobs sharing a node do not collide.
    assert D.resolve(env=slurm_env(0, 16, 0)).coordinator_address == f"gpu-03:{20000 + 4242 % 10000}"
    env = slurm_env(0, 16, 0)
    del env["SLURM_STEP_NODELIST"]
    env["SLURM_JOB_NODELIST"] = "big[10-11]"
    assert D.resolve(env=env).coordinator_address.startswith("big10:")
    # Step nodelist wins over the job's.
    env["SLURM_STEP_NODELIST"] = "step[5-6]"
    assert D.resolve(env=env).coordinator_address.startswith("step5:")


def test_slurm_one_visible_gpu_per_task_uses_it():
    info = D.resolve(env=slurm_env(5, 16, 5, CUDA_VISIBLE_DEVICES="5"))
    assert info.local_device_ids is None  # the one GPU CUDA shows this task


def test_slurm_single_task_is_single_process():
    info = D.resolve(env=slurm_env(0, 1, 0, nodelist="n1"))
    assert (info.num_processes, info.process_id, info.coordinator_address, info.is_multi_process) == (1, 0, None, False)


def test_flags_win_over_slurm_and_env():
    env = {**slurm_env(3, 16, 3), "FLANX_COORDINATOR_ADDRESS": "h:1", "FLANX_NUM_PROCESSES": "2",
           "FLANX_PROCESS_ID": "1"}
    flags, rest = D.split_distributed_args(
        ["--coordinator_address=10.0.0.1:1234", "--num_processes", "4", "--process_id=2", "--gin.X=1"])
    assert rest == ["--gin.X=1"]
    assert D.resolve(flags, env) == D.ProcessInfo("10.0.0.1:1234", 4, 2, None, "flags")


def test_slurm_wins_over_flanx_env():
    env = {**slurm_env(3, 16, 3), "FLANX_COORDINATOR_ADDRESS": "h:1", "FLANX_NUM_PROCESSES": "2",
           "FLANX_PROCESS_ID": "1"}
    assert D.resolve(env=env).source == "slurm"


def test_flanx_env():
    env = {"FLANX_COORDINATOR_ADDRESS": "127.0.0.1:5555", "FLANX_NUM_PROCESSES": "3", "FLANX_PROCESS_ID": "2",
           "FLANX_LOCAL_DEVICE_IDS": "1"}
    assert D.resolve(env=env) == D.ProcessInfo("127.0.0.1:5555", 3, 2, (1,), "env")


def test_tpu_markers_and_single_fallback():
    assert D.resolve(env={"TPU_WORKER_ID": "3"}).source == "tpu"
    assert D.resolve(env={"FLANX_TPU": "1"}).is_multi_process
    assert D.resolve(env={}) == D.ProcessInfo(None, 1, 0, None, "single")


@pytest.mark.parametrize("flags, env, match", [
    ({"num_processes": "2", "process_id": "0"}, {}, "--coordinator_address"),
    ({"coordinator_address": "h:1", "num_processes": "2"}, {}, "--process_id"),
    ({"coordinator_address": "h:1", "num_processes": "2", "process_id": "2"}, {}, "outside 0..1"),
    ({"coordinator_address": "nohostport", "num_processes": "2", "process_id": "0"}, {}, "HOST:PORT"),
    ({}, {"FLANX_NUM_PROCESSES": "2"}, "FLANX_COORDINATOR_ADDRESS, FLANX_PROCESS_ID missing"),
    ({}, {"FLANX_COORDINATOR_ADDRESS": "h:1", "FLANX_NUM_PROCESSES": "two", "FLANX_PROCESS_ID": "0"},
     "FLANX_NUM_PROCESSES='two' is not an integer"),
    ({}, {"SLURM_PROCID": "0", "SLURM_NTASKS": "4"}, "srun"),
    ({}, {**slurm_env(0, 4, 0), "FLANX_LOCAL_DEVICE_IDS": "gpu0"}, "FLANX_LOCAL_DEVICE_IDS"),
])
def test_bad_settings_say_what_to_fix(flags, env, match):
    with pytest.raises(ValueError, match=match):
        D.resolve(flags, env)


def test_initialize_keyword_form_resolves_like_flags(monkeypatch):
    for k in list(__import__("os").environ):
        if k.startswith(("SLURM_", "FLANX_", "TPU_")):
            monkeypatch.delenv(k)
    # What flanx.partitioning.initialize_distributed passes when given nothing: one process, jax untouched.
    assert D.initialize(coordinator_address=None, num_processes=None, process_id=None) == D.ProcessInfo(
        None, 1, 0, None, "single")
    assert D.initialize(num_processes=1, process_id=0).source == "flags"
    with pytest.raises(ValueError, match="--coordinator_address"):
        D.initialize(num_processes=2, process_id=1)
