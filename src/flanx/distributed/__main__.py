"""`python -m flanx.distributed [--mesh=D,F,M --batch_size=B]`: check a multi-process set-up.

Every process resolves its place (flags, SLURM, `FLANX_*`, TPU), starts jax's
runtime, gathers all process ids over the network and prints one JSON line;
with --mesh the mesh and batch are validated against the devices found
(`flanx.mesh.validate_runtime_mesh`). Launch it like a run, e.g.
`python launch/local.py --num_processes=2 --log_dir=/tmp/probe --module=flanx.distributed --mesh=2,1,1`.
"""
from __future__ import annotations

import json
import sys
from typing import Sequence

from flanx import distributed, mesh


def main(argv: Sequence[str] | None = None) -> int:
    flags, rest = distributed.split_distributed_args(sys.argv[1:] if argv is None else argv)
    opts = dict(arg[2:].split("=", 1) for arg in rest if arg.startswith("--") and "=" in arg)
    info = distributed.initialize(distributed.resolve(flags))
    import jax
    import numpy as np
    from jax.experimental import multihost_utils
    gathered = np.asarray(multihost_utils.process_allgather(np.array([info.process_id]))).ravel()
    report = {"process_id": info.process_id, "num_processes": info.num_processes, "source": info.source,
              "coordinator_address": info.coordinator_address, "local_devices": jax.local_device_count(),
              "global_devices": jax.device_count(), "platform": jax.devices()[0].platform,
              "gathered_process_ids": gathered.tolist()}
    if "mesh" in opts:
        sizes = dict(zip(mesh.MESH_AXES, (int(v) for v in opts["mesh"].split(","))))
        batch = int(opts["batch_size"]) if "batch_size" in opts else None
        report["mesh"] = mesh.validate_runtime_mesh(sizes, batch)
    print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    from flanx.errors import run
    raise SystemExit(run(main, sys.argv[1:], prog="python -m flanx.distributed"))
