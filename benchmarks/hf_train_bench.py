"""Training-step throughput: flanx's jitted train step against Hugging Face
`transformers` T5ForConditionalGeneration in PyTorch, on the same CPU, weights,
config, batch and optimizer family.

    python -m benchmarks.hf_train_bench --models tiny,t5_1_1_small --batch_size 8

Setup (one run, side by side):
- weights: `flanx.models.init_params(preset)` exported with
  `flanx.checkpoints.hf.export_hf`; flanx reads them back with `import_hf`,
  transformers with `from_pretrained`, so both start from identical tensors;
- batch: one packed 512/128 batch (`common.packed_batch`, several examples
  per row). flanx gets the segment ids and positions; transformers has no
  packing-aware attention, so it gets the same tokens with padding masks only
  (identical matmul shapes, so identical FLOPs);
- optimizer: flanx Adafactor (`flanx.train.optim`, T5X settings, constant
  lr 1e-3) vs `transformers.optimization.Adafactor(lr=1e-3,
  scale_parameter=True, relative_step=False, warmup_init=False)`;
- dropout as the preset says, on in both;
- sides: `flanx` and `torch` use the whole machine (XLA's thread pool;
  `torch.set_num_threads(--threads)`, 2 here); `flanx_1c` and `torch_1c` are
  pinned to one core (torch with 1 thread), the pair that stays meaningful
  when other jobs load the machine (2 torch threads then wait on each other
  at every op); `torch_compile` is `torch.compile(model)` at `--threads`, its
  first step limited to `--compile_timeout` seconds; `flanx_bf16` and
  `torch_bf16` run bfloat16 activations (flanx `dtype="bfloat16"`, torch
  under `torch.autocast("cpu", torch.bfloat16)`) on the whole machine.
  `vs_torch` compares each side with the eager torch side on the same cores
  and in the same dtype;
- each side runs in its own process (`common.Worker`), so the peak RSS
  (`ru_maxrss`) is that side's alone. Sides run in comparison groups, each
  with its transformers baseline (`common.comparison_groups`: flanx, torch
  and torch_compile; then flanx_1c and torch_1c; ...), so that only one
  group's workers are resident at a time; within a group the workers are set
  up one after another, then their steps alternate. The first step (compilation) and `--warmup`
  more are excluded; the median of `--repeats` steps is reported.

tokens/s counts token slots, batch * (512 + 128) per step, padding included.
For the one-core sides `vs_torch_cpu` is the same ratio from each worker's CPU
time per step (`cpu_median_s`): equal to the wall-clock ratio on an idle
machine, and still meaningful when other jobs share the core.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from benchmarks import common

LEARNING_RATE = 1e-3
# `*_1c`: pinned to one core (torch with 1 thread); the others use the machine (torch: --threads).
# `*_bf16`: bfloat16 activations over float32 weights (flanx `dtype="bfloat16"`, T5X's training
# default; torch under `torch.autocast("cpu", torch.bfloat16)`), compared with each other.
SIDES = ("flanx", "torch", "flanx_1c", "torch_1c", "torch_compile", "flanx_bf16", "torch_bf16")


def prepare(model: str, batch_size: int, inputs_length: int, targets_length: int, workdir: Path,
            seed: int = 0) -> tuple[Path, Path]:
    """Write the shared Hugging Face weights and the packed batch; returns (model_dir, batch_path)."""
    import jax

    from flanx.checkpoints.hf import export_hf
    from flanx.models import get_config, init_params

    config = get_config(model)
    params = jax.device_get(init_params(config, jax.random.PRNGKey(seed)))
    model_dir = export_hf(params, config, workdir / f"{model}_hf")
    batch = common.packed_batch(batch_size, inputs_length, targets_length, config.vocab_size, seed)
    batch_path = common.save_batch(workdir / f"{model}_batch_{batch_size}.npz", batch)
    return model_dir, batch_path


# ----------------------------------------------------------------------------- workers


def _flanx_worker(model_dir: str, batch_path: str, scan: bool, bf16: bool = False) -> None:
    import jax
    import jax.numpy as jnp

    from flanx.checkpoints import stack_layers
    from flanx.checkpoints.hf import import_hf
    from flanx.train import optim, step as step_lib
    from flanx.train.config import LossConfig, OptimizerConfig

    params, config = import_hf(model_dir)
    if scan:
        config, params = config.replace(scan_layers=True), stack_layers(params)
    if bf16:
        config = config.replace(dtype="bfloat16")
    opt_cfg = OptimizerConfig(name="adafactor", learning_rate=LEARNING_RATE, schedule="constant")
    optimizer = optim.make_optimizer(opt_cfg)
    fn = step_lib.make_train_step(step_lib.model_apply_fn(config), optimizer, optim.make_schedule(opt_cfg),
                                  LossConfig())
    train_step = jax.jit(fn, donate_argnums=(0,))
    batch = {k: jnp.asarray(v) for k, v in common.load_batch(Path(batch_path)).items()}
    holder = {"state": step_lib.init_state(params, optimizer, None, seed=0)}
    del params
    losses = []

    def step():
        holder["state"], metrics = train_step(holder["state"], batch)
        losses.append(float(metrics["loss"]))  # fetching the loss blocks until the step is done

    common.serve({"step": step}, lambda: {
        "loss_first": losses[0], "loss_last": losses[-1], "peak_rss_mib": common.peak_rss_mib(),
        "slot_tokens": common.slot_tokens(batch), "backend": jax.default_backend()})


def _torch_worker(model_dir: str, batch_path: str, threads: int, compile_model: bool,
                  bf16: bool = False) -> None:
    import torch
    from transformers import T5ForConditionalGeneration
    from transformers.optimization import Adafactor

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = T5ForConditionalGeneration.from_pretrained(model_dir)
    model.train()
    optimizer = Adafactor(model.parameters(), lr=LEARNING_RATE, scale_parameter=True, relative_step=False,
                          warmup_init=False, clip_threshold=1.0, decay_rate=-0.8, beta1=None,
                          weight_decay=0.0)
    batch = common.load_batch(Path(batch_path))
    inputs = torch.from_numpy(batch["encoder_input_tokens"]).long()
    decoder_inputs = torch.from_numpy(batch["decoder_input_tokens"]).long()
    labels = torch.from_numpy(batch["decoder_target_tokens"]).long()
    labels[labels == 0] = -100
    attention_mask = (inputs > 0).long()
    forward = torch.compile(model) if compile_model else model
    losses = []

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = forward(input_ids=inputs, attention_mask=attention_mask, decoder_input_ids=decoder_inputs,
                          labels=labels)
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(out.loss.detach()))

    common.serve({"step": step}, lambda: {
        "loss_first": losses[0], "loss_last": losses[-1], "peak_rss_mib": common.peak_rss_mib(),
        "slot_tokens": common.slot_tokens(batch), "threads": torch.get_num_threads()})


# ----------------------------------------------------------------------------- driver


def run(models=("tiny", "t5_1_1_small"), batch_size: int = 8, inputs_length: int = 512,
        targets_length: int = 128, warmup: int = 1, repeats: int = 3, sides=SIDES, threads: int = 2,
        timeout: float = 900, compile_timeout: float = 300, scan: bool = False, compile_models=None,
        workdir: Path | None = None, write: bool = True) -> dict:
    """Run every side for every model (steps interleaved); print the table; return the results.

    `compile_models`: the models the torch.compile side runs for (None: all); the
    others get a `skipped` row.
    """
    rows = []
    with tempfile.TemporaryDirectory(prefix="flanx_train_bench_") as tmp:
        work = Path(workdir or tmp)
        for model in models:
            model_dir, batch_path = prepare(model, batch_size, inputs_length, targets_length, work)
            model_sides = [s for s in sides if s != "torch_compile" or compile_models is None
                           or model in compile_models]
            specs = {}
            for side in model_sides:
                args = ["--side", side, "--model_dir", str(model_dir), "--batch_path", str(batch_path),
                        "--threads", str(threads)] + (["--scan"] if scan else [])
                specs[side] = ("benchmarks.hf_train_bench", args)
            limits = {side: compile_timeout if side == "torch_compile" else timeout for side in model_sides}
            print(f"train {model}: batch {batch_size} x {inputs_length}/{targets_length}", flush=True)
            per_side = {}
            for group in common.comparison_groups(model_sides):
                per_side.update(common.interleaved({side: specs[side] for side in group}, ["step"], warmup,
                                                   repeats, limits, run_timeout=timeout))
            for side in sides:
                res = per_side.get(side, {"status": "skipped", "reason": f"torch.compile runs only for "
                                          f"{', '.join(compile_models or ())} here (its first step takes too long)"})
                row = {"model": model, "side": side, "batch": batch_size,
                       "lengths": f"{inputs_length}/{targets_length}", "status": res["status"],
                       "reason": res.get("reason"), "first_step_s": res.get("first", {}).get("step"),
                       "tokens_per_s": _tokens_per_s(res), **{k: res.get(k) for k in (
                           "peak_rss_mib", "loss_first", "loss_last", "setup_s")}}
                if res["status"] == "ok":
                    row.update(res["cases"]["step"])
                row["cores"] = common.side_cores(side) or "all"
                baseline = per_side.get(common.baseline_side(side), {})
                row["vs_torch"] = common.ratio(row["tokens_per_s"], _tokens_per_s(baseline))
                if common.side_cores(side):  # one core: CPU time per step is the idle-core step time
                    row["vs_torch_cpu"] = common.ratio(_tokens_per_s(res, "cpu_median_s"),
                                                       _tokens_per_s(baseline, "cpu_median_s"))
                rows.append(row)
    columns = ["model", "side", "cores", "batch", "lengths", "status", "first_step_s", "median_s", "tokens_per_s",
               "peak_rss_mib", "loss_first", "vs_torch", "cpu_median_s", "vs_torch_cpu"]
    text = common.table(rows, columns, "Training step (CPU): flanx vs transformers")
    print(text, flush=True)
    failures = [f"{r['model']} {r['side']}: {r['reason']}" for r in rows if r["status"] == "failed"]
    if failures:
        print("failed: " + "; ".join(failures), flush=True)
    payload = {"rows": rows, "table": text, "settings": {
        "batch_size": batch_size, "inputs_length": inputs_length, "targets_length": targets_length,
        "warmup": warmup, "repeats": repeats, "torch_threads": threads, "learning_rate": LEARNING_RATE,
        "scan_layers": scan, "compile_timeout_s": compile_timeout, "compile_models": compile_models}}
    if write:
        payload["path"] = str(common.write_result("train_vs_hf", payload))
    return payload


def _tokens_per_s(res: dict, key: str = "median_s"):
    if res.get("status") != "ok" or not res.get("cases") or not res["cases"]["step"].get(key):
        return None
    return res["slot_tokens"] / res["cases"]["step"][key]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="tiny,t5_1_1_small")
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--inputs_length", type=int, default=512)
    p.add_argument("--targets_length", type=int, default=128)
    p.add_argument("--warmup", type=int, default=1, help="untimed steps after the first (compiling) one")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--sides", default=",".join(SIDES))
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--compile_timeout", type=float, default=300)
    p.add_argument("--scan", action="store_true", help="flanx with scan_layers=True")
    # worker mode (one side in this process)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)
    p.add_argument("--model_dir", help=argparse.SUPPRESS)
    p.add_argument("--batch_path", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        cores = common.side_cores(a.side)
        common.pin_cores(cores)
        bf16 = a.side.endswith("_bf16")
        if a.side.startswith("flanx"):
            _flanx_worker(a.model_dir, a.batch_path, a.scan, bf16)
        else:
            _torch_worker(a.model_dir, a.batch_path, cores or a.threads, a.side == "torch_compile", bf16)
        return
    run(tuple(a.models.split(",")), a.batch_size, a.inputs_length, a.targets_length, a.warmup, a.repeats,
        tuple(a.sides.split(",")), a.threads, compile_timeout=a.compile_timeout, scan=a.scan)


if __name__ == "__main__":
    main()
