"""How a flanx train step's time and memory scale with input length, batch size and
model size, so a run's cost can be predicted from one measured point.

    python -m benchmarks.scaling_bench                   # the CPU grid below, 10-20 minutes on 2 cores
    python -m benchmarks.scaling_bench --lengths 256,512,1024,2048 --batches 1,4,8 --models tiny,t5_1_1_small

One table, three axes around a reference cell (t5_1_1_small, batch 1, 512/128):
input length 256 to 2,048 (targets a quarter of the inputs, as 512/128),
batch size, and model size. Each cell is the trainer's train step
(`benchmarks.mfu.measure`: packed synthetic batches, T5X loss with z-loss,
Adafactor, float32 on CPU, no scan, no remat, the preset's dropout) in its own
process, timed after one warm-up step; columns:

- `tokens_per_s`: token slots (batch x (inputs + targets)) per second;
- `model_gflop_per_s`: matmul FLOPs of the step (`mfu.model_flops`) per second;
- `attention_share`: the part of those FLOPs in attention scores and
  probabilities x values, which grows with length while the dense part per
  token does not;
- `time_per_token_vs_ref`: seconds per token slot relative to the reference
  cell (1.0 = linear scaling); it is `flop_per_token_vs_ref` (matmul FLOPs per
  token slot against the reference: attention makes it grow with length, model
  size with width and depth) divided by the `model_gflop_per_s` ratio (how well
  the CPU runs those FLOPs);
- `peak_rss_mib`: the worker process's peak resident memory (JAX runtime
  included, ~0.4 GiB); `xla_step_gib`: XLA's own accounting of the compiled
  step's arguments, outputs and temporaries.

Below the table `linearity_notes` says, per axis, where time per token leaves
the reference by more than 15% and which of the two factors moved.
"""
from __future__ import annotations

import argparse
import json

from benchmarks import common

REFERENCE = {"model": "t5_1_1_small", "batch_size": 1, "inputs_length": 512}
DEFAULTS = {"lengths": (256, 512, 1024, 2048), "batches": (1, 4, 8), "models": ("tiny", "t5_1_1_small", "t5_1_1_base")}


