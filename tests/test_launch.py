"""Launchers: dry-run commands (order, arguments, environment), real local runs, failure propagation."""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from launch import common, local, slurm, tpu_pod

REPO = Path(__file__).resolve().parent.parent
CLEAN_ENV = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "FLANX_", "TPU_"))}


def dry_run(module, argv, capsys) -> list[str]:
    assert module.main(argv + ["--dry_run"]) == 0
    out = capsys.readouterr()
    assert out.err == ""
    return out.out.splitlines()


@pytest.fixture
def clean_env(monkeypatch):
    for k in list(os.environ):
        if k.startswith(("SLURM_", "FLANX_", "TPU_")) or k == "XLA_FLAGS":
            monkeypatch.delenv(k)


# ------------------------------------------------------------------ local

def test_local_dry_run_cpu(clean_env, capsys, tmp_path):
    run = tmp_path / "run"
    lines = dry_run(local, ["--num_processes=2", "--port=4321", f"--model_dir={run}",
                            "--gin_file=meshes/data_parallel.gin", "--gin.TRAIN_STEPS=3"], capsys)
    assert lines[0] == f"mkdir -p {run}/logs" and lines[-1] == "wait" and len(lines) == 4
    for i, line in enumerate(lines[1:3]):
        words = shlex.split(line)
        assert words[:4] == ["FLANX_COORDINATOR_ADDRESS=127.0.0.1:4321", "FLANX_NUM_PROCESSES=2",
                             f"FLANX_PROCESS_ID={i}", "JAX_PLATFORMS=cpu"]
        assert words[4:] == [sys.executable, "-m", "flanx.train", "--gin_file=meshes/data_parallel.gin",
                             f'--gin.MODEL_DIR="{run}"', "--gin.TRAIN_STEPS=3",
                             ">", f"{run}/logs/process_{i}.out", "2>&1", "&"]


