"""Model FLOPs utilization (MFU) of flanx's jitted train step on one accelerator.

    PYTHONPATH=src python -m benchmarks.mfu --model t5_1_1_large --batch_size 64 \\
        --scan_layers true --remat dots_saveable --out /tmp/mfu.json

Runs the same train step the trainer compiles (`flanx.train.step.make_train_step`:
forward, loss with z-loss, backward, T5X Adafactor update) on synthetic packed
batches (`benchmarks.common.packed_batch`, 512/128 with segment ids and
positions), bf16 activations and float32 parameters by default. It imports
only jax / flax / optax / numpy and `flanx.models` / `flanx.train`: no
TensorFlow, seqio or gin (the JSON lists any that got loaded anyway under
`forbidden_modules`, which must stay empty).

Model FLOPs (`model_flops`): an exact count of the matmul multiply-adds in one
training step, times 2 FLOPs per multiply-add, computed from the config.
Per sequence, with L_e / L_d the input / target lengths, d = d_model,
h = heads * head_dim, f = d_ff, m = number of `wi` kernels (2 for gated-GELU),
V = vocab size, E / D the encoder / decoder layers:

    encoder, per layer:  L_e * (4*d*h + (m+1)*d*f)          q, k, v, out, MLP
                       + L_e * 2*L_e*h                       scores QK^T and probs@V
    decoder, per layer:  L_d * (6*d*h + (m+1)*d*f)          self q,k,v,out; cross q,out; MLP
                       + L_e * 2*d*h                         cross-attention k, v of the encoder output
                       + L_d * 2*(L_d + L_e)*h               self and cross scores and probs@V
    logits:              L_d * d*V
    forward FLOPs = 2 * (E * encoder + D * decoder + logits)
    step FLOPs    = 3 * forward FLOPs * batch                backward = 2x forward

Attention is counted over the full (unmasked) L x L matrices because that is
what the dense implementation computes, causal half and packing masks
included; embedding lookups, relative position biases, norms, activations,
softmax and the optimizer are not matmuls and are not counted. Recomputation
under remat is not model FLOPs: `executed_dot_flops` (the dot products in
the step's jaxpr, recomputation included) gives the hardware-side count and
`hfu` the matching utilization. `xla_flops` is XLA's own cost analysis.

MFU = model_flops / step_time / peak, with the peak dense bf16 TFLOP/s of the
device taken from `PEAK_TFLOPS` by `jax.devices()[0].device_kind` (or
`--peak_tflops`). Timing: compile, `--warmup` steps, then `--windows` windows
of `--steps` steps each (blocking at the end of a window); the median window
gives the step time. `compile_s` is the whole set-up: initialisation, tracing
(and the jaxpr dot count) and XLA compilation.
"""
from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import statistics
import sys
import time

from benchmarks import common

# (substring of the lower-cased device_kind, dense bf16 TFLOP/s); the first match wins.
PEAK_TFLOPS = (
    ("h100 pcie", 756.0), ("h100 nvl", 835.0), ("gh200", 989.4), ("h200", 989.4), ("h100", 989.4),
    ("h800", 989.4), ("a100", 312.0), ("a800", 312.0), ("l40s", 362.0), ("l4", 121.0),
    ("tpu v6 lite", 918.0), ("tpu v6e", 918.0), ("tpu v5 lite", 197.0), ("tpu v5e", 197.0),
    ("tpu v5p", 459.0), ("tpu v5", 459.0), ("tpu v4", 275.0),
)
FORBIDDEN = ("tensorflow", "seqio", "gin", "torch")


def peak_tflops(device_kind: str) -> float | None:
    """Dense bf16 peak of a device from its `device_kind`, or None when unknown (e.g. CPU)."""
    kind = device_kind.lower()
    return next((tf for key, tf in PEAK_TFLOPS if key in kind), None)


