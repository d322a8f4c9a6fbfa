"""Where a flanx greedy decoding call spends its time, and how fast its matmuls run against
bare XLA matmuls of the same kinds.

    python -m benchmarks.profile_decode --model t5_1_1_small --batch_size 8 --cores 1

One `decoding.greedy_decode` call (random weights, `--inputs_length` random input
tokens per row, exactly `--new_tokens` steps: the end-of-sequence id is outside
the vocabulary, as in `benchmarks.hf_decode_bench`) is timed and traced with
`jax.profiler`; `benchmarks.profile_step.attribute_trace` splits the op time by
model part. `--cores 1` (the default) pins the process to one core, where op
time is CPU time, so the split holds up on a shared machine.

The matmul work is the forward part of `benchmarks.mfu.model_flops`: the
encoder once over the inputs, then per generated token the decoder layers, the
attention over the cache and the logits. Its rate is set against two bare XLA
matmuls measured in the same process:

- `large`: `[4096, 512] @ [512, 1024]`, forward and backward (the training
  step's MLP shape), about the best rate XLA's CPU backend reaches here;
- `streaming`: `[batch, d_model] @ [d_model, n * d_ff]`, `n` MLP kernels side
  by side, ~128 MB of weights (like the logits projection, `[batch, d_model] @
  [d_model, vocab]`): the shape of a decoding step, whose weights come from
  memory rather than cache, so it is bound by memory traffic
  (`gbytes_per_s`), not by arithmetic.

A decoding step at small batch reads every decoder weight (and the logits
kernel) once per token while doing `2 * batch` FLOPs per weight, so its
matmuls can run no faster than `streaming`; transformers' `generate` reads
the same bytes.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from benchmarks import common, profile_step


def streaming_matmul_rate(batch: int, inner: int, cols: int, total_mb: float = 128, repeats: int = 5) -> dict:
    """GFLOP/s and GB/s of `[batch, inner] @ [inner, n * cols]`, float32 weights of ~`total_mb` MB."""
    import jax

    n = max(1, int(total_mb * 2**20 // (inner * cols * 4)))
    x = jax.random.normal(jax.random.PRNGKey(0), (batch, inner))
    w = jax.random.normal(jax.random.PRNGKey(1), (inner, n * cols))
    fn = jax.jit(lambda x, w: x @ w)
    timed = profile_step._timed(lambda: jax.block_until_ready(fn(x, w)), 2, repeats)
    flops, nbytes = 2 * batch * inner * cols * n, 4 * n * inner * cols
    return {"shape": f"[{batch},{inner}]@[{inner},{n}x{cols}]", "gflop_per_s": flops / timed["median_s"] / 1e9,
            "cpu_gflop_per_s": flops / timed["cpu_median_s"] / 1e9,
            "gbytes_per_s": nbytes / timed["median_s"] / 1e9, "cpu_gbytes_per_s": nbytes / timed["cpu_median_s"] / 1e9}


def run(model: str = "t5_1_1_small", batch_size: int = 8, inputs_length: int = 512, new_tokens: int = 64,
        cores: int | None = 1, repeats: int = 2, trace_calls: int = 1) -> dict:
    """Time, trace and account one greedy decoding configuration; returns the tables as `text`."""
    common.pin_cores(cores)
    import jax
    import numpy as np

    from flanx.models import decoding, get_config, init_params

    config = get_config(model)
    params = init_params(config, jax.random.PRNGKey(0))
    tokens = np.random.default_rng(0).integers(2, config.vocab_size, (batch_size, inputs_length)).astype(np.int32)
    never = config.vocab_size  # an end-of-sequence id no step can produce

    def call():
        return jax.block_until_ready(decoding.greedy_decode(params, config, tokens, new_tokens, eos_id=never))

    timed = profile_step._timed(call, 1, repeats)
    seconds = timed["cpu_median_s"] if cores == 1 else timed["median_s"]
    with tempfile.TemporaryDirectory(prefix="flanx_decode_trace_") as trace_dir:
        with jax.profiler.trace(trace_dir):
            for _ in range(trace_calls):
                call()
        hlo = decoding.greedy_decode.lower(params, config, tokens, new_tokens, eos_id=never).compile().as_text()
        Path(trace_dir, "decode.hlo.txt").write_text(hlo)
        parts = profile_step.attribute_trace(trace_dir, trace_calls, seconds)
    large = profile_step.bare_matmul_rate()
    streaming = streaming_matmul_rate(batch_size, config.d_model, config.d_ff)
    key = "cpu_gflop_per_s" if cores == 1 else "gflop_per_s"
    matmuls = profile_step.matmul_summary(model, batch_size, inputs_length, new_tokens, parts, large[key],
                                          passes=1)
    for m in matmuls:
        m["vs_bare_streaming"] = m["gflop_per_s"] / streaming[key] if m["gflop_per_s"] else None
    title = (f"flanx greedy decoding profile: {model}, batch {batch_size}, {inputs_length} inputs, {new_tokens} "
             f"new tokens, {seconds:.2f} s per call" + (", one core (CPU time)" if cores == 1 else ""))
    tables = [common.table(parts, ["part", "seconds", "share"], title),
              common.table(matmuls, ["matmuls", "gflop", "seconds", "share_of_step", "gflop_per_s", "vs_bare_xla",
                                     "vs_bare_streaming"],
                           f"matmul rate in the call; bare XLA {large['shape']}: {large[key]:.0f} GFLOP/s; "
                           f"{streaming['shape']} (weights from memory): {streaming[key]:.1f} GFLOP/s, "
                           f"{streaming[key.replace('gflop', 'gbytes')]:.1f} GB/s")]
    return {"text": "\n\n".join(tables), "call": timed, "parts": parts, "matmuls": matmuls, "bare_matmul": large,
            "streaming_matmul": streaming, "settings": {"model": model, "batch_size": batch_size,
                                                         "inputs_length": inputs_length, "new_tokens": new_tokens,
                                                         "cores": cores}}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="t5_1_1_small")
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--inputs_length", type=int, default=512)
    p.add_argument("--new_tokens", type=int, default=64)
    p.add_argument("--cores", type=int, default=1, help="pin to this many cores (0: all; 1: op time is CPU time)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    out = run(a.model, a.batch_size, a.inputs_length, a.new_tokens, a.cores or None, a.repeats)
    if a.worker:
        common.emit(out)
    else:
        print(out["text"], flush=True)


if __name__ == "__main__":
    main()
