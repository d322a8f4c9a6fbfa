"""Data-pipeline throughput against the trainer's consumption rate.

    python -m benchmarks.pipeline_vs_train --windows 3 --window_batches 100

Times `flanx.data.pipeline.get_dataset(name, {"inputs": 512, "targets": 128},
batch_size=8, pack=True)` (rendering, tokenization, mixing, shuffling and
packing, read as numpy batches) for two mixtures:

- the packed dialogue mixture: `dialog_summarization` (DialogSum + SAMSum,
  T5 SentencePiece) when FLANX_DATA_DIR holds them, else the synthetic chat
  mixture `synth_chat_summary_mix`;
- the FLAN-style mixture: `flan2022_heldin` when FLANX_DATA_DIR holds its
  tasks, else `synth_multitask` (byte vocabulary).

The pipeline runs in its own process (TensorFlow stays out of the caller).
Start-up (reading, rendering, building the tf.data graph, the first batch)
and one more window (filling the shuffle buffer) are excluded; the median
of `--windows` windows of `--window_batches` batches is reported. Counting
follows `benchmarks/data_bench.py`: examples = packed segments, tokens =
non-padding encoder + decoder tokens. `batches_per_s` divided by the train
step's steps/s (same batch size) is how many times faster the pipeline
feeds batches than the trainer eats them (`vs_train`).
"""
from __future__ import annotations

import argparse
import statistics
import time

from benchmarks import common

REAL = {"dialogue": "dialog_summarization", "flan": "flan2022_heldin"}
SYNTHETIC = {"dialogue": "synth_chat_summary_mix", "flan": "synth_multitask"}
REAL_NEEDS = {"dialogue": ("dialogsum", "samsum", "t5_spiece"), "flan": ("t0", "rte", "sst2", "t5_spiece")}


def mixture_names(real: bool | None = None) -> dict[str, str]:
    """{kind: mixture}: real mixtures when their data is present (or `real=True`), else synthetic."""
    from flanx import paths

    out = {}
    for kind in ("dialogue", "flan"):
        use_real = all(paths.dataset_available(d) for d in REAL_NEEDS[kind]) if real is None else real
        out[kind] = REAL[kind] if use_real else SYNTHETIC[kind]
    return out


def measure(name: str, inputs_length: int, targets_length: int, batch_size: int, window_batches: int,
            windows: int, seed: int = 0) -> dict:
    """Start-up seconds and per-window rates of packed batches of `name`; medians over windows."""
    import flanx.data
    from flanx.data import pipeline

    start = time.perf_counter()
    flanx.data.register_all()
    it = pipeline.get_dataset(name, {"inputs": inputs_length, "targets": targets_length}, batch_size=batch_size,
                              seed=seed, pack=True)
    next(it)
    startup = time.perf_counter() - start
    rates = []
    for w in range(windows + 1):
        examples = tokens = 0
        t0 = time.perf_counter()
        for _ in range(window_batches):
            batch = next(it)
            examples += int(batch["encoder_segment_ids"].max(axis=1).sum())
            tokens += int((batch["encoder_input_tokens"] > 0).sum() + (batch["decoder_target_tokens"] > 0).sum())
        seconds = time.perf_counter() - t0
        if w:  # window 0 fills the shuffle buffer
            rates.append({"batches_per_s": window_batches / seconds, "examples_per_s": examples / seconds,
                          "tokens_per_s": tokens / seconds, "examples_per_batch": examples / window_batches})
    med = {k: statistics.median(r[k] for r in rates) for k in rates[0]}
    return {"name": name, "startup_s": startup, **med,
            "slot_tokens_per_s": med["batches_per_s"] * batch_size * (inputs_length + targets_length),
            "windows": rates}


def run(train_rates: dict[str, float] | None = None, batch_size: int = 8, inputs_length: int = 512,
        targets_length: int = 128, window_batches: int = 100, windows: int = 3, real: bool | None = None,
        timeout: float = 600, write: bool = True) -> dict:
    """Measure both mixtures in a subprocess; compare with `train_rates` {model: train steps/s}."""
    names = mixture_names(real)
    rows = []
    train_rates = {k: v for k, v in (train_rates or {}).items() if v}
    for kind, name in names.items():
        print(f"data {kind}: {name}", flush=True)
        res = common.run_worker("benchmarks.pipeline_vs_train", [
            "--name", name, "--batch_size", str(batch_size), "--inputs_length", str(inputs_length),
            "--targets_length", str(targets_length), "--window_batches", str(window_batches),
            "--windows", str(windows)], timeout)
        row = {"mixture": kind, "name": name, "batch": batch_size, "lengths": f"{inputs_length}/{targets_length}",
               **res}
        for model, steps_per_s in train_rates.items():
            row[f"vs_train_{model}"] = common.ratio(res.get("batches_per_s"), steps_per_s)
        rows.append(row)
    columns = ["mixture", "name", "batch", "lengths", "status", "startup_s", "batches_per_s", "examples_per_s",
               "tokens_per_s", "examples_per_batch"] + [f"vs_train_{m}" for m in train_rates]
    text = common.table(rows, columns, "Data pipeline (CPU, packed) vs the train step's consumption")
    print(text, flush=True)
    for r in rows:
        if r["status"] != "ok":
            print(f"failed: {r['name']}: {r['reason']}", flush=True)
    payload = {"rows": rows, "table": text, "train_steps_per_s": train_rates, "settings": {
        "batch_size": batch_size, "inputs_length": inputs_length, "targets_length": targets_length,
        "window_batches": window_batches, "windows": windows}}
    if write:
        payload["path"] = str(common.write_result("data_vs_train", payload))
    return payload


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--name", help="one task or mixture (default: both mixtures, real data when present)")
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--inputs_length", type=int, default=512)
    p.add_argument("--targets_length", type=int, default=128)
    p.add_argument("--window_batches", type=int, default=100)
    p.add_argument("--windows", type=int, default=3)
    p.add_argument("--synthetic", action="store_true", help="use the synthetic mixtures even with real data")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        common.emit(measure(a.name, a.inputs_length, a.targets_length, a.batch_size, a.window_batches, a.windows))
        return
    run(None, a.batch_size, a.inputs_length, a.targets_length, a.window_batches, a.windows,
        real=False if a.synthetic else None)


if __name__ == "__main__":
    main()
