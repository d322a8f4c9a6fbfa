"""Device meshes, logical-axis sharding rules and the multi-host data layout.

flanx lays every array out on a 3-axis `jax.sharding.Mesh`:

- `data`: pure data parallelism (parameters replicated);
- `fsdp`: data parallelism with parameters and optimizer state sharded
  along their `embed` dimension (ZeRO-3 style, gathered per use by XLA);
- `model`: tensor parallelism over `heads`/`joined_kv`, `mlp` and `vocab`.

The model names each parameter dimension with a logical axis (`embed`,
`mlp`, `heads`, `joined_kv`, `kv`, `vocab`, `relpos_buckets`, `layers`);
`LOGICAL_AXIS_RULES` maps those names onto mesh axes, so one rule table
serves data-parallel, FSDP and tensor-parallel layouts: the mesh sizes pick
the layout. A dimension not divisible by its mesh axes stays replicated.

The global batch is split over `data` x `fsdp`; `host_shard` says which slice
of it this process loads (pass it to seqio as `ShardInfo(index, num_shards)`),
and `to_global_batch` assembles the host-local numpy batches into global
`jax.Array`s. Mesh sizes are checked by `flanx.mesh` (shared with the
launchers). This module imports neither TensorFlow nor seqio.
"""
from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any, Mapping, Sequence

import jax
import numpy as np
from flax import traverse_util
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from flanx.mesh import BATCH_AXES, MESH_AXES, validate_mesh

logger = logging.getLogger("flanx")

# logical axis name -> mesh axis (or axes, or None = replicated).
LOGICAL_AXIS_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", BATCH_AXES),
    ("vocab", "model"),
    ("embed", "fsdp"),
    ("mlp", "model"),
    ("heads", "model"),
    ("joined_kv", "model"),
    ("kv", None),
    ("relpos_buckets", None),
    ("layers", None),
    ("length", None),
)


@dataclasses.dataclass(frozen=True)
class HostShard:
    """The slice of the global batch this process loads (seqio.ShardInfo fields)."""
    index: int
    num_shards: int
    local_batch_size: int


def mesh_shape(sizes: Mapping[str, int] | Any, num_devices: int, global_batch_size: int | None = None,
               num_processes: int = 1) -> tuple[int, int, int]:
    """Resolve `{data, fsdp, model}` sizes (one may be -1) against `num_devices`.

    Errors (from `flanx.mesh.validate_mesh`) name the MESH_* / BATCH_SIZE
    macro to change.
    """
    if not isinstance(sizes, Mapping):
        sizes = {a: getattr(sizes, a) for a in MESH_AXES}
    shape = validate_mesh(dict(sizes), num_devices, global_batch_size, num_processes)
    return tuple(shape[a] for a in MESH_AXES)


def create_mesh(sizes: Mapping[str, int] | Any = None, devices: Sequence[Any] | None = None,
                global_batch_size: int | None = None) -> Mesh:
    """A `Mesh` with axes (data, fsdp, model) over `devices` (default: all, across processes)."""
    all_devices = devices is None
    devices = list(jax.devices() if all_devices else devices)
    shape = mesh_shape(sizes or {"data": -1}, len(devices), global_batch_size,
                       jax.process_count() if all_devices else 1)
    try:
        from jax.experimental import mesh_utils
        array = mesh_utils.create_device_mesh(shape, devices)
    except Exception:  # noqa: BLE001 - topologies mesh_utils does not know: plain order
        array = np.array(devices).reshape(shape)
    return Mesh(array, MESH_AXES)


def _rule_table(rules) -> dict[str, tuple[str, ...]]:
    table = {}
    for name, target in rules:
        if target is None:
            table[name] = ()
        elif isinstance(target, str):
            table[name] = (target,)
        else:
            table[name] = tuple(target)
    return table


def logical_to_spec(axes: Sequence[str | None], shape: Sequence[int], mesh: Mesh,
                    rules=LOGICAL_AXIS_RULES) -> P:
    """PartitionSpec for an array with logical `axes` and `shape` on `mesh`.

    `mesh` needs only `.shape` (axis name -> size), so an abstract mesh works.

    A mesh axis is used once per array (first dimension wins); a dimension
    whose size is not divisible by its mesh axes' size stays replicated.
    """
    if len(axes) != len(shape):
        raise ValueError(f"logical axes {tuple(axes)} do not match shape {tuple(shape)}")
    table = _rule_table(rules)
    used: set[str] = set()
    spec = []
    for name, dim in zip(axes, shape):
        targets = tuple(a for a in table.get(name, ()) if a not in used and mesh.shape[a] > 1) \
            if name is not None else ()
        size = math.prod(mesh.shape[a] for a in targets)
        if targets and dim % size == 0:
            used.update(targets)
            spec.append(targets[0] if len(targets) == 1 else targets)
        else:
            spec.append(None)
    return P(*spec)


