"""Multi-process runs: who am I, who coordinates, does the mesh fit, who writes.

flanx runs one process per host on TPU pods and (by default) one process per
GPU on SLURM clusters; every process runs the same `python -m flanx.train`.
This module owns:

- `resolve(flags)` -> `ProcessInfo`: the coordinator address, process count,
  process id and local device ids, taken from (first match wins) explicit
  flags, SLURM's environment, flanx's own `FLANX_*` variables (what
  `launch/local.py` sets), a TPU VM (jax finds its peers itself), else a
  single process.
- `initialize(info)`: `jax.distributed.initialize` with exactly those values
  (gloo collectives on CPU), returning the info as jax sees it afterwards.
- `validate_mesh(...)`: the start-up check that a `data x fsdp x model` mesh
  fits the devices and that the batch splits evenly; errors say what to change.
- Output ownership: `is_primary()`, `primary_only`, `barrier`, `open_output`
  and per-process log files (`MODEL_DIR/logs/process_{i}.log`).

It imports only the standard library at module level (jax lazily), so the
launchers can use it on a machine with no accelerator stack.
"""
from __future__ import annotations

import dataclasses
import functools
import importlib.util
import itertools
import logging
import math
import os
import re
import tempfile
from typing import Mapping, Sequence

DEFAULT_PORT = 12355
MESH_AXES = ("data", "fsdp", "model")
MESH_MACROS = {"data": "MESH_DATA", "fsdp": "MESH_FSDP", "model": "MESH_MODEL"}
MESH_DEFAULTS = {"data": -1, "fsdp": 1, "model": 1}  # when a run sets no MESH_* macro: pure data parallel
DISTRIBUTED_FLAGS = ("coordinator_address", "num_processes", "process_id", "local_device_ids")
TPU_ENV_MARKERS = ("FLANX_TPU", "TPU_WORKER_HOSTNAMES", "TPU_PROCESS_ADDRESSES", "TPU_WORKER_ID",
                   "TPU_ACCELERATOR_TYPE", "TPU_NAME", "CLOUD_TPU_TASK_ID")
ENV_COORDINATOR, ENV_NUM, ENV_ID, ENV_LOCAL = (
    "FLANX_COORDINATOR_ADDRESS", "FLANX_NUM_PROCESSES", "FLANX_PROCESS_ID", "FLANX_LOCAL_DEVICE_IDS")

log = logging.getLogger(__name__)


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


# ---------------------------------------------------------------- mesh checks

def _factor_suggestion(shape: dict, num_devices: int) -> str:
    for axis in MESH_AXES:
        others = math.prod(v for k, v in shape.items() if k != axis)
        if num_devices % others == 0:
            return f"--gin.{MESH_MACROS[axis]}={num_devices // others} (or {MESH_MACROS[axis]} = -1 to fill)"
    return f"--gin.MESH_DATA={num_devices} --gin.MESH_FSDP=1 --gin.MESH_MODEL=1"


def _batch_suggestion(batch: int, multiple: int) -> str:
    lower = batch // multiple * multiple
    upper = lower + multiple
    return f"--gin.BATCH_SIZE={lower} or {upper}" if lower > 0 else f"--gin.BATCH_SIZE={upper}"


