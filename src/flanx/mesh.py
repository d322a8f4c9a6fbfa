"""The `data x fsdp x model` mesh: its axes, the gin macros that size it, and the start-up checks.

One module for every place that checks a mesh: `flanx.partitioning` (before
it builds a `jax.sharding.Mesh`), the trainer, the launchers (before they
start anything) and `python -m flanx.distributed --mesh=...`.

- `MESH_AXES`, `BATCH_AXES` (the axes the batch is split over), `MESH_MACROS`
  (axis -> `MESH_DATA`/`MESH_FSDP`/`MESH_MODEL`), `MESH_DEFAULTS` (when a run
  sets no MESH_* macro: pure data parallel);
- `validate_mesh(mesh_shape, num_devices, global_batch_size, num_processes)`:
  resolve a `-1` axis and check the mesh fits the devices, the processes and
  the batch; `validate_runtime_mesh` does it against what jax sees;
- `check_batch_size(global_batch_size, mesh_shape, num_microbatches)`: the
  batch (and each microbatch) splits evenly over `data x fsdp`;
- `host_batch_size(...)`: the rows one process loads.

Errors are ValueErrors naming the macro to change and a value that works.
Standard library only at import (jax lazily), so the launchers can use it on a
machine with no accelerator stack.
"""
from __future__ import annotations

import math
from typing import Mapping

MESH_AXES = ("data", "fsdp", "model")
BATCH_AXES = ("data", "fsdp")
MESH_MACROS = {"data": "MESH_DATA", "fsdp": "MESH_FSDP", "model": "MESH_MODEL"}
MESH_DEFAULTS = {"data": -1, "fsdp": 1, "model": 1}  # when a run sets no MESH_* macro: pure data parallel


def _axis_size(value, axis: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{MESH_MACROS[axis]}={value!r} is not an integer") from None


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


def check_batch_size(global_batch_size: int, mesh_shape: Mapping[str, int], num_microbatches: int = 1) -> None:
    """Raise naming BATCH_SIZE unless the batch, and each of `num_microbatches` slices of it, split over data*fsdp."""
    data, fsdp = mesh_shape["data"], mesh_shape["fsdp"]
    shards, micro = data * fsdp, max(num_microbatches, 1)
    per_micro = global_batch_size // micro
    if global_batch_size >= 1 and global_batch_size % shards == 0 and per_micro % shards == 0:
        return
    split = f"data*fsdp = {data}*{fsdp} = {shards} (the batch is split over those axes)"
    if micro > 1:
        split = (f"data*fsdp = {data}*{fsdp} = {shards} in each of NUM_MICROBATCHES={micro} microbatches "
                 f"of {per_micro}")
    raise ValueError(f"BATCH_SIZE={global_batch_size} is not divisible by {split}: set "
                     f"{_batch_suggestion(global_batch_size, shards * micro)}")


def validate_mesh(mesh_shape: Mapping[str, int], num_devices: int, global_batch_size: int | None = None,
                  num_processes: int = 1) -> dict[str, int]:
    """Resolve `-1` in a {data, fsdp, model} mesh and check it against the run; return the resolved shape.

    Raises ValueError naming the gin macro (MESH_DATA/MESH_FSDP/MESH_MODEL, BATCH_SIZE) and the value to use.
    """
    unknown = set(mesh_shape) - set(MESH_AXES)
    if unknown:
        raise ValueError(f"unknown mesh axes {sorted(unknown)}: flanx meshes have axes {', '.join(MESH_AXES)}")
    shape = {a: _axis_size(mesh_shape.get(a, MESH_DEFAULTS[a]), a) for a in MESH_AXES}
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
        check_batch_size(global_batch_size, shape)
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
    """`validate_mesh` against the devices and processes jax sees now (call after `flanx.distributed.initialize`)."""
    import jax
    return validate_mesh(mesh_shape, jax.device_count(), global_batch_size, jax.process_count())
