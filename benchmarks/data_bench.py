"""Data-pipeline throughput: packed T5X batches from a flanx task or mixture, vs bare seqio.

    python -m benchmarks.data_bench                        # dialog_summarization, 512/128, T5 SPM
    python -m benchmarks.data_bench --name dialogsum_mix --batches 2000 --bare --json out.json

What is timed: `flanx.data.pipeline.get_dataset(name, {"inputs": L_in, "targets":
L_tgt}, batch_size, seed=0, pack=True)`, i.e. rendering (templates, few-shot
exemplars), SentencePiece tokenization, EOS, mixing, shuffling and
`EncDecFeatureConverter` packing, read as numpy batches. `startup_s` is the
time to the first batch (reading and rendering the data, building the
tf.data graph); the steady state is the next `--batches` batches.

- examples/s: packed examples (segments) per second of steady state;
- tokens/s: non-padding encoder plus decoder tokens per second.

`--bare` also times the baseline the design note quotes: a plain seqio task
over DialogSum train with one fixed prompt (no templates, no mixing),
tokenized and packed the same way, so both numbers come from the same
machine and moment. Periodic progress lines follow `flanx.progress`.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np

from flanx.progress import Progress, setup_logging

BARE_TASK = "data_bench_bare_dialogsum"
BARE_PROMPT = "Summarize the following conversation.\n\n{}\n\nSummary: "


def _register_bare() -> str:
    """A minimal seqio task over DialogSum train: one prompt, tokenize, EOS. No flanx rendering."""
    import seqio
    import tensorflow as tf

    from flanx import paths
    from flanx.data import get_vocabulary

    if BARE_TASK in seqio.TaskRegistry.names():
        return BARE_TASK
    path = paths.require_dataset("dialogsum") / "dialogsum" / "dialogsum.train.jsonl"

    def dataset_fn(split, shuffle_files, seed=None):
        rows = [json.loads(line) for line in open(path, encoding="utf-8")]
        ds = tf.data.Dataset.from_tensor_slices({"inputs": [BARE_PROMPT.format(r["dialogue"]) for r in rows],
                                                 "targets": [r["summary"] for r in rows]})
        return ds.shuffle(len(rows), seed=seed) if shuffle_files and seed is not None else ds

    vocab = get_vocabulary("t5_spm")
    seqio.TaskRegistry.add(BARE_TASK, seqio.FunctionDataSource(dataset_fn, splits=["train"]),
                           output_features={"inputs": seqio.Feature(vocab), "targets": seqio.Feature(vocab)},
                           preprocessors=[seqio.preprocessors.tokenize, seqio.preprocessors.append_eos_after_trim])
    return BARE_TASK


def measure(name: str, lengths: dict, batch_size: int, batches: int, seed: int = 0, log_every: int = 100) -> dict:
    """Startup seconds and steady-state examples/s, tokens/s of packed batches of `name`."""
    from flanx.data import pipeline

    start = time.perf_counter()
    it = pipeline.get_dataset(name, lengths, batch_size=batch_size, seed=seed, pack=True)
    first = next(it)
    startup = time.perf_counter() - start
    progress = Progress(f"data:{name}", total=batches, every=log_every, unit="tokens")
    examples = tokens = 0
    t0 = time.perf_counter()
    for step in range(1, batches + 1):
        batch = next(it)
        n_ex = int(batch["encoder_segment_ids"].max(axis=1).sum())
        n_tok = int((batch["encoder_input_tokens"] > 0).sum() + (batch["decoder_target_tokens"] > 0).sum())
        examples += n_ex
        tokens += n_tok
        progress.update(step, n_tok)
    seconds = time.perf_counter() - t0
    fill_in = float((first["encoder_input_tokens"] > 0).mean())
    fill_tgt = float((first["decoder_target_tokens"] > 0).mean())
    return {"name": name, "startup_s": round(startup, 2), "batches": batches, "seconds": round(seconds, 2),
            "examples": examples, "tokens": tokens, "examples_per_s": round(examples / seconds, 1),
            "tokens_per_s": round(tokens / seconds, 1), "examples_per_batch": round(examples / batches, 2),
            "first_batch_fill": {"inputs": round(fill_in, 3), "targets": round(fill_tgt, 3)}}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--name", default="dialog_summarization", help="task or mixture (default: %(default)s)")
    parser.add_argument("--inputs", type=int, default=512)
    parser.add_argument("--targets", type=int, default=128)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--batches", type=int, default=1000, help="steady-state batches to time")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bare", action="store_true", help="also time a bare seqio DialogSum task")
    parser.add_argument("--json", help="write the results here as JSON")
    args = parser.parse_args(argv)
    setup_logging()
    import flanx.data

    flanx.data.register_all()
    lengths = {"inputs": args.inputs, "targets": args.targets}
    results = [measure(args.name, lengths, args.batch_size, args.batches, args.seed)]
    if args.bare:
        results.append(measure(_register_bare(), lengths, args.batch_size, args.batches, args.seed))
    print(f"\n| pipeline | startup s | examples/s | tokens/s | examples/batch |  ({args.batch_size} x "
          f"{args.inputs}/{args.targets}, packed, {os.cpu_count()} CPUs)")
    print("|---|---|---|---|---|")
    for r in results:
        print(f"| {r['name']} | {r['startup_s']} | {r['examples_per_s']:,.0f} | {r['tokens_per_s']:,.0f} | "
              f"{r['examples_per_batch']} |")
    if args.json:
        payload = {"benchmark": "data_bench", "lengths": lengths, "batch_size": args.batch_size,
                   "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                               "python": platform.python_version()},
                   "results": results}
        with open(args.json, "w") as f:
            json.dump(payload, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