def _flat(tree) -> dict[tuple[str, ...], Any]:
    """Flatten a nested dict whose leaves may be tuples (axis names) into path -> leaf."""
    return traverse_util.flatten_dict(tree, is_leaf=lambda k, v: not isinstance(v, Mapping))


def param_specs(axes_tree: Mapping, shapes_tree: Mapping, mesh: Mesh, rules=LOGICAL_AXIS_RULES) -> dict:
    """Nested dict of PartitionSpecs for parameters given their logical axes and shapes."""
    axes, shapes = _flat(axes_tree), _flat(shapes_tree)
    missing = set(shapes) - set(axes)
    if missing:
        raise ValueError(f"no logical axes for parameters: {sorted('/'.join(k) for k in missing)[:5]}")
    return traverse_util.unflatten_dict({
        k: logical_to_spec(axes[k], np.shape(v) if not hasattr(v, "shape") else v.shape, mesh, rules)
        for k, v in shapes.items()})


def state_specs(tree, params_specs: Mapping, params_shapes: Mapping) -> Any:
    """PartitionSpecs for an optimizer-state-like pytree whose leaves mirror parameters.

    A leaf whose key path ends with a parameter's path gets that parameter's
    spec when shapes agree, or the spec with the reduced dimension removed
    when it is a factored statistic (Adafactor's row/column moments); anything
    else (counters, hyperparameters) is replicated.
    """
    specs, shapes = _flat(params_specs), _flat(params_shapes)
    shapes = {k: tuple(v.shape) for k, v in shapes.items()}

    def leaf_spec(path, leaf):
        names = tuple(str(p.key) for p in path if isinstance(p, jax.tree_util.DictKey))
        shape = tuple(np.shape(leaf)) if not hasattr(leaf, "shape") else tuple(leaf.shape)
        for start in range(len(names)):
            key = names[start:]
            if key in specs:
                pspec, pshape = tuple(specs[key]) + (None,) * (len(shapes[key]) - len(specs[key])), shapes[key]
                if shape == pshape:
                    return P(*pspec)
                for i in range(len(pshape)):  # one reduced dimension
                    if pshape[:i] + pshape[i + 1:] == shape:
                        return P(*(pspec[:i] + pspec[i + 1:]))
                break
        return P()

    return jax.tree_util.tree_map_with_path(leaf_spec, tree)


def named(mesh: Mesh, specs) -> Any:
    """Map a pytree of PartitionSpecs to NamedShardings."""
    return jax.tree.map(lambda s: NamedSharding(mesh, s), specs, is_leaf=lambda x: isinstance(x, P))


def batch_spec() -> P:
    return P(BATCH_AXES)


def host_shard(mesh: Mesh, global_batch_size: int) -> HostShard:
    """Which contiguous rows of the global batch this process's devices hold.

    Processes whose devices hold the same rows (a `model` axis spanning hosts)
    get the same shard index and so load the same examples.
    """
    sharding = NamedSharding(mesh, batch_spec())
    index_map = sharding.addressable_devices_indices_map((global_batch_size,))
    starts = [idx[0].start or 0 for idx in index_map.values()]
    stops = [global_batch_size if idx[0].stop is None else idx[0].stop for idx in index_map.values()]
    lo, hi = min(starts), max(stops)
    local = hi - lo
    if global_batch_size % local or lo % local:
        raise ValueError(f"this process's devices hold rows {lo}:{hi} of BATCH_SIZE={global_batch_size}, "
                         "which is not one contiguous shard; order the mesh so each host's devices are adjacent")
    return HostShard(index=lo // local, num_shards=global_batch_size // local, local_batch_size=local)


def to_global_batch(local_batch: Mapping[str, np.ndarray], mesh: Mesh, global_batch_size: int) -> dict:
    """Assemble this host's numpy batch into global arrays sharded over (data, fsdp)."""
    sharding = NamedSharding(mesh, batch_spec())
    out = {}
    for k, v in local_batch.items():
        v = np.asarray(v)
        out[k] = jax.make_array_from_process_local_data(sharding, v, (global_batch_size,) + v.shape[1:])
    return out


def initialize_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None):
    """Start multi-process JAX once (before any computation), from arguments or the environment.

    Delegates to `flanx.distributed.initialize`: explicit values win, then
    SLURM / FLANX_* variables / a TPU VM; one process is a no-op.
    """
    from flanx import distributed

    return distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                                  process_id=process_id)
