"""Training throughput of flanx's trainer loop (tokens/s), per model preset.

    python -m benchmarks.train_bench --models tiny,t5_1_1_small --batch_size 8 --steps 6

What is timed: `flanx.train.trainer.train` itself (sharded state, jitted train
step with Adafactor as T5X runs it, host batch -> device, metric fetches),
fed one packed 512/128 batch (`common.packed_batch`) over and over, no
checkpoints. Each model runs in its own process (`--worker`), so compile
caches and peak RSS are its own. The first `--warmup` steps (compilation)
are excluded: the clock runs from the batch request of step `warmup + 1`
(the trainer has just fetched step `warmup`'s metrics, so nothing earlier is
still running) to the end of `train()` (which blocks on the last step). Besides wall
time the worker reports its own CPU time per step (all threads), which a
machine shared with other jobs distorts less: on an idle machine wall time
approaches CPU time / cores used.

tokens/s counts token slots, batch * (inputs_length + targets_length) per
step, padding included (the convention of benchmarks/hf_train_bench.py).
Options for what the model code offers: `--scan`, `--remat full|dots_saveable`,
`--dtype bfloat16`, `--microbatches N`.
"""
from __future__ import annotations

import argparse
import time

from benchmarks import common


class _TimedBatches:
    """Yields one fixed batch forever and remembers when each step asked for it."""

    def __init__(self, batch):
        self.batch, self.requested, self.cpu = batch, [], []

    def __iter__(self):
        return self

    def __next__(self):
        self.requested.append(time.perf_counter())
        self.cpu.append(time.process_time())
        return self.batch


def _worker(model: str, batch_size: int, inputs_length: int, targets_length: int, steps: int, warmup: int,
            scan: bool, remat: str, dtype: str, microbatches: int) -> None:
    import jax

    from flanx.models import get_config
    from flanx.train import trainer
    from flanx.train.config import OptimizerConfig, TrainConfig

    config = get_config(model, scan_layers=scan, remat_policy=remat, dtype=dtype)
    batch = common.packed_batch(batch_size, inputs_length, targets_length, config.vocab_size, seed=0)
    data = _TimedBatches(batch)
    # log_every=warmup: the trainer fetches metrics (blocks) at step `warmup`, so no warm-up step is
    # still running when the clock starts at the next batch request.
    cfg = TrainConfig(train_steps=warmup + steps, batch_size=batch_size, num_microbatches=microbatches,
                      log_every=max(warmup, 1),
                      optimizer=OptimizerConfig(name="adafactor", learning_rate=1e-3, schedule="constant"))
    start = time.perf_counter()
    result = trainer.train(cfg, config, lambda shard: data)
    end, end_cpu = time.perf_counter(), time.process_time()
    timed = end - data.requested[warmup]
    cpu = end_cpu - data.cpu[warmup]
    slots = common.slot_tokens(batch)
    n_params = sum(x.size for x in jax.tree.leaves(result.params))
    common.emit({
        "model": model, "params_m": n_params / 1e6, "batch_size": batch_size,
        "lengths": f"{inputs_length}/{targets_length}", "steps_timed": steps,
        "s_per_step": timed / steps, "tokens_per_s": slots * steps / timed,
        "cpu_s_per_step": cpu / steps, "tokens_per_cpu_s": slots * steps / cpu,
        "first_steps_s": data.requested[warmup] - start, "loss_first": result.losses[1],
        "loss_last": result.losses[warmup + steps], "peak_rss_mib": common.peak_rss_mib(),
        "backend": jax.default_backend(), "devices": jax.device_count(),
        "options": {"scan": scan, "remat": remat, "dtype": dtype, "microbatches": microbatches}})


def run(models=("tiny", "t5_1_1_small"), batch_size: int = 8, inputs_length: int = 512, targets_length: int = 128,
        steps: int = 6, warmup: int = 2, scan: bool = False, remat: str = "none", dtype: str = "float32",
        microbatches: int = 1, timeout: float = 1800, write: bool = True) -> list[dict]:
    rows = []
    for model in models:
        args = ["--models", model, "--batch_size", str(batch_size), "--inputs_length", str(inputs_length),
                "--targets_length", str(targets_length), "--steps", str(steps), "--warmup", str(warmup),
                "--remat", remat, "--dtype", dtype, "--microbatches", str(microbatches)] + (["--scan"] if scan else [])
        rows.append({"model": model, **common.run_worker("benchmarks.train_bench", args, timeout)})
    print(common.table(rows, ["model", "status", "params_m", "lengths", "batch_size", "s_per_step", "tokens_per_s",
                              "cpu_s_per_step", "tokens_per_cpu_s",
                              "first_steps_s", "loss_first", "loss_last", "peak_rss_mib", "backend"],
                       title="flanx trainer throughput (Adafactor, packed batch, token slots/s)"))
    if write:
        print("wrote", common.write_result("train_bench", {"rows": rows}))
    return rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="tiny,t5_1_1_small")
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--inputs_length", type=int, default=512)
    p.add_argument("--targets_length", type=int, default=128)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--scan", action="store_true")
    p.add_argument("--remat", default="none", choices=["none", "full", "dots_saveable"])
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--microbatches", type=int, default=1)
    p.add_argument("--no_write", action="store_true")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        _worker(a.models, a.batch_size, a.inputs_length, a.targets_length, a.steps, a.warmup, a.scan, a.remat,
                a.dtype, a.microbatches)
        return
    run(a.models.split(","), a.batch_size, a.inputs_length, a.targets_length, a.steps, a.warmup, a.scan, a.remat,
        a.dtype, a.microbatches, write=not a.no_write)


if __name__ == "__main__":
    main()