def test_local_dry_run_gpus_and_env_cleanup(clean_env, monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("SLURM_PROCID", "5")
    monkeypatch.setenv("SLURM_NTASKS", "8")
    lines = dry_run(local, ["--num_processes=2", "--platform=gpu", "--gpus=0,1,2,3", "--port=1",
                            "--log_dir", str(tmp_path), "--module=flanx.distributed", "--env", "NCCL_DEBUG=WARN"],
                    capsys)
    first, second = (shlex.split(l) for l in lines[1:3])
    assert first[:5] == ["env", "-u", "SLURM_PROCID", "-u", "SLURM_NTASKS"]  # srun's ids must not leak in
    assert "CUDA_VISIBLE_DEVICES=0,1" in first and "CUDA_VISIBLE_DEVICES=2,3" in second
    assert "NCCL_DEBUG=WARN" in second and "JAX_PLATFORMS=cpu" not in first


def test_local_cpu_devices_per_process_sets_xla_flags(clean_env, capsys, tmp_path):
    lines = dry_run(local, ["--num_processes=2", "--cpu_devices_per_process=4", "--port=1",
                            f"--model_dir={tmp_path}", "--gin_file=meshes/cpu_8_2x2x2.gin"], capsys)
    assert "XLA_FLAGS=--xla_force_host_platform_device_count=4" in shlex.split(lines[1])


@pytest.mark.parametrize("argv, message", [
    (["--num_processes=3", "--platform=gpu", "--gpus=0,1,2,3"], "cannot be split evenly over 3"),
    (["--num_processes=2", "--platform=gpu"], "--gpus=0,1"),
    (["--num_processes=2", "--gin_file=meshes/cpu_8_2x2x2.gin"], "needs 8 devices but only 2"),
    (["--num_processes=2", "--gin_file=meshes/data_parallel.gin", "--gin.BATCH_SIZE=3"],
     "BATCH_SIZE=3 is not divisible by data\\*fsdp = 2\\*1 = 2"),
    (["--num_processes=2", "--gin_file=nope.gin"], "gin file 'nope.gin' not found"),
])
def test_local_bad_input(clean_env, monkeypatch, tmp_path, argv, message):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    with pytest.raises(common.LaunchError, match=message):
        local.main(argv + ["--port=1", f"--model_dir={tmp_path}", "--dry_run"])


def test_local_runs_processes_and_they_find_each_other(tmp_path):
    """Two real processes: env -> flanx.distributed.resolve -> jax.distributed over loopback -> allgather."""
    logs = tmp_path / "logs"
    proc = subprocess.run([sys.executable, str(REPO / "launch" / "local.py"), "--num_processes=2",
                           "--module=flanx.distributed", f"--log_dir={logs}", "--mesh=2,1,1", "--batch_size=4"],
                          env=CLEAN_ENV, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    reports = [json.loads(next(l for l in (logs / f"process_{i}.out").read_text().splitlines()
                               if l.startswith("{"))) for i in range(2)]
    for i, r in enumerate(reports):
        assert (r["process_id"], r["num_processes"], r["source"]) == (i, 2, "env")
        assert (r["global_devices"], r["local_devices"], r["gathered_process_ids"]) == (2, 1, [0, 1])
        assert r["platform"] == "cpu"
        assert r["mesh"] == {"data": 2, "fsdp": 1, "model": 1}
    assert '"process_id": 0' in proc.stdout and '"process_id": 1' not in proc.stdout  # console echoes process 0


def test_local_failure_stops_the_others_and_propagates(tmp_path):
    fake = tmp_path / "fake_python"
    fake.write_text('#!/bin/sh\nif [ "$FLANX_PROCESS_ID" = 1 ]; then echo "boom from 1"; exit 3; fi\n'
                    'echo "p0 started"; exec sleep 60\n')
    fake.chmod(0o755)
    proc = subprocess.run([sys.executable, str(REPO / "launch" / "local.py"), "--num_processes=3",
                           f"--python={fake}", "--module=whatever", f"--log_dir={tmp_path / 'logs'}"],
                          env=CLEAN_ENV, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 3
    assert "process 1 exited with code 3" in proc.stderr and "boom from 1" in proc.stderr
    assert (tmp_path / "logs" / "process_1.out").read_text() == "boom from 1\n"


# ------------------------------------------------------------------ slurm

def slurm_dry_run(capsys, *extra) -> tuple[list[str], str]:
    argv = ["--nodes=2", "--gpus_per_node=8", "--partition=gpu", "--time=2:00:00", "--setup=source /opt/venv/bin/activate",
            "--model_dir=/shared/run", "--script=job.sbatch", "--gin_file=meshes/h100_2x8_fsdp_tp.gin",
            "--gin.BATCH_SIZE=32", *extra]
    assert slurm.main(argv + ["--dry_run"]) == 0
    out = capsys.readouterr().out
    head, rest = out.split("\n", 1)
    script, tail = rest.split(slurm.HEREDOC_END + "\n")
    return [head, rest.split("\n", 1)[0], tail.strip()], script.split("\n", 1)[1]


def test_slurm_dry_run_one_process_per_gpu(clean_env, capsys):
    (mkdir, cat, submit), script = slurm_dry_run(capsys)
    assert mkdir == "mkdir -p /shared/run/logs"
    assert cat == f"cat > job.sbatch <<'{slurm.HEREDOC_END}'"
    assert submit == "sbatch job.sbatch"
    lines = script.splitlines()
    assert lines[0] == "#!/bin/bash"
    for directive in ("--nodes=2", "--ntasks-per-node=8", "--gpus-per-node=8", "--partition=gpu",
                      "--time=2:00:00", "--output=/shared/run/logs/slurm-%j.out"):
        assert f"#SBATCH {directive}" in lines
    order = [next(i for i, l in enumerate(lines) if l.startswith(p))
             for p in ("#SBATCH", "source /opt/venv", "export XLA_FLAGS=", "srun ")]
    assert order == sorted(order)
    xla = shlex.split(next(l for l in lines if l.startswith("export XLA_FLAGS=")))[1]
    assert xla == "XLA_FLAGS=" + " ".join(slurm.XLA_GPU_FLAGS)
    assert "FLANX_LOCAL_DEVICE_IDS" not in script
    srun = shlex.split(lines[-1])
    assert srun[:3] == ["srun", "--kill-on-bad-exit=1", "--label"]
    assert srun[3:] == ["python", "-m", "flanx.train", "--gin_file=meshes/h100_2x8_fsdp_tp.gin",
                        '--gin.MODEL_DIR="/shared/run"', "--gin.BATCH_SIZE=32"]


def test_slurm_one_process_per_node(clean_env, capsys):
    _, script = slurm_dry_run(capsys, "--process_per=node", "--port=29500", "--xla_flags=--xla_dump_to=/tmp/d")
    assert "#SBATCH --ntasks-per-node=1" in script and "#SBATCH --gpus-per-node=8" in script
    assert "export FLANX_LOCAL_DEVICE_IDS=all" in script and "export MASTER_PORT=29500" in script
    assert "--xla_dump_to=/tmp/d'" in script  # user flags last, so they win


def test_slurm_script_env_resolves_to_right_ranks(clean_env, capsys):
    """What srun gives task 9 of the generated job maps to process 9 driving GPU 1, coordinator on node 1."""
    _, script = slurm_dry_run(capsys)
    from flanx import distributed
    env = {"SLURM_JOB_ID": "77", "SLURM_PROCID": "9", "SLURM_NTASKS": "16", "SLURM_LOCALID": "1",
           "SLURM_STEP_NODELIST": "h100-[007-008]", "SLURM_STEP_NUM_NODES": "2"}
    assert distributed.resolve(env=env) == distributed.ProcessInfo("h100-007:20077", 16, 9, (1,), "slurm")


def test_slurm_writes_script_without_submitting(clean_env, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _, expected = slurm_dry_run(capsys, f"--log_dir={tmp_path / 'slurm'}")
    argv = ["--nodes=2", "--gpus_per_node=8", "--partition=gpu", "--time=2:00:00",
            "--setup=source /opt/venv/bin/activate", "--model_dir=/shared/run", "--script=job.sbatch",
            "--gin_file=meshes/h100_2x8_fsdp_tp.gin", "--gin.BATCH_SIZE=32", f"--log_dir={tmp_path / 'slurm'}"]
    assert slurm.main(argv) == 0
    assert (tmp_path / "job.sbatch").read_text() == expected
    assert "sbatch job.sbatch" in capsys.readouterr().out


def test_slurm_bad_preset_fails_before_submitting(clean_env, capsys):
    with pytest.raises(common.LaunchError, match=r"needs 16 devices but only 8.*MESH_FSDP=1.*8 devices in 8"):
        slurm.main(["--nodes=1", "--gpus_per_node=8", "--model_dir=/x", "--gin_file=meshes/h100_2x8_fsdp_tp.gin",
                    "--dry_run"])
    with pytest.raises(common.LaunchError, match=r"data\*fsdp = 2 batch shards.*per-host batches for 3 processes"):
        slurm.main(["--nodes=3", "--gpus_per_node=4", "--process_per=node", "--model_dir=/x", "--gin.MESH_DATA=2",
                    "--gin.MESH_MODEL=6", "--gin.BATCH_SIZE=4", "--dry_run"])


def test_preflight_reads_gin_files_with_gins_parser(clean_env, tmp_path):
    """Macros set through other macros, includes, multi-line values and overrides are read as gin reads
    them (a regex saw none of `MESH_MODEL = %TP`); a file gin cannot parse is an error naming it."""
    mine = tmp_path / "my_mesh.gin"
    mine.write_text("include 'meshes/cpu_8_2x2x2.gin'\nTP = 4\nMESH_MODEL = %TP\n"
                    "MESH_DATA = \\\n    2\nLENGTHS = {'inputs': 8,\n           'targets': 4}\n")
    args = common.split_train_args([f"--gin_file={mine}", "--gin.BATCH_SIZE=1_024"], "/x")
    assert common.integer_macros(args.gin_files, args.gin_bindings) == {
        "MESH_DATA": 2, "MESH_FSDP": 2, "MESH_MODEL": 4, "TP": 4, "BATCH_SIZE": 1024}
    with pytest.raises(common.LaunchError, match=r"needs 16 devices but only 8"):
        common.preflight_mesh(args, num_devices=8, num_processes=1)
    broken = tmp_path / "broken.gin"
    broken.write_text("MESH_DATA = (2\n")
    with pytest.raises(common.LaunchError, match="broken.gin"):
        common.integer_macros([str(broken)], [])


@pytest.mark.slow
def test_slurm_xla_flags_are_known_to_installed_jaxlib():
    """An unknown flag in XLA_FLAGS aborts every process at start-up; check ours parse (and a bogus one fails)."""
    code = "import jax, jax.numpy as jnp; print(float(jax.jit(lambda x: x + 1)(jnp.ones(()))))"
    env = {**CLEAN_ENV, "JAX_PLATFORMS": "cpu"}
    ok = subprocess.run([sys.executable, "-c", code], env={**env, "XLA_FLAGS": " ".join(slurm.XLA_GPU_FLAGS)},
                        capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and ok.stdout.strip() == "2.0", ok.stderr[-2000:]
    bad = subprocess.run([sys.executable, "-c", code], env={**env, "XLA_FLAGS": "--xla_gpu_no_such_flag=true"},
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "Unknown flag" in bad.stderr


# ------------------------------------------------------------------ TPU pod

TPU_BASE = ["--name=flanx-v4", "--zone=us-central2-b", "--project=proj", "--accelerator_type=v4-32",
            "--model_dir=gs://bucket/runs/a"]


def test_tpu_dry_run_full_sequence(clean_env, capsys, tmp_path):
    user_gin = tmp_path / "my_run.gin"
    user_gin.write_text("TRAIN_STEPS = 100\n")
    lines = dry_run(tpu_pod, TPU_BASE + ["--spot", "--wheel=dist/flanx-0.1.0-py3-none-any.whl",
                                         "--gin_file=models/tiny.gin", f"--gin_file={user_gin}",
                                         "--gin_file=meshes/v4_32_data_model.gin", "--gin.BATCH_SIZE=64",
                                         "--teardown"], capsys)
    assert len(lines) == 8
    ensure, scp_wheel, install, mkdir, scp_gin, pkill, train, delete = lines
    gc = ["gcloud", "compute", "tpus", "tpu-vm"]
    loc = ["--zone=us-central2-b", "--project=proj"]
    assert ensure.startswith("state=$(gcloud compute tpus tpu-vm describe flanx-v4 ")
    assert shlex.join(gc + ["create", "flanx-v4"] + loc + ["--accelerator-type=v4-32",
                            "--version=tpu-ubuntu2204-base", "--spot"]) in ensure
    assert 'if [ "$state" = PREEMPTED ]' in ensure  # a preempted spot VM is recreated
    assert shlex.split(scp_wheel) == gc + ["scp", "dist/flanx-0.1.0-py3-none-any.whl", "flanx-v4:~/",
                                           "--worker=all"] + loc
    words = shlex.split(install)
    assert words[:6] == gc + ["ssh", "flanx-v4"] and "--worker=all" in words
    remote = words[-1].removeprefix("--command=")
    assert "uv venv --allow-existing --python 3.11 $HOME/flanx_venv" in remote
    assert '"flanx[tpu] @ file://$HOME/flanx-0.1.0-py3-none-any.whl"' in remote
    assert shlex.split(scp_gin)[4:7] == ["scp", str(user_gin), "flanx-v4:~/flanx_gin/"]
    assert "mkdir -p $HOME/flanx_gin" in mkdir and "pkill" in pkill and "--worker=all" in pkill
    remote = shlex.split(shlex.split(train)[-1].removeprefix("--command="))
    assert remote[:6] == ["set", "-o", "pipefail;", "cd", "$HOME", "&&"]
    assert remote[6:13] == ["FLANX_TPU=1", "$HOME/flanx_venv/bin/python", "-m", "flanx.train",
                            "--gin_file=models/tiny.gin", "--gin_file=flanx_gin/my_run.gin",
                            "--gin_file=meshes/v4_32_data_model.gin"]
    assert remote[13:15] == ['--gin.MODEL_DIR="gs://bucket/runs/a"', "--gin.BATCH_SIZE=64"]
    assert shlex.split(delete) == gc + ["delete", "flanx-v4"] + loc + ["--quiet"]


def test_tpu_git_ref_detach_and_teardown_only(clean_env, capsys):
    lines = dry_run(tpu_pod, TPU_BASE + ["--git_ref=v0.1.0", "--repo_url=https://github.com/o/flanx.git",
                                         "--detach", "--gin_file=models/tiny.gin"], capsys)
    assert len(lines) == 4  # ensure, install, pkill, train: no wheel copy, no teardown
    assert "'flanx[tpu] @ git+https://github.com/o/flanx.git@v0.1.0'" in shlex.split(lines[1])[-1]
    assert "nohup env FLANX_TPU=1" in lines[3] and "> $HOME/flanx_train.log 2>&1 < /dev/null &" in lines[3]
    lines = dry_run(tpu_pod, ["--name=n", "--zone=z", "--teardown"], capsys)
    assert lines == ["gcloud compute tpus tpu-vm delete n --zone=z --quiet"]


def test_tpu_teardown_runs_even_after_a_failed_step(tmp_path, capsys):
    marker = tmp_path / "deleted"
    steps = [common.Step("exit 4"), common.Step(f"touch {marker}.not"), common.Step(f"touch {marker}", always=True)]
    assert common.run_plan(steps, dry_run=False) == 4
    assert marker.exists() and not Path(f"{marker}.not").exists()


@pytest.mark.parametrize("accel, topo", [("v4-32", (16, 4)), ("v4-8", (4, 1)), ("v5p-128", (64, 16)),
                                         ("v5litepod-16", (16, 4)), ("v5litepod-8", (8, 1)), ("v3-32", (32, 4)),
                                         ("v6e-64", (64, 16))])
def test_tpu_topology(accel, topo):
    assert tpu_pod.topology(accel) == topo


@pytest.mark.parametrize("extra, message", [
    (["--model_dir=/local/run"], "share no disk: use a bucket"),
    (["--accelerator_type=v4-16"], r"needs 16 devices but only 8 .*8 devices in 2 processes"),
    (["--accelerator_type=tpu-32"], "expected e.g. v4-32"),
    (["--git_ref=main"], "--repo_url"),
    ([], "--wheel=PATH, --git_ref=REF"),
    (["--detach", "--teardown", "--skip_install"], "--detach and --teardown"),
])
def test_tpu_bad_input(clean_env, extra, message):
    argv = TPU_BASE + ["--gin_file=meshes/v4_32_data_model.gin"] + extra
    with pytest.raises(common.LaunchError, match=message):
        tpu_pod.main(argv + ["--dry_run"])


def test_dry_run_prints_only_commands_as_a_script():
    """Run as a script: stdout is exactly the commands (valid bash), stderr is empty."""
    proc = subprocess.run([sys.executable, str(REPO / "launch" / "tpu_pod.py"), *TPU_BASE, "--skip_install",
                           "--gin_file=models/tiny.gin", "--dry_run"], env=CLEAN_ENV,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stderr == ""
    assert len(proc.stdout.splitlines()) == 3
    assert subprocess.run(["bash", "-n"], input=proc.stdout, text=True).returncode == 0
    bad = subprocess.run([sys.executable, str(REPO / "launch" / "tpu_pod.py"), *TPU_BASE, "--skip_install",
                          "--gin_file=models/tiny.gin", "--model_dir=/tmp/x", "--dry_run"], env=CLEAN_ENV,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and bad.stdout == "" and "error: MODEL_DIR=/tmp/x" in bad.stderr


def test_tpu_env_expands_on_the_worker_and_worker_setup_runs_before_training(clean_env, capsys):
    lines = dry_run(tpu_pod, TPU_BASE + ["--skip_install", "--gin_file=models/tiny.gin",
                                         "--env=FLANX_DATA_DIR=$HOME/flanx_data",
                                         "--worker_setup=gcloud storage cp -r gs://b/flanx_data $HOME/"], capsys)
    assert len(lines) == 4 and "gcloud storage cp -r gs://b/flanx_data $HOME/" in shlex.split(lines[1])[-1]
    remote = shlex.split(lines[3])[-1].removeprefix("--command=")
    assert 'FLANX_DATA_DIR="$HOME/flanx_data"' in remote
    rendered = tpu_pod.remote_env({"FLANX_DATA_DIR": "$HOME/flanx_data", "ODD": 'a"b`c'})
    out = subprocess.run(["bash", "-c", f"{rendered} printenv FLANX_DATA_DIR ODD"], env={"HOME": "/h", "PATH": "/usr/bin:/bin"},
                         capture_output=True, text=True, check=True).stdout
    assert out == '/h/flanx_data\na"b`c\n'


# ------------------------------------------------------------------ the trainer through the launcher

TRAIN_ARGS = ["--gin_file=models/tiny.gin", "--gin_file=runs/pretrain.gin",
              "--gin.MIXTURE_OR_TASK_NAME='synth_chat_summary_template_0_zero_shot'",
              "--gin.TASK_FEATURE_LENGTHS={'inputs': 64, 'targets': 32}", "--gin.TRAIN_STEPS=3",
              "--gin.BATCH_SIZE=4", "--gin.LOG_EVERY=1", "--gin.CHECKPOINT_PERIOD=100", "--gin.SHUFFLE=False"]


def _has_train_entry_point() -> bool:
    import importlib.util
    return all(importlib.util.find_spec(m) is not None for m in ("flanx.entrypoints", "flanx.train.__main__"))


@pytest.mark.slow
@pytest.mark.skipif(not _has_train_entry_point(), reason="`python -m flanx.train` (flanx.entrypoints) is missing")
def test_two_process_training_through_local_launcher_matches_one(tmp_path):
    """`launch/local.py` + `python -m flanx.train`: 2 CPU processes (loopback coordinator, gloo collectives)
    each load their half of the global batch and give the 1-process losses and final parameters (1e-5)."""
    runs = {n: tmp_path / f"p{n}" for n in (1, 2)}
    launches = {n: subprocess.Popen([sys.executable, str(REPO / "launch" / "local.py"), f"--num_processes={n}",
                                     f"--model_dir={d}", *TRAIN_ARGS], env=CLEAN_ENV, cwd=tmp_path,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                for n, d in runs.items()}
    outputs = {}
    try:
        for n, p in launches.items():
            outputs[n] = p.communicate(timeout=600)[0]
    finally:
        for p in launches.values():
            if p.poll() is None:
                p.kill()
    for n, p in launches.items():
        assert p.returncode == 0, outputs[n][-3000:]

    def train_losses(model_dir):
        records = [json.loads(l) for l in (model_dir / "metrics.jsonl").read_text().splitlines()]
        return [(r["step"], r["loss"]) for r in records if r["kind"] == "train"]

    one, two = train_losses(runs[1]), train_losses(runs[2])
    # One record per step: only process 0 writes metrics.jsonl.
    assert [s for s, _ in one] == [s for s, _ in two] == [1, 2, 3]
    np.testing.assert_allclose([l for _, l in two], [l for _, l in one], atol=1e-5, rtol=0)
    assert one[0][1] - one[-1][1] > 0.1  # it trained
    assert sorted(p.name for p in (runs[2] / "logs").glob("process_*.out")) == ["process_0.out", "process_1.out"]
    assert (runs[2] / "operative_config.gin").is_file()
    # Each process loads its own half of the global batch.
    for i in range(2):
        assert f"data: shard {i} of 2, 2 rows of each batch of 4" in (runs[2] / "logs" / f"process_{i}.log").read_text()
    # Both runs' final checkpoints hold the same parameters.
    from flanx.checkpoints import flatten, load_params

    (p1, _, s1), (p2, _, s2) = (load_params(str(runs[n])) for n in (1, 2))
    assert s1 == s2 == 3
    f1, f2 = flatten(p1), flatten(p2)
    assert set(f1) == set(f2)
    assert max(float(np.max(np.abs(f1[k] - f2[k]))) for k in f1) <= 1e-5
