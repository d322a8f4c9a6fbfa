"""Where a flanx train step spends its time: forward, backward, optimizer, packing masks.

    python -m benchmarks.profile_step --model t5_1_1_small --batch_size 8 [--trace_dir /tmp/trace]

Times (medians over `--repeats`, after a warm-up call) jitted pieces of the
train step on one packed batch (`common.packed_batch`):

- `forward`: logits only;  `forward_loss`: logits + T5X loss (z-loss);
- `grad`: loss and gradients (`jax.value_and_grad`);
- `step`: the full `make_train_step` step (gradients + Adafactor update);
- `optimizer`: the Adafactor update alone, on parameter-shaped gradients;
- `grad_unpacked`: `grad` on the same tokens without segment ids / positions
  (what packing-aware attention masks and per-row relative position biases cost).

For each piece XLA's cost analysis gives FLOPs and bytes accessed, so the
achieved GFLOP/s shows whether a piece is compute- or memory-bound.

`--trace_dir DIR` also records a `jax.profiler` trace of `--trace_steps` full
steps and attributes each XLA op's time (from the trace) to a part of the model
via the op's `op_name` metadata in the optimized HLO: dense matmuls, attention
einsums, attention softmax / mask / bias, norms, MLP activations, the
optimizer and the rest (reading the trace uses TensorFlow's xplane proto; CPU
traces only). Each op's time is its median over the traced steps, so a step
slowed by other jobs does not skew the split. It then sets the matmul time
against the matmul work (`matmul_summary`): the dense layers' and the
attention products' FLOPs (`benchmarks.mfu.model_flops`) over the time their
ops took, next to the rate of a bare XLA matmul of the MLP's shape, forward
and backward, measured in the same process. `--cores 1` pins the process to
one core, where op time is CPU time: with `--trace_steps 3` or more the split
holds up on a shared machine (`seconds` are then scaled to the step's CPU
time). `--dump_hlo DIR` writes the step's optimized HLO. `--pieces step` times
only the full step (what `make bench` runs, one core, when a training target is
missed: `benchmarks.run_all`).
"""
from __future__ import annotations

import argparse
import gzip
import json
import re
import statistics
from pathlib import Path

from benchmarks import common

PACKING = ("encoder_segment_ids", "decoder_segment_ids", "encoder_positions", "decoder_positions")


def _timed(fn, warmup: int, repeats: int) -> dict:
    """Median wall-clock and CPU seconds of `repeats` calls of `fn` after `warmup`."""
    import time

    for _ in range(warmup):
        fn()
    wall, cpu = [], []
    for _ in range(repeats):
        start, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - c0)
    return {"median_s": statistics.median(wall), "cpu_median_s": statistics.median(cpu)}


