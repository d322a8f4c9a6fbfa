"""Run a flanx entry point as N processes on this machine (CPU or GPUs).

The same multi-process code path as a pod or cluster, for tests and debugging:

    python launch/local.py --num_processes=2 --model_dir=/tmp/run \\
        --gin_file=runs/finetune.gin --gin.TRAIN_STEPS=20

Each process gets `FLANX_COORDINATOR_ADDRESS=127.0.0.1:PORT`,
`FLANX_NUM_PROCESSES`, `FLANX_PROCESS_ID` (read by `flanx.distributed.resolve`)
and either `JAX_PLATFORMS=cpu` (plus `--xla_force_host_platform_device_count`
when `--cpu_devices_per_process` > 1) or `CUDA_VISIBLE_DEVICES` set to its
share of `--gpus`. SLURM task variables are removed from the children so a
launch inside an allocation does not pick up srun's process ids. Process i
writes stdout and stderr to `LOG_DIR/process_{i}.out` (default
`MODEL_DIR/logs/`); process 0 is also echoed to the console. The launcher
waits for all of them; when one fails it stops the others and exits with that
process's exit code, after printing the end of its log.
"""
from __future__ import annotations

import argparse
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from launch import common  # noqa: E402

SLURM_TASK_VARS = ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", "SLURM_STEP_NODELIST",
                   "SLURM_JOB_NODELIST", "SLURM_NODELIST")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    p.add_argument("--num_processes", type=int, default=2)
    p.add_argument("--platform", choices=("cpu", "gpu"), default="cpu")
    p.add_argument("--cpu_devices_per_process", type=int, default=1,
                   help="CPU devices each process exposes (XLA --xla_force_host_platform_device_count)")
    p.add_argument("--gpus", default=None,
                   help="GPU ids to split evenly over the processes, e.g. 0,1,2,3 (default: CUDA_VISIBLE_DEVICES)")
    p.add_argument("--port", type=int, default=None, help="coordinator port on 127.0.0.1 (default: a free one)")
    p.add_argument("--module", default="flanx.train", help="entry point run as `python -m MODULE`")
    p.add_argument("--python", default=sys.executable)
    p.add_argument("--model_dir", default=None, help="run directory (becomes --gin.MODEL_DIR)")
    p.add_argument("--log_dir", default=None, help="where process_{i}.out go (default MODEL_DIR/logs)")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="extra environment, repeatable")
    p.add_argument("--dry_run", action="store_true", help="print the commands, run nothing")
    return p


def process_plans(opts, train: common.TrainArgs, environ: dict) -> list[tuple[dict, list[str], str]]:
    """(environment changes, argv, log file) for each process; `None` values mean 'unset'."""
    n = opts.num_processes
    if n < 1:
        raise common.LaunchError(f"--num_processes={n}: need at least 1")
    gpu_groups = None
    if opts.platform == "gpu":
        ids = opts.gpus if opts.gpus is not None else environ.get("CUDA_VISIBLE_DEVICES")
        ids = [g.strip() for g in (ids or "").split(",") if g.strip()]
        if not ids:
            raise common.LaunchError("--platform=gpu needs GPU ids: pass --gpus=0,1,... (or set CUDA_VISIBLE_DEVICES)")
        if len(ids) % n:
            raise common.LaunchError(f"{len(ids)} GPUs ({','.join(ids)}) cannot be split evenly over "
                                     f"{n} processes: pass --gpus with a multiple of {n} ids")
        per = len(ids) // n
        gpu_groups = [ids[i * per:(i + 1) * per] for i in range(n)]
    elif opts.cpu_devices_per_process < 1:
        raise common.LaunchError(f"--cpu_devices_per_process={opts.cpu_devices_per_process}: need at least 1")
    log_dir = opts.log_dir or (os.path.join(train.model_dir, "logs")
                               if train.model_dir and not common.io.is_remote(train.model_dir) else None)
    if log_dir is None:
        raise common.LaunchError("no place for the process logs: pass --log_dir=DIR (MODEL_DIR is remote or unset)")
    extra = common.parse_env_pairs(opts.env)
    plans = []
    for i in range(n):
        env: dict = {var: None for var in SLURM_TASK_VARS if var in environ}
        env.update({"FLANX_COORDINATOR_ADDRESS": f"127.0.0.1:{opts.port}",
                    "FLANX_NUM_PROCESSES": str(n), "FLANX_PROCESS_ID": str(i)})
        if gpu_groups is None:
            env["JAX_PLATFORMS"] = "cpu"
            if opts.cpu_devices_per_process > 1:
                flag = f"--xla_force_host_platform_device_count={opts.cpu_devices_per_process}"
                env["XLA_FLAGS"] = " ".join(filter(None, [environ.get("XLA_FLAGS", ""), flag]))
        else:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(gpu_groups[i])
        env.update(extra)
        argv = [opts.python, "-m", opts.module] + train.argv()
        plans.append((env, argv, os.path.join(log_dir, f"process_{i}.out")))
    return plans