def validate_mesh(mesh_shape: Mapping[str, int], num_devices: int, global_batch_size: int | None = None,
                  num_processes: int = 1) -> dict[str, int]:
    """Resolve `-1` in a {data, fsdp, model} mesh and check it against the run; return the resolved shape.

    Raises ValueError naming the gin macro (MESH_DATA/MESH_FSDP/MESH_MODEL, BATCH_SIZE) and the value to use.
    """
    unknown = set(mesh_shape) - set(MESH_AXES)
    if unknown:
        raise ValueError(f"unknown mesh axes {sorted(unknown)}: flanx meshes have axes {', '.join(MESH_AXES)}")
    shape = {a: _to_int(mesh_shape.get(a, MESH_DEFAULTS[a]), MESH_MACROS[a]) for a in MESH_AXES}
    bad = [f"{MESH_MACROS[a]}={v}" for a, v in shape.items() if v == 0 or v < -1]
    if bad:
        raise ValueError(f"mesh sizes must be positive or -1 (fill): got {', '.join(bad)}")
    fill = [a for a, v in shape.items() if v == -1]
    if len(fill) > 1:
        raise ValueError(f"only one mesh axis may be -1 (fill), got {', '.join(MESH_MACROS[a] for a in fill)}; "
                         f"give the others explicit sizes")
    fixed = math.prod(v for v in shape.values() if v != -1)
    desc = " x ".join(f"{a}={v}" for a, v in shape.items())
    if fill:
        if num_devices % fixed:
            raise ValueError(
                f"mesh {desc}: the fixed axes multiply to {fixed}, which does not divide the {num_devices} devices "
                f"found; choose sizes whose product divides {num_devices}")
        shape[fill[0]] = num_devices // fixed
    elif fixed > num_devices:
        raise ValueError(
            f"mesh {desc} needs {fixed} devices but only {num_devices} were found: use a mesh preset for "
            f"{num_devices} devices (t5x_configs/meshes/) or set {_factor_suggestion(shape, num_devices)}")
    elif fixed != num_devices:
        raise ValueError(
            f"mesh {desc} uses {fixed} of the {num_devices} devices found; flanx needs data*fsdp*model == "
            f"device count: set {_factor_suggestion(shape, num_devices)}")
    if num_processes < 1 or num_devices % num_processes:
        raise ValueError(f"{num_devices} devices cannot be split evenly over {num_processes} processes")
    shards = shape["data"] * shape["fsdp"]
    if shards % num_processes and num_processes % shards:
        raise ValueError(
            f"mesh {desc} has data*fsdp = {shards} batch shards, which cannot be divided into whole per-host "
            f"batches for {num_processes} processes (one count must divide the other): change "
            f"{MESH_MACROS['fsdp'] if shape['fsdp'] > 1 else MESH_MACROS['data']} so that data*fsdp is a multiple "
            f"or a divisor of {num_processes}")
    if global_batch_size is not None:
        if global_batch_size < 1 or global_batch_size % shards:
            raise ValueError(
                f"BATCH_SIZE={global_batch_size} is not divisible by data*fsdp = {shape['data']}*{shape['fsdp']} = "
                f"{shards} (the batch is split over those axes): set {_batch_suggestion(global_batch_size, shards)}")
    return shape


def host_batch_size(global_batch_size: int, mesh_shape: Mapping[str, int], num_processes: int) -> int:
    """Examples each process loads per step for a validated mesh.

    With at least as many batch shards (data*fsdp) as processes every process loads its own
    BATCH_SIZE/num_processes rows; with fewer (the model axis spans processes) the processes
    holding one shard load the same BATCH_SIZE/(data*fsdp) rows.
    """
    shards = mesh_shape["data"] * mesh_shape["fsdp"]
    return global_batch_size // min(shards, num_processes)


def validate_runtime_mesh(mesh_shape: Mapping[str, int], global_batch_size: int | None = None) -> dict[str, int]:
    """`validate_mesh` against the devices and processes jax sees now (call after `initialize`)."""
    import jax
    return validate_mesh(mesh_shape, jax.device_count(), global_batch_size, jax.process_count())


# ---------------------------------------------------------------- who writes

def is_primary() -> bool:
    """True on process 0, the only process that writes run outputs (operative gin, metrics, TensorBoard)."""
    import jax
    return jax.process_index() == 0