def profile(model: str, batch_size: int, inputs_length: int, targets_length: int, repeats: int = 3,
            scan: bool = False, dtype: str = "float32", trace_dir: str | None = None,
            dump_hlo: str | None = None, trace_steps: int = 1, pieces: tuple[str, ...] | None = None) -> list[dict]:
    """Time the pieces (all, or those named in `pieces`; `step` always) and optionally trace the step."""
    import jax
    import jax.numpy as jnp
    import optax

    from flanx.models import get_config, init_params
    from flanx.train import losses, optim, step as step_lib
    from flanx.train.config import LossConfig, OptimizerConfig

    config = get_config(model, scan_layers=scan, dtype=dtype)
    params = init_params(config, jax.random.PRNGKey(0))
    batch = {k: jnp.asarray(v) for k, v in
             common.packed_batch(batch_size, inputs_length, targets_length, config.vocab_size).items()}
    unpacked = {k: v for k, v in batch.items() if k not in PACKING}
    apply = step_lib.model_apply_fn(config)
    rng = jax.random.PRNGKey(1)
    opt_cfg = OptimizerConfig(learning_rate=1e-3)
    opt = optim.make_optimizer(opt_cfg)
    train_step = step_lib.make_train_step(apply, opt, optim.make_schedule(opt_cfg), LossConfig())
    state = step_lib.init_state(params, opt, None, 0)

    def loss_fn(p, b):
        logits = apply(p, b, rng, config.dropout_rate > 0)
        weights = losses.loss_weights(b, "per_token")
        sums = losses.weighted_sums(logits, b, weights, 1e-4, 0.0)
        return sums["loss_sum"] / losses.normalizing_factor(b, "per_token")

    def update(grads, opt_state, p):
        updates, opt_state = opt.update(grads, opt_state, p)
        return optax.apply_updates(p, updates), opt_state

    jobs = {
        "forward": (jax.jit(lambda p, b: apply(p, b, rng, False)), (params, batch)),
        "forward_loss": (jax.jit(loss_fn), (params, batch)),
        "grad": (jax.jit(jax.value_and_grad(loss_fn)), (params, batch)),
        "grad_unpacked": (jax.jit(jax.value_and_grad(loss_fn)), (params, unpacked)),
        "optimizer": (jax.jit(update), (params, state.opt_state, params)),
        "step": (jax.jit(train_step), (state, batch)),
    }
    rows, compiled_step = [], None
    for name, (fn, args) in jobs.items():
        if pieces is not None and name not in pieces and name != "step":
            continue
        compiled = fn.lower(*args).compile()
        cost = compiled.cost_analysis()
        cost = (cost[0] if isinstance(cost, (list, tuple)) else cost) or {}
        timed = _timed(lambda: jax.block_until_ready(compiled(*args)), 1, repeats)
        med = timed["median_s"]
        flops, nbytes = cost.get("flops"), cost.get("bytes accessed")
        rows.append({"piece": name, **timed, "xla_gflops": flops / 1e9 if flops else None,
                     "gflop_per_s": flops / med / 1e9 if flops else None,
                     "gbytes": nbytes / 1e9 if nbytes else None})
        if name == "step":
            compiled_step = compiled
            if dump_hlo:
                Path(dump_hlo).mkdir(parents=True, exist_ok=True)
                (Path(dump_hlo) / "train_step.hlo.txt").write_text(compiled.as_text())
    step_s = next(r["median_s"] for r in rows if r["piece"] == "step")
    for r in rows:
        r["share_of_step"] = r["median_s"] / step_s
    if trace_dir:
        with jax.profiler.trace(trace_dir):
            for _ in range(trace_steps):
                jax.block_until_ready(compiled_step(state, batch))
        Path(trace_dir, "train_step.hlo.txt").write_text(compiled_step.as_text())
    return rows


def bare_matmul_rate(rows: int = 4096, inner: int = 512, cols: int = 1024, repeats: int = 5) -> dict:
    """GFLOP/s of a plain jitted `[rows, inner] @ [inner, cols]`, forward and both gradients
    (the MLP's shapes in a batch-8 x 512 step), by wall clock and by this process's CPU time."""
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.PRNGKey(0), (rows, inner))
    w = jax.random.normal(jax.random.PRNGKey(1), (inner, cols))
    fwd_bwd = jax.jit(jax.value_and_grad(lambda a, w: jnp.sum(jnp.square(a @ w)), argnums=(0, 1)))
    timed = _timed(lambda: jax.block_until_ready(fwd_bwd(a, w)), 2, repeats)
    flops = 3 * 2 * rows * inner * cols
    return {"shape": f"[{rows},{inner}]@[{inner},{cols}] fwd+bwd", "gflop_per_s": flops / timed["median_s"] / 1e9,
            "cpu_gflop_per_s": flops / timed["cpu_median_s"] / 1e9}


def matmul_summary(model: str, batch_size: int, inputs_length: int, targets_length: int, parts: list[dict],
                   bare_gflop_per_s: float | None = None, passes: int = 3) -> list[dict]:
    """Matmul work against matmul time: FLOPs of the dense layers (logits included) and of the
    attention products over the seconds their ops took in `parts` (`attribute_trace`), and
    that rate as a fraction of `bare_gflop_per_s` (`bare_matmul_rate`). `passes`: 3 for a
    train step (forward + backward), 1 for a forward pass or decoding."""
    from benchmarks import mfu
    from flanx.models import get_config

    flops = mfu.model_flops(get_config(model), inputs_length, targets_length, batch_size)["forward_breakdown"]
    attention = passes * batch_size * (flops["encoder_attention"] + flops["decoder_attention"])
    dense = passes * batch_size * sum(v for k, v in flops.items() if not k.endswith("attention"))
    seconds = {p["part"]: p["seconds"] for p in parts}
    total = sum(seconds.values()) or 1.0
    out = []
    for name, work, prefix in (("dense matmuls (incl. logits)", dense, "dense matmuls"),
                               ("attention products", attention, "attention einsums")):
        t = sum(v for k, v in seconds.items() if k.startswith(prefix))
        out.append({"matmuls": name, "gflop": work / 1e9, "seconds": t, "share_of_step": t / total,
                    "gflop_per_s": work / t / 1e9 if t else None,
                    "vs_bare_xla": work / t / 1e9 / bare_gflop_per_s if t and bare_gflop_per_s else None})
    return out