def render(plans, log_dir: str) -> list[str]:
    """The plan as bash lines: what a dry run prints."""
    lines = [f"mkdir -p {shlex.quote(log_dir)}"]
    for env, argv, log_file in plans:
        unset = [f"-u {k}" for k, v in env.items() if v is None]
        sets = common.env_assignments({k: v for k, v in env.items() if v is not None})
        prefix = "env " + " ".join(unset) + " " if unset else ""
        lines.append(f"{prefix}{sets} {shlex.join(argv)} > {shlex.quote(log_file)} 2>&1 &")
    lines.append("wait")
    return lines


def _echo(pipe, log_file) -> None:
    with open(log_file, "wb") as f:
        for line in iter(pipe.readline, b""):
            f.write(line)
            f.flush()
            sys.stdout.buffer.write(line)
            sys.stdout.flush()


def _tail(path: str, lines: int = 25) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return "(no log)\n"


def execute(plans) -> int:
    """Start every process, echo process 0, wait; on the first failure stop the rest."""
    procs, threads = [], []
    for i, (env_changes, argv, log_file) in enumerate(plans):
        env = dict(os.environ)
        for k, v in env_changes.items():
            if v is None:
                env.pop(k, None)
            else:
                env[k] = v
        os.makedirs(os.path.dirname(log_file), exist_ok=True)
        if i == 0:
            proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            t = threading.Thread(target=_echo, args=(proc.stdout, log_file), daemon=True)
            t.start()
            threads.append(t)
        else:
            with open(log_file, "wb") as f:
                proc = subprocess.Popen(argv, env=env, stdout=f, stderr=subprocess.STDOUT)
        procs.append(proc)
    failed = None
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        while failed is None and any(p.poll() is None for p in procs):
            failed = next((i for i, p in enumerate(procs) if p.poll() not in (None, 0)), None)
            time.sleep(0.2)
        if failed is None:
            failed = next((i for i, p in enumerate(procs) if p.returncode), None)
    except KeyboardInterrupt:
        failed = -1
    finally:
        signal.signal(signal.SIGTERM, previous)
    if failed is not None:
        _stop(procs)
    for t in threads:
        t.join(timeout=5)
    if failed is None:
        return 0
    if failed == -1:
        print("flanx local launcher: interrupted; stopped all processes", file=sys.stderr)
        return 130
    log_file = plans[failed][2]
    code = procs[failed].returncode
    print(f"flanx local launcher: process {failed} exited with code {code}; stopped the others. "
          f"End of {log_file}:\n{_tail(log_file)}", file=sys.stderr)
    return code if code > 0 else 1


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def _stop(procs, grace_s: float = 10.0) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.time() + grace_s
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def main(argv: list[str]) -> int:
    opts, rest = build_parser().parse_known_args(argv)
    train = common.split_train_args(rest, opts.model_dir)
    if opts.module == "flanx.train":
        common.require_model_dir(train)
    if opts.port is None:
        opts.port = free_port()
    plans = process_plans(opts, train, dict(os.environ))
    if opts.module == "flanx.train":
        devices = (opts.num_processes * opts.cpu_devices_per_process if opts.platform == "cpu"
                   else sum(len(env["CUDA_VISIBLE_DEVICES"].split(",")) for env, _, _ in plans))
        common.preflight_mesh(train, devices, opts.num_processes)
    log_dir = os.path.dirname(plans[0][2])
    if opts.dry_run:
        return common.run_plan([common.Step(line) for line in render(plans, log_dir)], dry_run=True)
    return execute(plans)


if __name__ == "__main__":
    sys.exit(common.main_wrapper(main))