def model_flops(config, inputs_length: int, targets_length: int, batch_size: int = 1) -> dict:
    """Matmul FLOPs of one training step (see the module docstring); forward per sequence too."""
    d, h, f, v = config.d_model, config.num_heads * config.head_dim, config.d_ff, config.vocab_size
    m = len(config.mlp_activations)
    le, ld = inputs_length, targets_length
    macs = {
        "encoder_dense": config.num_encoder_layers * le * (4 * d * h + (m + 1) * d * f),
        "encoder_attention": config.num_encoder_layers * le * 2 * le * h,
        "decoder_dense": config.num_decoder_layers * (ld * (6 * d * h + (m + 1) * d * f) + le * 2 * d * h),
        "decoder_attention": config.num_decoder_layers * ld * 2 * (ld + le) * h,
        "logits": ld * d * v,
    }
    forward = 2 * sum(macs.values())
    return {"forward_per_sequence": forward, "step": 3 * forward * batch_size,
            "forward_breakdown": {k: 2 * x for k, x in macs.items()}}


def dot_flops(closed_jaxpr) -> int:
    """FLOPs of every dot_general in a (closed) jaxpr, nested jaxprs included, scans times length."""
    jaxpr = getattr(closed_jaxpr, "jaxpr", closed_jaxpr)
    total = 0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            (_, rc), (_, rb) = eqn.params["dimension_numbers"]
            lhs, rhs = (x.aval.shape for x in eqn.invars[:2])
            rhs_free = [n for i, n in enumerate(rhs) if i not in rc and i not in rb]
            total += 2 * math.prod(lhs) * math.prod(rhs_free)
            continue
        times = eqn.params.get("length", 1) if eqn.primitive.name == "scan" else 1
        for value in eqn.params.values():
            subs = value if isinstance(value, (list, tuple)) else [value]
            subs = [s for s in subs if hasattr(s, "eqns") or hasattr(getattr(s, "jaxpr", None), "eqns")]
            if subs:  # cond branches: the most expensive one
                total += times * max(dot_flops(s) for s in subs)
    return total


ATTENTION = ("xla", "jax", "cudnn")


def use_jax_attention(implementation: str | None) -> None:
    """Route flanx's attention (`flanx.models.layers.dot_product_attention`) in this process
    through `jax.nn.dot_product_attention(..., implementation=implementation)`.

    An experiment, not a flanx option. `"cudnn"`: cuDNN's fused kernel (GPU,
    q/k/v in bf16: `--dtype bfloat16`); `None` (`--attention jax`): JAX picks
    cuDNN where it can and its own XLA path elsewhere (so it also runs on CPU).
    The additive bias (relative positions plus the folded mask) is cast to the
    query's dtype for the kernel.
    """
    import jax

    from flanx.models import layers

    def attention(query, key, value, bias):
        return jax.nn.dot_product_attention(query, key, value, bias=bias.astype(query.dtype),
                                            scale=1.0, implementation=implementation)

    layers.dot_product_attention = attention


def build(model: str, batch_size: int, inputs_length: int, targets_length: int, dtype: str, scan_layers: bool,
          remat: str, dropout: float, seed: int = 0, positions: bool = True):
    """(config, jitted step, state, device batch, step fn, host batch) for one configuration.

    `positions=False` drops `encoder_positions` / `decoder_positions` from the
    batch: relative position biases then come from row offsets, shared by all
    rows. Within a packed segment `key - query` is the same either way and
    attention across segments is masked, so the logits are identical.
    """
    import jax

    from flanx.models import get_config, init_params
    from flanx.train import optim, step as step_lib
    from flanx.train.config import LossConfig, OptimizerConfig

    config = get_config(model, dtype=dtype, scan_layers=scan_layers, remat_policy=remat, dropout_rate=dropout)
    opt_cfg = OptimizerConfig(name="adafactor", learning_rate=1e-3, schedule="constant")
    optimizer = optim.make_optimizer(opt_cfg)
    fn = step_lib.make_train_step(step_lib.model_apply_fn(config), optimizer, optim.make_schedule(opt_cfg),
                                  LossConfig(), enable_dropout=dropout > 0)
    init = jax.jit(lambda key: step_lib.init_state(init_params(config, key), optimizer, None, seed))
    state = init(jax.random.PRNGKey(seed))
    batch = common.packed_batch(batch_size, inputs_length, targets_length, config.vocab_size, seed)
    if not positions:
        batch = {k: v for k, v in batch.items() if not k.endswith("_positions")}
    return config, jax.jit(fn, donate_argnums=(0,)), state, jax.device_put(batch), fn, batch