def _category(op_name: str) -> str:
    """Which part of the train step an HLO op's `op_name` belongs to."""
    backward = "transpose(" in op_name
    path = re.sub(r"jit\([^)]*\)/|transpose\(|jvp\(|\)", "", op_name)
    module, _, prim = path.rpartition("/")
    if re.search(r"attention(/[a-z,]+->[a-z]+)?$", module) or "dot_product_attention" in op_name:
        part = "attention einsums" if prim == "dot_general" else "attention softmax/mask/bias"
    elif (re.search(r"/(query|key|value|out|wi|wi_\d|wo|logits_dense)$", module)
          and prim in ("dot_general", "transpose")):
        part = "dense matmuls (incl. logits)"
    elif "relpos_bias" in module:
        part = "relative position bias"
    elif "_norm" in module:
        part = "RMS norms"
    elif module.endswith("/mlp"):
        part = "MLP activation and gating"
    elif "Transformer" not in op_name:
        part = "optimizer, loss and the rest"
    else:
        part = "residuals, embedding, other model ops"
    return f"{part} ({'backward' if backward else 'forward'})" if "Transformer" in op_name else part


def _hlo_text(trace_dir: str) -> str:
    """The traced program's optimized HLO, saved beside the trace as `*.hlo.txt` (or `.gz`)."""
    for path in sorted(Path(trace_dir).glob("*.hlo.txt")) + sorted(Path(trace_dir).glob("*.hlo.txt.gz")):
        return gzip.decompress(path.read_bytes()).decode() if path.name.endswith(".gz") else path.read_text()
    raise FileNotFoundError(f"{trace_dir}: no *.hlo.txt(.gz) beside the trace")


def _op_events(space):
    """(HLO op name, seconds) for every XLA op event: CPU op threads or GPU kernels."""
    for plane in space.planes:
        names = {k: v.name for k, v in plane.event_metadata.items()}
        stat_names = {k: v.name for k, v in plane.stat_metadata.items()}
        if plane.name == "/host:CPU":
            for line in plane.lines:
                if line.name.startswith(("tf_XLAEigen", "tf_XLAPjRtCpuClient")):  # XLA's op threads
                    for event in line.events:
                        name = names.get(event.metadata_id, "")
                        if not name.startswith(("ThunkExecutor", "ThreadpoolListener", "end:")):
                            yield name, event.duration_ps / 1e12
        elif plane.name.startswith("/device:GPU"):
            for line in plane.lines:
                if not line.name.startswith("Stream"):
                    continue
                for event in line.events:
                    op = names.get(event.metadata_id, "")
                    for stat in list(event.stats) + list(plane.event_metadata[event.metadata_id].stats):
                        if stat_names.get(stat.metadata_id) == "hlo_op":
                            op = stat.str_value or stat_names.get(stat.ref_value, op)
                    yield op, event.duration_ps / 1e12


def attribute_trace(trace_dir: str, steps: int = 1, step_s: float | None = None) -> list[dict]:
    """Seconds per model part in a trace of `steps` steps from `profile(trace_dir=...)` or
    `mfu.py --trace_dir`: each op counts its median duration times its calls per step.

    `step_s`: scale the parts to add up to this step time (e.g. the measured CPU time
    per step on one core), removing the time the process waited while descheduled.
    """
    import glob

    from tensorflow.tsl.profiler.protobuf import xplane_pb2  # the trace format (TensorFlow ships it)

    space = xplane_pb2.XSpace()
    space.ParseFromString(Path(glob.glob(f"{trace_dir}/**/*.xplane.pb", recursive=True)[-1]).read_bytes())
    hlo = _hlo_text(trace_dir)
    op_names = dict(re.findall(r'^\s*(?:ROOT )?%([\w.\-]+) = .*?op_name="([^"]*)"', hlo, re.M))
    # loops and calls enclose their bodies' ops, which the trace also records one by one
    containers = set(re.findall(r'^\s*(?:ROOT )?%([\w.\-]+) = (?:\(.*?\)|\S+) (?:while|call|conditional)\(',
                                hlo, re.M))
    durations: dict[str, list[float]] = {}
    for name, duration in _op_events(space):
        if name not in containers:
            durations.setdefault(name, []).append(duration)
    seconds: dict[str, float] = {}
    for name, ds in durations.items():
        part = _category(op_names[name]) if name in op_names else "unattributed"
        seconds[part] = seconds.get(part, 0.0) + statistics.median(ds) * len(ds) / steps
    total = sum(seconds.values()) or 1.0
    scale = step_s / total if step_s else 1.0
    return [{"part": k, "seconds": v * scale, "share": v / total}
            for k, v in sorted(seconds.items(), key=lambda kv: -kv[1])]


