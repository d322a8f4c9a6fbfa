"""Create (or reuse) a Cloud TPU VM slice, install flanx on every worker, train, tear down.

    python launch/tpu_pod.py --name=flanx-v4 --zone=us-central2-b --accelerator_type=v4-32 \\
        --wheel=dist/flanx-0.1.0-py3-none-any.whl \\
        --model_dir=gs://my-bucket/flanx/flan_t5_base_dialogsum \\
        --gin_file=runs/finetune.gin --gin_file=meshes/v4_32_data_model.gin

Steps, in order (`--dry_run` prints them as a bash script):
1. reuse the TPU VM if it exists and is not PREEMPTED (a preempted spot VM is
   deleted and created again), else `gcloud compute tpus tpu-vm create`;
2. install flanx[tpu] into `~/flanx_venv` on all workers (`--worker=all`) from
   a wheel (copied with scp) or a git ref, with uv and Python `--python_version`
   (the TPU images ship an older Python than flanx needs);
3. copy gin files that are not part of flanx's own `t5x_configs/` to
   `~/flanx_gin/` on every worker;
4. stop flanx processes left from an earlier run (they would hold the TPU);
5. run the same `python -m flanx.train ...` on all workers with `FLANX_TPU=1`
   (`flanx.distributed` then calls `jax.distributed.initialize()` with no
   arguments; jax reads the slice's metadata). Output streams here and is
   kept in `~/flanx_train.log` on each worker; `--detach` starts it in the
   background instead;
6. with `--teardown`, delete the TPU VM afterwards, even when training failed.
   `--teardown` without gin files only deletes.

Re-running the same command after a preemption recreates the VM, reinstalls
and resumes from the latest complete checkpoint in MODEL_DIR.
"""
from __future__ import annotations

import argparse
import re
import shlex
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from launch import common  # noqa: E402

RUNTIME_VERSIONS = {"v2": "tpu-ubuntu2204-base", "v3": "tpu-ubuntu2204-base", "v4": "tpu-ubuntu2204-base",
                    "v5p": "v2-alpha-tpuv5", "v5litepod": "v2-alpha-tpuv5-lite", "v6e": "v2-alpha-tpuv6e"}
VENV = "$HOME/flanx_venv"
UV = "$HOME/.local/bin/uv"
REMOTE_GIN_DIR = "flanx_gin"
REMOTE_LOG = "$HOME/flanx_train.log"


def topology(accelerator_type: str) -> tuple[int, int]:
    """(jax devices, hosts) of a slice: v4-32 -> 16 chips on 4 hosts; v5litepod-16 -> 16 chips on 4 hosts."""
    m = re.fullmatch(r"(v2|v3|v4|v5p|v5litepod|v6e)-(\d+)", accelerator_type)
    if not m:
        raise common.LaunchError(
            f"--accelerator_type={accelerator_type!r}: expected e.g. v4-32, v5p-64, v5litepod-16, v6e-16")
    gen, n = m.group(1), int(m.group(2))
    if gen in ("v2", "v3"):  # one jax device per TensorCore, 8 per host
        return n, max(1, n // 8)
    if gen in ("v4", "v5p"):  # the type counts TensorCores; one megacore chip (2 cores) = one device, 4 per host
        return n // 2, max(1, n // 8)
    return n, 1 if n <= 8 else n // 4  # v5e / v6e count chips; multi-host slices have 4 chips per host


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    p.add_argument("--name", required=True, help="TPU VM name")
    p.add_argument("--zone", required=True)
    p.add_argument("--project", default=None, help="GCP project (default: gcloud's configured project)")
    p.add_argument("--accelerator_type", default=None, help="e.g. v4-32, v5litepod-16, v5p-128")
    p.add_argument("--runtime_version", default=None, help="TPU VM image (default chosen from the accelerator type)")
    p.add_argument("--spot", action="store_true", help="create a spot (preemptible) TPU VM")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--wheel", default=None, help="install flanx from this local wheel (python -m build --wheel)")
    src.add_argument("--git_ref", default=None, help="install flanx from this branch/tag/commit of --repo_url")
    src.add_argument("--skip_install", action="store_true", help="flanx is already installed in ~/flanx_venv")
    p.add_argument("--repo_url", default=None, help="git URL of the flanx repository (with --git_ref)")
    p.add_argument("--python_version", default="3.11")
    p.add_argument("--module", default="flanx.train")
    p.add_argument("--model_dir", default=None, help="gs:// run directory (becomes --gin.MODEL_DIR)")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                   help="extra environment for training, repeatable; $VARS expand on the worker (e.g. $HOME)")
    p.add_argument("--worker_setup", action="append", default=[], metavar="SHELL",
                   help="shell line run on all workers before training (after install), repeatable; "
                        "e.g. copying the datasets: 'gcloud storage cp -r gs://B/flanx_data $HOME/'")
    p.add_argument("--detach", action="store_true", help="start training in the background and return")
    p.add_argument("--teardown", action="store_true", help="delete the TPU VM after the run (or only delete)")
    p.add_argument("--dry_run", action="store_true", help="print the commands, run nothing")
    return p


def gcloud(verb: str, opts, *args: str) -> list[str]:
    cmd = ["gcloud", "compute", "tpus", "tpu-vm", verb, opts.name, f"--zone={opts.zone}"]
    if opts.project:
        cmd.append(f"--project={opts.project}")
    return cmd + list(args)


def scp_all(opts, local: str, remote_dir: str) -> str:
    cmd = ["gcloud", "compute", "tpus", "tpu-vm", "scp", local, f"{opts.name}:{remote_dir}", "--worker=all",
           f"--zone={opts.zone}"]
    return shlex.join(cmd + ([f"--project={opts.project}"] if opts.project else []))