def measure(model: str = "t5_1_1_base", batch_size: int = 32, inputs_length: int = 512, targets_length: int = 128,
            dtype: str = "bfloat16", scan_layers: bool = True, remat: str = "none", dropout: float = 0.0,
            warmup: int = 2, steps: int = 5, windows: int = 3, peak: float | None = None,
            count_dots: bool = True, positions: bool = True, attention: str = "xla",
            trace_dir: str | None = None) -> dict:
    """Compile, time and account one configuration; returns the result dict (see `main`).

    `trace_dir`: also record a `jax.profiler` trace of one more step there,
    with the compiled HLO (`train_step.hlo.txt.gz`) so that
    `benchmarks.profile_step.attribute_trace` can split its time by model part.
    """
    import jax

    if attention != "xla":
        use_jax_attention("cudnn" if attention == "cudnn" else None)
    device = jax.devices()[0]
    t0 = time.perf_counter()
    config, step, state, batch, fn, host_batch = build(model, batch_size, inputs_length, targets_length, dtype,
                                                       scan_layers, remat, dropout, positions=positions)
    executed = dot_flops(jax.make_jaxpr(fn)(state, batch)) if count_dots else None
    compiled = step.lower(state, batch).compile()
    compile_s = time.perf_counter() - t0
    xla_flops = _xla_flops(compiled)
    compiled_gib = _compiled_memory_gib(compiled)
    for _ in range(warmup):
        state, metrics = compiled(state, batch)
    jax.block_until_ready(state)
    window_s = []
    for _ in range(windows):
        start = time.perf_counter()
        for _ in range(steps):
            state, metrics = compiled(state, batch)
        jax.block_until_ready(metrics)
        window_s.append((time.perf_counter() - start) / steps)
    step_s = statistics.median(window_s)
    if trace_dir:
        os.makedirs(trace_dir, exist_ok=True)
        with gzip.open(os.path.join(trace_dir, "train_step.hlo.txt.gz"), "wt") as f:
            f.write(compiled.as_text())
        with jax.profiler.trace(trace_dir):
            state, metrics = compiled(state, batch)
            jax.block_until_ready(metrics)
    flops = model_flops(config, inputs_length, targets_length, batch_size)
    peak = peak if peak is not None else peak_tflops(device.device_kind)
    achieved = flops["step"] / step_s / 1e12
    examples = int(sum(host_batch["encoder_segment_ids"].max(axis=1)))
    result = {
        "model": model, "batch_size": batch_size, "inputs_length": inputs_length,
        "targets_length": targets_length, "dtype": dtype, "scan_layers": scan_layers, "remat": remat,
        "dropout": dropout, "positions": positions, "attention": attention, "device_kind": device.device_kind, "platform": device.platform,
        "num_params": int(sum(x.size for x in jax.tree.leaves(state.params))),
        "compile_s": compile_s, "step_s": step_s, "window_step_s": window_s,
        "sequences_per_s": batch_size / step_s, "examples_per_s": examples / step_s,
        "tokens_per_s": batch_size * (inputs_length + targets_length) / step_s,
        "model_flops_per_step": flops["step"], "forward_flops_per_sequence": flops["forward_per_sequence"],
        "forward_breakdown": flops["forward_breakdown"], "achieved_tflops": achieved,
        "peak_tflops": peak, "mfu": achieved / peak if peak else None,
        "executed_dot_flops_per_step": executed,
        "hfu": executed / step_s / 1e12 / peak if (peak and executed) else None,
        "xla_flops_per_step": xla_flops, "loss": float(metrics["loss"]),
        "peak_memory_gib": _peak_memory_gib(device), "compiled_memory_gib": compiled_gib,
        "forbidden_modules": sorted({m.split(".")[0] for m in sys.modules} & set(FORBIDDEN)),
        "jax": jax.__version__,
    }
    return result


def _xla_flops(compiled) -> float | None:
    try:
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        return float(cost["flops"]) if cost and "flops" in cost else None
    except Exception:  # noqa: BLE001 - cost analysis is optional on some backends
        return None


def _compiled_memory_gib(compiled) -> float | None:
    """Arguments + outputs + temporaries of the compiled step (XLA's memory analysis), in GiB."""
    try:
        m = compiled.memory_analysis()
        total = m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes
        return total / 2**30
    except Exception:  # noqa: BLE001 - not every backend reports it
        return None


def _peak_memory_gib(device) -> float | None:
    try:
        stats = device.memory_stats() or {}
    except Exception:  # noqa: BLE001 - CPU devices may not report
        return None
    peak = stats.get("peak_bytes_in_use")
    return peak / 2**30 if peak else None