def primary_only(fn):
    """Decorator: run `fn` on process 0; other processes get None."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return fn(*args, **kwargs) if is_primary() else None
    return wrapper


def barrier(name: str) -> None:
    """Wait until every process reaches `name` (e.g. after process 0 wrote a file others read)."""
    import jax
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(name)


def is_remote(path: str) -> bool:
    """`gs://...` and other `scheme://` paths, which plain `open` cannot write."""
    return re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", str(path)) is not None


def open_output(path: str, mode: str = "w"):
    """Open a file under MODEL_DIR for writing, local or `gs://` (parent folders are created)."""
    if is_remote(path):
        from etils import epath  # ships with orbax; gs:// needs gcsfs or TensorFlow's file system
        p = epath.Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        return p.open(mode)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    return open(path, mode)


def read_output(path: str) -> str | None:
    """The text of a file under MODEL_DIR, local or `gs://`; None when it does not exist."""
    if is_remote(path):
        from etils import epath
        p = epath.Path(path)
        return p.read_text() if p.exists() else None
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return f.read()


def process_log_path(model_dir: str, process_id: int) -> str:
    """`MODEL_DIR/logs/process_{i}.log`; for a remote MODEL_DIR a local file (FLANX_LOG_DIR or the temp dir)."""
    name = f"process_{process_id}.log"
    if is_remote(model_dir):
        local = os.environ.get("FLANX_LOG_DIR") or os.path.join(tempfile.gettempdir(), "flanx_logs")
        return os.path.join(local, name)
    return os.path.join(model_dir, "logs", name)


def setup_process_logging(model_dir: str, process_id: int, level: int = logging.INFO) -> str:
    """Log every record at `level`+ to this process's file; only process 0 shows INFO on the console.

    The file handler goes on the root logger and on the `flanx` logger when that one does not
    propagate (flanx.progress configures it so); other processes' console handlers there drop to
    WARNING. With a remote MODEL_DIR the local file is copied to MODEL_DIR/logs/ at exit.
    Returns the local log file path.
    """
    path = process_log_path(model_dir, process_id)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fmt = logging.Formatter(f"%(asctime)s [p{process_id}] %(levelname)s %(name)s: %(message)s")
    file_handler = logging.FileHandler(path, mode="a")
    console = logging.StreamHandler()  # library warnings still reach the console
    console.setLevel(logging.WARNING)
    for h in (file_handler, console):
        h.setFormatter(fmt)
        h._flanx_process_log = True
    root, flanx_logger = logging.getLogger(), logging.getLogger("flanx")
    for lg in [root] + ([flanx_logger] if not flanx_logger.propagate else []):
        for h in [h for h in lg.handlers if getattr(h, "_flanx_process_log", False)]:
            lg.removeHandler(h)
        if lg.level == logging.NOTSET or lg.level > level:
            lg.setLevel(level)
        if process_id != 0:
            for h in lg.handlers:
                if type(h) is logging.StreamHandler:
                    h.setLevel(max(h.level, logging.WARNING))
        lg.addHandler(file_handler)
    root.addHandler(console)
    if is_remote(model_dir):
        import atexit
        atexit.register(_upload_log, path, f"{model_dir.rstrip('/')}/logs/{os.path.basename(path)}")
    return path


def _upload_log(local: str, remote: str) -> None:
    try:
        with open(local) as src, open_output(remote) as dst:
            dst.write(src.read())
    except Exception as e:  # noqa: BLE001 - a failed log upload must not mask the run's own exit status
        log.warning("could not copy %s to %s: %s", local, remote, e)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m flanx.distributed [--mesh=D,F,M --batch_size=B]`: check a multi-process setup.

    Every process initializes, gathers all process ids over the network and prints one JSON
    line; with --mesh the mesh and batch are validated against the devices found.
    """
    import json
    import sys

    flags, rest = split_distributed_args(sys.argv[1:] if argv is None else argv)
    opts = dict(arg[2:].split("=", 1) for arg in rest if arg.startswith("--") and "=" in arg)
    info = initialize(resolve(flags))
    import jax
    import numpy as np
    from jax.experimental import multihost_utils
    gathered = np.asarray(multihost_utils.process_allgather(np.array([info.process_id]))).ravel()
    report = {"process_id": info.process_id, "num_processes": info.num_processes, "source": info.source,
              "coordinator_address": info.coordinator_address, "local_devices": jax.local_device_count(),
              "global_devices": jax.device_count(), "platform": jax.devices()[0].platform,
              "gathered_process_ids": gathered.tolist()}
    if "mesh" in opts:
        sizes = dict(zip(MESH_AXES, (int(v) for v in opts["mesh"].split(","))))
        batch = int(opts["batch_size"]) if "batch_size" in opts else None
        report["mesh"] = validate_runtime_mesh(sizes, batch)
    print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