def grid(lengths, batches, models, reference=REFERENCE) -> list[dict]:
    """The cells: each axis varied around the reference cell, duplicates removed, in order."""
    cells = []
    for inputs in lengths:
        cells.append({**reference, "inputs_length": inputs})
    for batch in batches:
        cells.append({**reference, "batch_size": batch})
    for model in models:
        cells.append({**reference, "model": model})
    unique = []
    for c in cells:
        c = {**c, "targets_length": max(c["inputs_length"] // 4, 1)}
        if c not in unique:
            unique.append(c)
    return unique


def _measure_cell(cell: dict, warmup: int, steps: int, windows: int) -> dict:
    from benchmarks import mfu
    from flanx.models import get_config

    dropout = get_config(cell["model"]).dropout_rate
    res = mfu.measure(cell["model"], cell["batch_size"], cell["inputs_length"], cell["targets_length"],
                      dtype="float32", scan_layers=False, remat="none", dropout=dropout, warmup=warmup,
                      steps=steps, windows=windows, count_dots=False)
    res["peak_rss_mib"] = common.peak_rss_mib()
    return res


def run(lengths=DEFAULTS["lengths"], batches=DEFAULTS["batches"], models=DEFAULTS["models"], warmup: int = 1,
        steps: int = 1, windows: int = 2, timeout: float = 900, reference: dict = REFERENCE,
        write: bool = True) -> dict:
    """Measure every cell of `grid(...)` in its own worker process; print the table; return the results."""
    rows = []
    for cell in grid(lengths, batches, models, reference):
        print(f"scaling: {cell}", flush=True)
        res = common.run_worker("benchmarks.scaling_bench", ["--cell", json.dumps(cell), "--warmup", str(warmup),
                                                             "--steps", str(steps), "--windows", str(windows)], timeout)
        row = {**cell, "lengths": f"{cell['inputs_length']}/{cell['targets_length']}", "status": res["status"],
               "reason": res.get("reason")}
        if res["status"] == "ok":
            fwd = res["forward_breakdown"]
            attention = fwd["encoder_attention"] + fwd["decoder_attention"]
            row.update({"step_s": res["step_s"], "tokens_per_s": res["tokens_per_s"],
                        "model_gflop_per_s": res["achieved_tflops"] * 1e3,
                        "attention_share": attention / sum(fwd.values()), "peak_rss_mib": res["peak_rss_mib"],
                        "xla_step_gib": res["compiled_memory_gib"], "compile_s": res["compile_s"],
                        "params_m": res["num_params"] / 1e6})
        rows.append(row)
    ref = next((r for r in rows if r["status"] == "ok" and all(r[k] == v for k, v in reference.items())), None)
    for r in rows:
        if ref and r.get("tokens_per_s"):
            r["time_per_token_vs_ref"] = ref["tokens_per_s"] / r["tokens_per_s"]
            r["flop_per_token_vs_ref"] = ((r["model_gflop_per_s"] / r["tokens_per_s"])
                                          / (ref["model_gflop_per_s"] / ref["tokens_per_s"]))
    columns = ["model", "params_m", "batch_size", "lengths", "status", "step_s", "tokens_per_s", "model_gflop_per_s",
               "attention_share", "flop_per_token_vs_ref", "time_per_token_vs_ref", "peak_rss_mib", "xla_step_gib"]
    notes = linearity_notes(rows, reference)
    text = common.table(rows, columns, "Scaling of the train step (CPU, float32): length, batch, model size")
    text += "\n\n" + "\n".join(notes)
    print(text, flush=True)
    failures = [f"{r['model']} b{r['batch_size']} {r['lengths']}: {r['reason']}" for r in rows if r["status"] != "ok"]
    if failures:
        print("failed: " + "; ".join(failures), flush=True)
    payload = {"rows": rows, "table": text, "reference": reference, "settings": {
        "lengths": list(lengths), "batches": list(batches), "models": list(models), "warmup": warmup,
        "steps": steps, "windows": windows}}
    if write:
        payload["path"] = str(common.write_result("scaling", payload))
    return payload


AXES = (("inputs_length", "input length"), ("batch_size", "batch size"), ("model", "model size"))


def linearity_notes(rows: list[dict], reference: dict, tolerance: float = 0.15) -> list[str]:
    """Per axis: the cells' time per token against the reference cell, the first cell where it
    is more than `tolerance` off, and whether FLOPs per token or the FLOP rate moved it. Along
    the model-size axis FLOPs per token are expected to change: there time per token counts as
    linear while it follows them (the FLOP rate holds)."""
    notes = []
    for key, label in AXES:
        cells = [r for r in rows if r.get("time_per_token_vs_ref")
                 and all(r[k] == v for k, v in reference.items() if k != key)]
        if len(cells) < 2:
            continue
        trend = ", ".join(f"{r[key]}: {r['time_per_token_vs_ref']:.2f}x" for r in cells)
        line = f"- {label} (time per token vs {reference[key]}): {trend}."
        expected = (lambda r: r["flop_per_token_vs_ref"]) if key == "model" else (lambda r: 1.0)
        off = [r for r in cells if abs(r["time_per_token_vs_ref"] / expected(r) - 1.0) > tolerance]
        if not off:
            notes.append(line + f" Linear{' in FLOPs per token' if key == 'model' else ''} within {tolerance:.0%}.")
            continue
        first = off[0]
        flop, rate = first["flop_per_token_vs_ref"], first["time_per_token_vs_ref"] / first["flop_per_token_vs_ref"]
        why = []
        if key != "model" and abs(flop - 1.0) > tolerance / 2:
            why.append(f"matmul FLOPs per token x{flop:.2f} (attention {first['attention_share']:.0%} of them)")
        elif key == "model":
            why.append(f"matmul FLOPs per token x{flop:.3g}")
        if abs(rate - 1.0) > tolerance / 2:
            why.append(f"the FLOP rate x{1 / rate:.2f} ({first['model_gflop_per_s']:.0f} GFLOP/s)")
        notes.append(line + f" Not linear{' in FLOPs per token' if key == 'model' else ''} at {first[key]}: "
                     + (" and ".join(why) or "noise") + ".")
    return notes


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lengths", default=",".join(map(str, DEFAULTS["lengths"])), help="input lengths")
    p.add_argument("--batches", default=",".join(map(str, DEFAULTS["batches"])))
    p.add_argument("--models", default=",".join(DEFAULTS["models"]))
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--steps", type=int, default=1, help="steps per timed window")
    p.add_argument("--windows", type=int, default=2, help="timed windows; the median is reported")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--cell", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        common.emit(_measure_cell(json.loads(a.cell), a.warmup, a.steps, a.windows))
        return
    run(tuple(int(x) for x in a.lengths.split(",")), tuple(int(x) for x in a.batches.split(",")),
        tuple(a.models.split(",")), a.warmup, a.steps, a.windows)


if __name__ == "__main__":
    main()