def ssh_all(opts, remote: str) -> str:
    return shlex.join(gcloud("ssh", opts, "--worker=all", f"--command={remote}"))


def ensure_vm(opts) -> str:
    describe = shlex.join(gcloud("describe", opts, "--format=value(state)"))
    delete = shlex.join(gcloud("delete", opts, "--quiet"))
    create = gcloud("create", opts, f"--accelerator-type={opts.accelerator_type}",
                    f"--version={opts.runtime_version}")
    if opts.spot:
        create.append("--spot")
    return (f"state=$({describe} 2>/dev/null || true); "
            f"if [ \"$state\" = PREEMPTED ]; then {delete}; state=; fi; "
            f"if [ -z \"$state\" ]; then {shlex.join(create)}; fi")


def install_steps(opts) -> list[str]:
    if opts.skip_install:
        return []
    steps = []
    if opts.wheel:
        wheel = Path(opts.wheel)
        if not opts.dry_run and not wheel.is_file():
            raise common.LaunchError(f"--wheel={opts.wheel} does not exist: build it with `python -m build --wheel`")
        steps.append(scp_all(opts, str(wheel), "~/"))
        requirement = f'"flanx[tpu] @ file://$HOME/{wheel.name}"'
    elif opts.git_ref:
        if not opts.repo_url:
            raise common.LaunchError("--git_ref needs --repo_url=https://github.com/ORG/flanx.git")
        requirement = shlex.quote(f"flanx[tpu] @ git+{opts.repo_url}@{opts.git_ref}")
    else:
        raise common.LaunchError("say how to install flanx on the workers: --wheel=PATH, --git_ref=REF "
                                 "(with --repo_url), or --skip_install")
    remote = (f"set -e; python3 -m pip install --user --quiet --upgrade uv; "
              f"{UV} venv --allow-existing --python {opts.python_version} {VENV}; "
              f"{UV} pip install --python {VENV}/bin/python --reinstall-package flanx {requirement}")
    return steps + [ssh_all(opts, remote)]


def gin_upload_steps(opts, train: common.TrainArgs) -> tuple[list[str], list[str]]:
    """Copy user gin files to the workers; return (steps, gin file names as the workers see them)."""
    steps, names, uploads = [], [], []
    for name in train.gin_files:
        packaged = common.packaged_name(name)
        if packaged is not None:
            names.append(packaged)
        elif Path(name).is_file():
            uploads.append(name)
            names.append(f"{REMOTE_GIN_DIR}/{Path(name).name}")
        else:
            raise common.LaunchError(f"gin file {name!r} is neither a local file nor one of flanx's t5x_configs/")
    if uploads:
        steps.append(ssh_all(opts, f"mkdir -p $HOME/{REMOTE_GIN_DIR}"))
        steps += [scp_all(opts, f, f"~/{REMOTE_GIN_DIR}/") for f in uploads]
    return steps, names


def remote_env(env: dict[str, str]) -> str:
    """KEY="VALUE" pairs for the worker's shell: $VARS expand there, quotes and backticks do not."""
    def quote(v: str) -> str:
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"').replace("`", "\\`") + '"'
    return " ".join(f"{k}={v if v.isalnum() else quote(v)}" for k, v in env.items())


def train_step(opts, train: common.TrainArgs, gin_names: list[str]) -> str:
    env = {"FLANX_TPU": "1", **common.parse_env_pairs(opts.env)}
    command = f"{remote_env(env)} {VENV}/bin/python -m {opts.module} {shlex.join(train.argv(gin_names))}"
    if opts.detach:
        remote = f"cd $HOME && nohup env {command} > {REMOTE_LOG} 2>&1 < /dev/null &"
    else:
        remote = f"set -o pipefail; cd $HOME && {command} 2>&1 | tee {REMOTE_LOG}"
    return ssh_all(opts, remote)


def plan(opts, train: common.TrainArgs) -> list[common.Step]:
    steps = []
    if opts.detach and opts.teardown:
        raise common.LaunchError("--detach and --teardown together would delete the VM under the running job; "
                                 "detach now and run --teardown alone when training is done")
    if train.gin_files:
        if not opts.accelerator_type:
            raise common.LaunchError("--accelerator_type is required to run (e.g. v4-32, v5litepod-16)")
        devices, hosts = topology(opts.accelerator_type)
        opts.runtime_version = opts.runtime_version or RUNTIME_VERSIONS[opts.accelerator_type.split("-")[0]]
        common.require_model_dir(train, remote_only=True)
        if opts.module == "flanx.train":
            common.preflight_mesh(train, devices, hosts)
        uploads, gin_names = gin_upload_steps(opts, train)
        steps += [ensure_vm(opts), *install_steps(opts), *[ssh_all(opts, line) for line in opts.worker_setup],
                  *uploads,
                  ssh_all(opts, "pkill -f '[f]lanx_venv/bin/python -m flanx' || true"),
                  train_step(opts, train, gin_names)]
    elif not opts.teardown:
        raise common.LaunchError("nothing to do: pass --gin_file=... to train, or --teardown to delete the TPU VM")
    result = [common.Step(s) for s in steps]
    if opts.teardown:
        result.append(common.Step(shlex.join(gcloud("delete", opts, "--quiet")), always=True))
    return result


def main(argv: list[str]) -> int:
    opts, rest = build_parser().parse_known_args(argv)
    train = common.split_train_args(rest, opts.model_dir)
    return common.run_plan(plan(opts, train), dry_run=opts.dry_run)


if __name__ == "__main__":
    sys.exit(common.main_wrapper(main))
