"""flanx.distributed: nodelists, process resolution from flags/SLURM/env/TPU, mesh checks, presets, logs."""
from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import gin
import pytest

from flanx import distributed as D
from flanx import paths

MESH_DIR = paths.configs_dir() / "meshes"


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


def test_import_is_jax_free():
    code = "import sys, flanx.distributed; assert 'jax' not in sys.modules and 'tensorflow' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# ------------------------------------------------------------------ mesh validation

def test_validate_mesh_fills_and_accepts():
    assert D.validate_mesh({"data": -1, "fsdp": 2, "model": 2}, 16, 32, 4) == {"data": 4, "fsdp": 2, "model": 2}
    assert D.validate_mesh({}, 8) == {"data": 8, "fsdp": 1, "model": 1}  # defaults: data fills
    # Model axis spanning processes: 16 processes share 2 batch shards.
    assert D.validate_mesh({"data": 1, "fsdp": 2, "model": 8}, 16, 4, 16)["fsdp"] == 2


@pytest.mark.parametrize("shape, devices, batch, procs, expected", [
    ({"data": 4, "fsdp": 1, "model": 4}, 8, None, 1, r"needs 16 devices but only 8 .*--gin.MESH_DATA=2"),
    ({"data": 2, "fsdp": 1, "model": 1}, 8, None, 1, r"uses 2 of the 8 devices.*--gin.MESH_DATA=8"),
    ({"data": 1, "fsdp": 3, "model": -1}, 8, None, 1, r"multiply to 3, which does not divide the 8"),
    ({"data": -1, "fsdp": -1, "model": 1}, 8, None, 1, r"only one mesh axis may be -1.*MESH_DATA, MESH_FSDP"),
    ({"data": 0, "fsdp": 1, "model": 1}, 8, None, 1, r"MESH_DATA=0"),
    ({"data": 2, "tensor": 4}, 8, None, 1, r"unknown mesh axes \['tensor'\]"),
    ({"data": 2, "fsdp": 2, "model": 2}, 8, 10, 1, r"BATCH_SIZE=10 is not divisible by data\*fsdp = 2\*2 = 4.*"
                                                    r"--gin.BATCH_SIZE=8 or 12"),
    ({"data": 2, "fsdp": 2, "model": 2}, 8, 2, 1, r"--gin.BATCH_SIZE=4\b"),
    ({"data": 6, "fsdp": 1, "model": 2}, 12, 12, 4, r"data\*fsdp = 6 .* 4 processes.*change MESH_DATA"),
    ({"data": 4, "fsdp": 1, "model": 1}, 4, 8, 3, r"4 devices cannot be split evenly over 3 processes"),
])
def test_validate_mesh_errors_say_what_to_change(shape, devices, batch, procs, expected):
    with pytest.raises(ValueError, match=expected):
        D.validate_mesh(shape, devices, batch, procs)


def test_host_batch_size():
    assert D.host_batch_size(64, {"data": 4, "fsdp": 4, "model": 1}, 4) == 16
    assert D.host_batch_size(64, {"data": 1, "fsdp": 2, "model": 8}, 16) == 32  # 8 processes per shard


# ------------------------------------------------------------------ presets

def preset_devices(path: Path) -> str:
    line = next(l for l in path.read_text().splitlines() if l.startswith("# devices:"))
    return line.split()[2]


def load_preset(path: Path) -> dict:
    gin.clear_config(clear_constants=True)
    try:
        gin.parse_config_file(str(path))
        return {axis: gin.query_parameter(f"%{macro}") for axis, macro in D.MESH_MACROS.items()}
    finally:
        gin.clear_config(clear_constants=True)


PRESETS = sorted(MESH_DIR.glob("*.gin"))


def test_expected_presets_exist():
    assert {p.stem for p in PRESETS} >= {"cpu_1", "v4_32_data_model", "v5e_16_fsdp", "h100_2x8_fsdp_tp"}


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.stem)
def test_preset_fits_the_hardware_it_names(path):
    shape = load_preset(path)
    declared = preset_devices(path)
    devices = 24 if declared == "any" else int(declared)
    resolved = D.validate_mesh(shape, devices)
    assert resolved["data"] * resolved["fsdp"] * resolved["model"] == devices


@pytest.mark.parametrize("name, devices, procs, batch, expected", [
    ("v4_32_data_model", 8, 2, 32, r"needs 16 devices but only 8 were found.*MESH_DATA=2"),
    ("h100_2x8_fsdp_tp", 8, 8, 16, r"needs 16 devices but only 8.*MESH_FSDP=1"),
    ("v5e_16_fsdp", 16, 4, 24, r"BATCH_SIZE=24 is not divisible by .* = 16.*--gin.BATCH_SIZE=16 or 32"),
])
def test_bad_preset_for_the_devices_found(name, devices, procs, batch, expected):
    shape = load_preset(MESH_DIR / f"{name}.gin")
    with pytest.raises(ValueError, match=expected):
        D.validate_mesh(shape, devices, batch, procs)


# ------------------------------------------------------------------ outputs and logs

def test_process_log_paths(tmp_path, monkeypatch):
    assert D.process_log_path(str(tmp_path), 3) == str(tmp_path / "logs" / "process_3.log")
    monkeypatch.setenv("FLANX_LOG_DIR", str(tmp_path / "local"))
    assert D.process_log_path("gs://bucket/run", 1) == str(tmp_path / "local" / "process_1.log")
    assert D.is_remote("gs://b/x") and not D.is_remote("/tmp/gs:/x")


LOGGING_PROBE = """
import logging, sys
from flanx import distributed, progress
progress.setup_logging()  # the entry points' console logger for `flanx` (does not propagate)
print(distributed.setup_process_logging(sys.argv[1], int(sys.argv[2])))
logging.getLogger("flanx.train").info("trainer info")
logging.getLogger("orbax.lib").info("library info")
logging.getLogger("flanx.train").warning("trainer warning")
"""


@pytest.mark.parametrize("process_id", [0, 1])
def test_setup_process_logging_writes_per_process_file(tmp_path, process_id):
    proc = subprocess.run([sys.executable, "-c", LOGGING_PROBE, str(tmp_path), str(process_id)],
                          capture_output=True, text=True, timeout=60, check=True)
    path = proc.stdout.strip()
    assert path == str(tmp_path / "logs" / f"process_{process_id}.log")
    text = Path(path).read_text()
    for line in ("INFO flanx.train: trainer info", "INFO orbax.lib: library info",
                 "WARNING flanx.train: trainer warning"):
        assert f"[p{process_id}] {line}" in text
    assert "trainer warning" in proc.stderr and "library info" not in proc.stderr
    assert ("trainer info" in proc.stderr) == (process_id == 0)  # other processes: warnings only


def test_primary_helpers_single_process(tmp_path):
    assert D.is_primary()
    assert D.primary_only(lambda x: x + 1)(1) == 2
    D.barrier("noop")  # one process: returns at once
    with D.open_output(str(tmp_path / "a" / "b.txt")) as f:
        f.write("x")
    assert (tmp_path / "a" / "b.txt").read_text() == "x"


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