def run(model: str = "t5_1_1_small", batch_size: int = 8, inputs_length: int = 512, targets_length: int = 128,
        repeats: int = 3, scan: bool = False, dtype: str = "float32", cores: int | None = None,
        trace_dir: str | None = None, trace_steps: int = 1, dump_hlo: str | None = None,
        pieces: tuple[str, ...] | None = None) -> dict:
    """Profile (see the module docstring); returns the tables as `text` and their rows."""
    common.pin_cores(cores)
    rows = profile(model, batch_size, inputs_length, targets_length, repeats, scan, dtype, trace_dir, dump_hlo,
                   trace_steps, pieces)
    tables = [common.table(rows, ["piece", "median_s", "cpu_median_s", "share_of_step", "xla_gflops",
                                  "gflop_per_s", "gbytes"],
                           f"flanx train step profile: {model}, batch {batch_size} x {inputs_length}/{targets_length}, "
                           f"{dtype}" + (f", pinned to {cores} core(s)" if cores else ""))]
    parts, matmuls, bare = [], [], None
    if trace_dir:
        step = next(r for r in rows if r["piece"] == "step")
        parts = attribute_trace(trace_dir, trace_steps, step["cpu_median_s"] if cores == 1 else None)
        tables.append(common.table(parts, ["part", "seconds", "share"], "one train step, time by model part (XLA ops)"
                                   + (", scaled to the CPU time per step" if cores == 1 else "")))
        bare = bare_matmul_rate()
        rate = bare["cpu_gflop_per_s"] if cores == 1 else bare["gflop_per_s"]
        matmuls = matmul_summary(model, batch_size, inputs_length, targets_length, parts, rate)
        tables.append(common.table(
            matmuls, ["matmuls", "gflop", "seconds", "share_of_step", "gflop_per_s", "vs_bare_xla"],
            f"matmul rate in the step; bare XLA {bare['shape']}: {bare['gflop_per_s']:.0f} GFLOP/s "
            f"wall, {bare['cpu_gflop_per_s']:.0f} GFLOP/s of CPU time"))
    return {"text": "\n\n".join(tables), "pieces": rows, "parts": parts, "matmuls": matmuls, "bare_matmul": bare,
            "settings": {"model": model, "batch_size": batch_size, "inputs_length": inputs_length,
                         "targets_length": targets_length, "dtype": dtype, "cores": cores,
                         "trace_steps": trace_steps}}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="t5_1_1_small")
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--inputs_length", type=int, default=512)
    p.add_argument("--targets_length", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--scan", action="store_true")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--cores", type=int, help="pin to this many cores (1: op time is CPU time)")
    p.add_argument("--trace_dir")
    p.add_argument("--trace_steps", type=int, default=1, help="steps in the trace (per-op medians)")
    p.add_argument("--pieces", help="comma list of the pieces to time (default: all; `step` always)")
    p.add_argument("--dump_hlo")
    p.add_argument("--json", help="also write the rows here")
    p.add_argument("--attribute", metavar="TRACE_DIR", help="only split an existing trace (e.g. from mfu.py "
                   "--trace_dir on a GPU) by model part")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.attribute:
        print(common.table(attribute_trace(a.attribute, a.trace_steps), ["part", "seconds", "share"],
                           f"{a.attribute}: time by model part (XLA ops)"))
        return
    out = run(a.model, a.batch_size, a.inputs_length, a.targets_length, a.repeats, a.scan, a.dtype, a.cores,
              a.trace_dir, a.trace_steps, a.dump_hlo, tuple(a.pieces.split(",")) if a.pieces else None)
    if a.worker:
        common.emit(out)
        return
    print(out["text"], flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps({k: v for k, v in out.items() if k != "text"}, indent=2))


if __name__ == "__main__":
    main()