def is_out_of_memory(error: BaseException) -> bool:
    text = str(error)
    return "RESOURCE_EXHAUSTED" in text or "Out of memory" in text or "out of memory" in text


def run(args) -> dict:
    """`measure` with OOM fallback: halve the batch up to `--oom_retries` times."""
    batch = args.batch_size
    for attempt in range(args.oom_retries + 1):
        try:
            result = measure(args.model, batch, args.inputs_length, args.targets_length, args.dtype,
                             args.scan_layers, args.remat, args.dropout, args.warmup, args.steps, args.windows,
                             args.peak_tflops, not args.no_dot_count, not args.no_positions, args.attention,
                             args.trace_dir)
            result.update(status="ok", requested_batch_size=args.batch_size)
            return result
        except Exception as e:  # noqa: BLE001 - report every failure as a result row
            if is_out_of_memory(e) and attempt < args.oom_retries and batch > 1:
                print(f"out of memory at batch {batch}; retrying with {batch // 2}", file=sys.stderr, flush=True)
                batch //= 2
                continue
            return {"status": "failed", "reason": f"{type(e).__name__}: {str(e)[:500]}", "model": args.model,
                    "batch_size": batch, "requested_batch_size": args.batch_size, "scan_layers": args.scan_layers,
                    "remat": args.remat, "dtype": args.dtype, "positions": not args.no_positions,
                    "attention": args.attention}
    raise AssertionError("unreachable")


COLUMNS = ["model", "batch_size", "scan_layers", "remat", "dtype", "dropout", "positions", "attention", "status",
           "compile_s", "step_s", "sequences_per_s", "tokens_per_s", "achieved_tflops", "mfu", "hfu",
           "peak_memory_gib"]


def _bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="t5_1_1_base", help="flanx.models preset name")
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--inputs_length", type=int, default=512)
    p.add_argument("--targets_length", type=int, default=128)
    p.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"), help="activation dtype")
    p.add_argument("--scan_layers", type=_bool, default=True)
    p.add_argument("--remat", default="none", choices=("none", "dots_saveable", "full"))
    p.add_argument("--dropout", type=float, default=0.0, help="dropout rate (T5 v1.1 pre-training: 0)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps after compilation")
    p.add_argument("--steps", type=int, default=5, help="steps per timing window")
    p.add_argument("--windows", type=int, default=3, help="timing windows; the median is reported")
    p.add_argument("--peak_tflops", type=float, default=None, help="override the device's bf16 peak")
    p.add_argument("--oom_retries", type=int, default=2, help="halve the batch this often on out-of-memory")
    p.add_argument("--no_dot_count", action="store_true", help="skip counting dot FLOPs in the jaxpr")
    p.add_argument("--no_positions", action="store_true",
                   help="drop *_positions from the batch: one relative position bias for all rows (same logits)")
    p.add_argument("--attention", default="xla", choices=ATTENTION,
                   help="experiment: flanx's own attention (xla), jax.nn.dot_product_attention (jax: cuDNN "
                        "where it can, else XLA) or its cuDNN kernel (cudnn, bf16 only)")
    p.add_argument("--trace_dir", help="record a jax.profiler trace of one step (+ its HLO) here")
    p.add_argument("--out", default=None, help="append the result as one JSON line to this file")
    p.add_argument("--summarize", metavar="JSONL", help="only print the table of the results in this file")
    return p


def summarize(path: str) -> str:
    """The table of every result line in a JSONL file written with --out."""
    rows = [json.loads(line) for line in open(path) if line.strip()]
    return common.table(rows, COLUMNS + ["reason"], "flanx train step MFU")


def main(argv=None) -> dict:
    args = parser().parse_args(argv)
    if args.summarize:
        print(summarize(args.summarize), flush=True)
        return {"status": "ok"}
    result = run(args)
    result["args"] = vars(args)
    print(common.table([result], COLUMNS, "flanx train step MFU"), flush=True)
    if result["status"] != "ok":
        print("failed: " + result["reason"], flush=True)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "a") as f:
            f.write(json.dumps(result, default=str) + "\n")
    return result


if __name__ == "__main__":
    sys.exit(0 if main()["status"] == "ok" else 1)
