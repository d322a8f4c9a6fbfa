"""Multi-process runs: which process this is, who coordinates, and starting jax's runtime.

flanx runs one process per host on TPU pods and (by default) one process per
GPU on SLURM clusters; every process runs the same `python -m flanx.train`.

- `resolve(flags, env)` -> `ProcessInfo`: the coordinator address, process
  count, process id and local device ids, taken from (first match wins)
  explicit flags, SLURM's environment, flanx's own `FLANX_*` variables (what
  `launch/local.py` sets), a TPU VM (jax finds its peers itself), else one process;
- `initialize(info)`: `jax.distributed.initialize` with exactly those values
  (gloo collectives on CPU), returning the info as jax sees it afterwards.

`python -m flanx.distributed` (`__main__.py`) checks a multi-process set-up.
Mesh checks live in `flanx.mesh`; which process writes the run's outputs, and
how, in `flanx.io`; per-process log files in `flanx.progress`. Standard
library only at import (jax lazily), so the launchers can use it on a machine
with no accelerator stack.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import itertools
import os
import re
from typing import Mapping, Sequence

DEFAULT_PORT = 12355
DISTRIBUTED_FLAGS = ("coordinator_address", "num_processes", "process_id", "local_device_ids")
TPU_ENV_MARKERS = ("FLANX_TPU", "TPU_WORKER_HOSTNAMES", "TPU_PROCESS_ADDRESSES", "TPU_WORKER_ID",
                   "TPU_ACCELERATOR_TYPE", "TPU_NAME", "CLOUD_TPU_TASK_ID")
ENV_COORDINATOR, ENV_NUM, ENV_ID, ENV_LOCAL = (
    "FLANX_COORDINATOR_ADDRESS", "FLANX_NUM_PROCESSES", "FLANX_PROCESS_ID", "FLANX_LOCAL_DEVICE_IDS")


@dataclasses.dataclass(frozen=True)
class ProcessInfo:
    """One process's place in a run. `local_device_ids=None` means all visible devices.

    `source` says where the values came from: flags, slurm, env, tpu or single.
    On TPU the count and id are None until `initialize` asks jax.
    """
    coordinator_address: str | None
    num_processes: int | None
    process_id: int | None
    local_device_ids: tuple[int, ...] | None = None
    source: str = "single"

    @property
    def is_multi_process(self) -> bool:
        return self.source == "tpu" or (self.num_processes or 1) > 1


# ---------------------------------------------------------------- resolution

def expand_nodelist(nodelist: str) -> list[str]:
    """Expand SLURM's compressed host list: `gpu-[01-03,07],login1` -> gpu-01, gpu-02, gpu-03, gpu-07, login1.

    Zero padding is kept; several bracket groups in one name expand as a product.
    """
    hosts, depth, start = [], 0, 0
    for i, ch in enumerate(nodelist + ","):
        depth += {"[": 1, "]": -1}.get(ch, 0)
        if depth < 0 or depth > 1:
            raise ValueError(f"bad SLURM nodelist {nodelist!r}: unbalanced or nested brackets")
        if ch == "," and depth == 0:
            if nodelist[start:i].strip():
                hosts.extend(_expand_host(nodelist[start:i].strip(), nodelist))
            start = i + 1
    if depth != 0 or not hosts:
        raise ValueError(f"bad SLURM nodelist {nodelist!r}: expected e.g. 'node[01-04],login1'")
    return hosts


def _expand_host(pattern: str, whole: str) -> list[str]:
    parts = re.split(r"\[([^\]]*)\]", pattern)  # literal, ranges, literal, ranges, ..., literal
    choices = []
    for k, part in enumerate(parts):
        if k % 2 == 0:
            choices.append([part])
            continue
        values = []
        for item in part.split(","):
            m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", item)
            if not m:
                raise ValueError(f"bad SLURM nodelist {whole!r}: range {item!r} is not N or N-M")
            lo, hi = m.group(1), m.group(2) or m.group(1)
            if int(hi) < int(lo):
                raise ValueError(f"bad SLURM nodelist {whole!r}: range {item!r} runs backwards")
            width = len(lo) if lo.startswith("0") else 0
            values += [str(v).zfill(width) for v in range(int(lo), int(hi) + 1)]
        choices.append(values)
    return ["".join(combo) for combo in itertools.product(*choices)]


def _parse_ids(value: str | Sequence[int] | None, name: str) -> tuple[int, ...] | None:
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "all")):
        return None
    if isinstance(value, str):
        try:
            return tuple(int(v) for v in value.split(","))
        except ValueError:
            raise ValueError(f"{name}={value!r}: expected comma-separated device ids like 0,1 or 'all'") from None
    return tuple(int(v) for v in value)


def _to_int(value, name: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}={value!r} is not an integer") from None


def _checked(info: ProcessInfo, origin: str) -> ProcessInfo:
    if info.num_processes is not None:
        if info.num_processes < 1:
            raise ValueError(f"{origin}: the number of processes is {info.num_processes}; it must be >= 1")
        if not 0 <= info.process_id < info.num_processes:
            raise ValueError(f"{origin}: process id {info.process_id} is outside 0..{info.num_processes - 1}")
    if info.num_processes and info.num_processes > 1:
        addr = info.coordinator_address or ""
        if not re.fullmatch(r".+:\d+", addr):
            raise ValueError(f"{origin}: coordinator address {addr!r} must be HOST:PORT, e.g. 10.0.0.2:12355")
    if info.num_processes == 1:  # one process needs no coordinator
        return dataclasses.replace(info, coordinator_address=None)
    return info


def _from_flags(flags: Mapping) -> ProcessInfo | None:
    given = {k: v for k, v in flags.items() if v is not None and k in DISTRIBUTED_FLAGS}
    if not given:
        return None
    missing = [k for k in ("num_processes", "process_id") if k not in given]
    if "coordinator_address" not in given and int(given.get("num_processes", 1)) > 1:
        missing.insert(0, "coordinator_address")
    if missing:
        raise ValueError("distributed flags are incomplete: also pass " + ", ".join(f"--{m}" for m in missing))
    return _checked(ProcessInfo(given.get("coordinator_address"), _to_int(given["num_processes"], "--num_processes"),
                                _to_int(given["process_id"], "--process_id"),
                                _parse_ids(given.get("local_device_ids"), "--local_device_ids"), "flags"), "flags")


def _from_slurm(env: Mapping[str, str]) -> ProcessInfo | None:
    if "SLURM_PROCID" not in env or "SLURM_NTASKS" not in env:
        return None
    nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
    num = _to_int(env["SLURM_NTASKS"], "SLURM_NTASKS")
    if num > 1 and not nodelist:
        raise ValueError("SLURM_NTASKS > 1 but neither SLURM_STEP_NODELIST nor SLURM_JOB_NODELIST is set: "
                         "start the processes with srun inside the allocation")
    port = env.get("MASTER_PORT") or (
        str(20000 + _to_int(env["SLURM_JOB_ID"], "SLURM_JOB_ID") % 10000) if env.get("SLURM_JOB_ID") else str(DEFAULT_PORT))
    coordinator = f"{expand_nodelist(nodelist)[0]}:{port}" if nodelist else None
    return _checked(ProcessInfo(coordinator, num, _to_int(env["SLURM_PROCID"], "SLURM_PROCID"),
                                _slurm_local_ids(env, num), "slurm"), "SLURM environment")


def _slurm_local_ids(env: Mapping[str, str], num: int) -> tuple[int, ...] | None:
    """Which GPUs this task drives: all visible ones with one task per node, else GPU SLURM_LOCALID."""
    if ENV_LOCAL in env:
        return _parse_ids(env[ENV_LOCAL], ENV_LOCAL)
    visible = [v for v in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    nodes = env.get("SLURM_STEP_NUM_NODES") or env.get("SLURM_JOB_NUM_NODES") or env.get("SLURM_NNODES")
    one_task_per_node = nodes is not None and _to_int(nodes, "SLURM_NNODES") == num
    if len(visible) == 1 or one_task_per_node or "SLURM_LOCALID" not in env:
        return None
    return (_to_int(env["SLURM_LOCALID"], "SLURM_LOCALID"),)


def _from_flanx_env(env: Mapping[str, str]) -> ProcessInfo | None:
    names = (ENV_COORDINATOR, ENV_NUM, ENV_ID)
    present = [n for n in names if env.get(n)]
    if not present:
        return None
    need = [n for n in names if not env.get(n) and not (n == ENV_COORDINATOR and env.get(ENV_NUM) == "1")]
    if need:
        raise ValueError(f"{', '.join(present)} set but {', '.join(need)} missing: set all of {', '.join(names)}")
    return _checked(ProcessInfo(env.get(ENV_COORDINATOR), _to_int(env[ENV_NUM], ENV_NUM), _to_int(env[ENV_ID], ENV_ID),
                                _parse_ids(env.get(ENV_LOCAL), ENV_LOCAL), "env"), "FLANX_* environment")


def on_tpu_vm(env: Mapping[str, str] | None = None) -> bool:
    """TPU environment markers, or a TPU device node with libtpu installed."""
    env = os.environ if env is None else env
    if any(env.get(name) for name in TPU_ENV_MARKERS):
        return True
    device = os.path.exists("/dev/accel0") or os.path.exists("/dev/vfio/0")
    return device and importlib.util.find_spec("libtpu") is not None


def resolve(flags: Mapping | None = None, env: Mapping[str, str] | None = None) -> ProcessInfo:
    """Where this process sits: flags, else SLURM, else FLANX_* env, else TPU, else one process."""
    env = os.environ if env is None else env
    for found in (_from_flags(flags or {}), _from_slurm(env), _from_flanx_env(env)):
        if found is not None:
            return found
    if on_tpu_vm(env):
        return ProcessInfo(None, None, None, None, "tpu")
    return ProcessInfo(None, 1, 0, None, "single")


def split_distributed_args(argv: Sequence[str]) -> tuple[dict, list[str]]:
    """Pull `--coordinator_address=`, `--num_processes=`, `--process_id=`, `--local_device_ids=` out of argv."""
    flags, rest = {}, []
    it = iter(argv)
    for arg in it:
        name, eq, value = arg[2:].partition("=") if arg.startswith("--") else ("", "", "")
        if name in DISTRIBUTED_FLAGS:
            if not eq:
                value = next(it, None)
                if value is None:
                    raise ValueError(f"--{name} needs a value")
            flags[name] = value
        else:
            rest.append(arg)
    return flags, rest


def initialize(info: ProcessInfo | None = None, *, coordinator_address: str | None = None,
               num_processes: int | None = None, process_id: int | None = None,
               local_device_ids: str | Sequence[int] | None = None, timeout_s: int = 300) -> ProcessInfo:
    """Start jax's distributed runtime (no-op for one process); return the ProcessInfo jax reports.

    `initialize()` resolves from the environment; keyword values act as explicit flags.
    """
    if info is None:
        info = resolve(dict(coordinator_address=coordinator_address, num_processes=num_processes,
                            process_id=process_id, local_device_ids=local_device_ids))
    if not info.is_multi_process:
        return info
    import jax
    if not jax.distributed.is_initialized():
        if info.source == "tpu":
            jax.distributed.initialize(initialization_timeout=timeout_s)  # jax reads the TPU metadata itself
        else:
            # CPU processes need a collectives backend; it changes nothing for GPU computations.
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
            jax.distributed.initialize(
                coordinator_address=info.coordinator_address, num_processes=info.num_processes,
                process_id=info.process_id,
                local_device_ids=list(info.local_device_ids) if info.local_device_ids is not None else None,
                cluster_detection_method="deactivate",  # we resolved everything; jax must not guess again
                initialization_timeout=timeout_s)
    return dataclasses.replace(info, num_processes=jax.process_count(), process_id=jax.process_index())
