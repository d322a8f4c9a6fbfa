"""Generate (and optionally submit) an sbatch script for a flanx run on N nodes x G GPUs.

    python launch/slurm.py --nodes=2 --gpus_per_node=8 --partition=gpu \\
        --setup="source $HOME/flanx/.venv/bin/activate" \\
        --model_dir=/shared/runs/flan_t5_xl_dialogsum \\
        --gin_file=runs/finetune.gin --gin_file=meshes/h100_2x8_fsdp_tp.gin

Default layout: one process per GPU (`--ntasks-per-node=G`), the convention
`jax.distributed` itself uses on SLURM: task SLURM_LOCALID drives GPU
SLURM_LOCALID, a crash names the failing rank, and host-side work (Python
dispatch, input pipeline) runs in parallel per GPU. `--process_per=node` runs one
process driving all G GPUs of its node, like one process per TPU host (fewer
input pipelines; `FLANX_LOCAL_DEVICE_IDS=all` tells flanx to keep all GPUs).

Every task runs `python -m flanx.train ...` under `srun --kill-on-bad-exit=1`;
`flanx.distributed.resolve` reads SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID and
the first host of SLURM_STEP_NODELIST (port: MASTER_PORT, else derived from
the job id). The script sets XLA's GPU flags explicitly (`XLA_GPU_FLAGS`,
documented in docs/launching.md). Without flags the script is written to
`--script`; `--submit` also runs sbatch; `--dry_run` prints the commands that
would write and submit it (a heredoc holding the script, then sbatch) and
touches nothing.
"""
from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from launch import common  # noqa: E402

# XLA flags for multi-GPU training, each explained in docs/launching.md ("XLA flags on GPU").
XLA_GPU_FLAGS = (
    "--xla_gpu_enable_latency_hiding_scheduler=true",
    "--xla_gpu_all_reduce_combine_threshold_bytes=134217728",
    "--xla_gpu_all_gather_combine_threshold_bytes=134217728",
    "--xla_gpu_reduce_scatter_combine_threshold_bytes=134217728",
    "--xla_gpu_enable_all_gather_combine_by_dim=false",
    "--xla_gpu_enable_reduce_scatter_combine_by_dim=false",
    "--xla_gpu_enable_pipelined_all_gather=true",
    "--xla_gpu_enable_pipelined_reduce_scatter=true",
    "--xla_gpu_enable_pipelined_all_reduce=true",
    "--xla_gpu_enable_while_loop_double_buffering=true",
)
GPU_ENV = {
    "XLA_PYTHON_CLIENT_MEM_FRACTION": "0.90",  # leave ~10% for NCCL buffers and CUDA libraries
    "TF_CPP_MIN_LOG_LEVEL": "2",
    "TF_FORCE_GPU_ALLOW_GROWTH": "true",  # the TF input pipeline must not reserve GPU memory jax needs
}
HEREDOC_END = "FLANX_SBATCH_EOF"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    p.add_argument("--nodes", type=int, required=True)
    p.add_argument("--gpus_per_node", type=int, required=True)
    p.add_argument("--process_per", choices=("gpu", "node"), default="gpu",
                   help="one process per GPU (default) or one per node driving all its GPUs")
    p.add_argument("--job_name", default="flanx")
    p.add_argument("--partition", default=None)
    p.add_argument("--account", default=None)
    p.add_argument("--qos", default=None)
    p.add_argument("--time", default=None, help="wall-clock limit, e.g. 24:00:00")
    p.add_argument("--cpus_per_task", type=int, default=None)
    p.add_argument("--mem", default=None, help="memory per node, e.g. 0 (all) or 512G")
    p.add_argument("--requeue", action="store_true", help="let SLURM requeue the job after preemption")
    p.add_argument("--setup", default=None,
                   help="shell line run before training on the batch host, e.g. 'source ~/flanx/.venv/bin/activate'")
    p.add_argument("--python", default="python")
    p.add_argument("--module", default="flanx.train")
    p.add_argument("--port", type=int, default=None, help="coordinator port (MASTER_PORT); default derived from the job id")
    p.add_argument("--xla_flags", default="", help="extra XLA flags appended after flanx's (later flags win)")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="extra exports, repeatable")
    p.add_argument("--model_dir", default=None, help="run directory on shared disk or gs:// (becomes --gin.MODEL_DIR)")
    p.add_argument("--log_dir", default=None, help="where SLURM writes the job's output (default MODEL_DIR/logs)")
    p.add_argument("--script", default=None, help="where to write the sbatch script (default ./JOB_NAME.sbatch)")
    p.add_argument("--submit", action="store_true", help="run sbatch on the script")
    p.add_argument("--dry_run", action="store_true", help="print the script and the sbatch command; write nothing")
    return p


