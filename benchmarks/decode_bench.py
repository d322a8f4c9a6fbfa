"""Greedy decoding throughput: flanx's KV-cache `greedy_decode` against Hugging Face
`transformers` `generate` (PyTorch), on the same CPU, weights and inputs.

    python -m benchmarks.decode_bench --models tiny,t5_1_1_small --batch_size 8

Setup (one run, side by side):
- weights: `flanx.models.init_params(preset)` exported with
  `flanx.checkpoints.hf.export_hf`; flanx reads them back with `import_hf`,
  transformers with `from_pretrained`, so both decode identical tensors;
- inputs: `batch_size` rows of `inputs_length` random token ids (no padding);
- both sides produce exactly `new_tokens` tokens per row: flanx with an EOS id
  that never occurs, transformers with `min_new_tokens = max_new_tokens`
  (KV cache on, `do_sample=False`, `num_beams=1`);
- torch runs with `--threads` threads (default 2), XLA uses the machine's cores;
- each side runs in its own process; calls are interleaved between sides, the
  first (compiling) call and `--warmup` more are excluded, the median of
  `--repeats` calls is reported.

tokens/s = batch_size * new_tokens / seconds per call (the encoder pass included).
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from benchmarks import common

SIDES = ("flanx", "torch")


def prepare(model: str, batch_size: int, inputs_length: int, workdir: Path, seed: int = 0):
    """Write the shared Hugging Face weights and the input ids; returns (model_dir, inputs_path)."""
    import jax

    from flanx.checkpoints.hf import export_hf
    from flanx.models import get_config, init_params

    config = get_config(model)
    params = jax.device_get(init_params(config, jax.random.PRNGKey(seed)))
    model_dir = export_hf(params, config, workdir / f"{model}_hf")
    rng = np.random.default_rng(seed)
    inputs = rng.integers(2, config.vocab_size, (batch_size, inputs_length)).astype(np.int32)
    inputs_path = common.save_batch(workdir / f"{model}_inputs.npz", {"encoder_input_tokens": inputs})
    return model_dir, inputs_path


def _flanx_worker(model_dir: str, inputs_path: str, new_tokens: int, scan: bool) -> None:
    import jax
    import jax.numpy as jnp

    from flanx.checkpoints import stack_layers
    from flanx.checkpoints.hf import import_hf
    from flanx.models import decoding

    params, config = import_hf(model_dir)
    if scan:
        config, params = config.replace(scan_layers=True), stack_layers(params)
    params = jax.device_put(params)
    inputs = jnp.asarray(common.load_batch(Path(inputs_path))["encoder_input_tokens"])
    out = {}

    def decode():
        out["tokens"] = np.asarray(decoding.greedy_decode(params, config, inputs, new_tokens, eos_id=-1))

    common.serve({"decode": decode}, lambda: {
        "generated": int(out["tokens"].shape[0] * out["tokens"].shape[1]),
        "peak_rss_mib": common.peak_rss_mib(), "backend": jax.default_backend()})


def _torch_worker(model_dir: str, inputs_path: str, new_tokens: int, threads: int) -> None:
    import torch
    from transformers import T5ForConditionalGeneration

    torch.set_num_threads(threads)
    model = T5ForConditionalGeneration.from_pretrained(model_dir).eval()
    inputs = torch.from_numpy(common.load_batch(Path(inputs_path))["encoder_input_tokens"]).long()
    mask = (inputs > 0).long()
    out = {}

    def decode():
        with torch.inference_mode():
            tokens = model.generate(input_ids=inputs, attention_mask=mask, do_sample=False, num_beams=1,
                                    max_new_tokens=new_tokens, min_new_tokens=new_tokens, use_cache=True)
        out["tokens"] = tokens[:, 1:].numpy()  # drop the decoder start token

    common.serve({"decode": decode}, lambda: {
        "generated": int(out["tokens"].shape[0] * out["tokens"].shape[1]),
        "peak_rss_mib": common.peak_rss_mib(), "threads": torch.get_num_threads()})


def run(models=("tiny", "t5_1_1_small"), batch_size: int = 8, inputs_length: int = 512,
        new_tokens: int = 64, warmup: int = 1, repeats: int = 3, sides=SIDES, threads: int = 2,
        timeout: float = 900, scan: bool = False, write: bool = True) -> dict:
    """Run both sides for every model; print the table; return the results."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="flanx_decode_bench_") as tmp:
        for model in models:
            model_dir, inputs_path = prepare(model, batch_size, inputs_length, Path(tmp))
            specs = {side: ("benchmarks.decode_bench", [
                "--side", side, "--model_dir", str(model_dir), "--inputs_path", str(inputs_path),
                "--new_tokens", str(new_tokens), "--threads", str(threads)] + (["--scan"] if scan else []))
                for side in sides}
            print(f"decode {model}: batch {batch_size}, input {inputs_length}, {new_tokens} new tokens",
                  flush=True)
            per_side = common.interleaved(specs, ["decode"], warmup, repeats, timeout, run_timeout=timeout)
            base = _tokens_per_s(per_side.get("torch", {}))
            for side in sides:
                res = per_side[side]
                row = {"model": model, "side": side, "batch": batch_size, "input": inputs_length,
                       "new_tokens": new_tokens, "status": res["status"], "reason": res.get("reason"),
                       "first_call_s": res.get("first", {}).get("decode"), "tokens_per_s": _tokens_per_s(res),
                       "peak_rss_mib": res.get("peak_rss_mib")}
                if res["status"] == "ok":
                    row.update(res["cases"]["decode"])
                row["vs_torch"] = common.ratio(row["tokens_per_s"], base)
                rows.append(row)
    columns = ["model", "side", "batch", "input", "new_tokens", "status", "first_call_s", "median_s",
               "tokens_per_s", "peak_rss_mib", "vs_torch"]
    text = common.table(rows, columns, "Greedy decoding (CPU): flanx vs transformers generate")
    print(text, flush=True)
    payload = {"rows": rows, "table": text, "settings": {
        "batch_size": batch_size, "inputs_length": inputs_length, "new_tokens": new_tokens,
        "warmup": warmup, "repeats": repeats, "torch_threads": threads, "scan_layers": scan}}
    if write:
        payload["path"] = str(common.write_result("decode_vs_hf", payload))
    return payload


def _tokens_per_s(res: dict):
    if res.get("status") != "ok" or not res.get("cases"):
        return None
    return res["generated"] / res["cases"]["decode"]["median_s"]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="tiny,t5_1_1_small")
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--inputs_length", type=int, default=512)
    p.add_argument("--new_tokens", type=int, default=64)
    p.add_argument("--warmup", type=int, default=1, help="untimed calls after the first (compiling) one")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--sides", default=",".join(SIDES))
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--scan", action="store_true", help="flanx with scan_layers=True")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)
    p.add_argument("--model_dir", help=argparse.SUPPRESS)
    p.add_argument("--inputs_path", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        if a.side == "flanx":
            _flanx_worker(a.model_dir, a.inputs_path, a.new_tokens, a.scan)
        else:
            _torch_worker(a.model_dir, a.inputs_path, a.new_tokens, a.threads)
        return
    run(tuple(a.models.split(",")), a.batch_size, a.inputs_length, a.new_tokens, a.warmup, a.repeats,
        tuple(a.sides.split(",")), a.threads, scan=a.scan)


if __name__ == "__main__":
    main()