def batch_gin_files(names: list[str]) -> list[str]:
    """flanx's own configs by name (the installed package has them); user files by absolute path."""
    resolved = []
    for name in names:
        packaged = common.packaged_name(name)
        if packaged is None and not Path(name).is_file():
            raise common.LaunchError(f"gin file {name!r} is neither a local file nor one of flanx's t5x_configs/")
        resolved.append(packaged or str(Path(name).resolve()))
    return resolved


def render_script(opts, train: common.TrainArgs) -> str:
    """The sbatch script text."""
    tasks_per_node = opts.gpus_per_node if opts.process_per == "gpu" else 1
    total = opts.nodes * tasks_per_node
    layout = ("one process per GPU" if opts.process_per == "gpu" else "one process per node driving all its GPUs")
    lines = ["#!/bin/bash",
             f"# flanx: {opts.nodes} node(s) x {opts.gpus_per_node} GPU(s), {layout} ({total} processes).",
             "# Written by launch/slurm.py; see docs/launching.md.",
             f"#SBATCH --job-name={opts.job_name}",
             f"#SBATCH --nodes={opts.nodes}",
             f"#SBATCH --ntasks-per-node={tasks_per_node}",
             f"#SBATCH --gpus-per-node={opts.gpus_per_node}",
             "#SBATCH --exclusive",
             f"#SBATCH --output={opts.log_dir}/slurm-%j.out"]
    for flag, value in (("cpus-per-task", opts.cpus_per_task), ("mem", opts.mem), ("time", opts.time),
                        ("partition", opts.partition), ("account", opts.account), ("qos", opts.qos)):
        if value is not None:
            lines.append(f"#SBATCH --{flag}={value}")
    if opts.requeue:
        lines.append("#SBATCH --requeue")
    lines += ["", "set -eo pipefail", ""]
    if opts.setup:
        lines += [opts.setup, ""]
    xla = " ".join(XLA_GPU_FLAGS + tuple(opts.xla_flags.split()))
    exports = {"XLA_FLAGS": xla, **GPU_ENV}
    if opts.process_per == "node":
        exports["FLANX_LOCAL_DEVICE_IDS"] = "all"
    if opts.port is not None:
        exports["MASTER_PORT"] = str(opts.port)
    exports.update(common.parse_env_pairs(opts.env))
    lines += [f"export {k}={shlex.quote(v)}" for k, v in exports.items()]
    argv = [opts.python, "-m", opts.module] + train.argv(batch_gin_files(train.gin_files))
    lines += ["", "# Every task runs the same command; flanx.distributed reads its rank from SLURM_PROCID.",
              f"srun --kill-on-bad-exit=1 --label {shlex.join(argv)}", ""]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    opts, rest = build_parser().parse_known_args(argv)
    if opts.nodes < 1 or opts.gpus_per_node < 1:
        raise common.LaunchError(f"--nodes={opts.nodes} --gpus_per_node={opts.gpus_per_node}: both must be >= 1")
    train = common.split_train_args(rest, opts.model_dir)
    model_dir = common.require_model_dir(train)
    if opts.log_dir is None:
        if common.io.is_remote(model_dir):
            raise common.LaunchError(f"SLURM cannot write its output to {model_dir}: pass --log_dir=/shared/path")
        opts.log_dir = os.path.join(model_dir, "logs")
    processes = opts.nodes * (opts.gpus_per_node if opts.process_per == "gpu" else 1)
    if opts.module == "flanx.train":
        common.preflight_mesh(train, opts.nodes * opts.gpus_per_node, processes)
    script = render_script(opts, train)
    path = opts.script or f"{opts.job_name}.sbatch"
    submit = f"sbatch {shlex.quote(path)}"
    if opts.dry_run:
        steps = [f"mkdir -p {shlex.quote(opts.log_dir)}",
                 f"cat > {shlex.quote(path)} <<'{HEREDOC_END}'\n{script}{HEREDOC_END}", submit]
        return common.run_plan([common.Step(s) for s in steps], dry_run=True)
    os.makedirs(opts.log_dir, exist_ok=True)
    Path(path).write_text(script)
    if not opts.submit:
        print(f"wrote {path}; submit it with: {submit}")
        return 0
    return subprocess.run(["sbatch", path]).returncode


if __name__ == "__main__":
    sys.exit(common.main_wrapper(main))
