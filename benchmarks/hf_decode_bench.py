"""Decoding throughput: flanx (`flanx.models.decoding`) against Hugging Face
`transformers` `generate` (PyTorch, CPU) on the same weights.

    python -m benchmarks.hf_decode_bench --models tiny,t5_1_1_small --new_tokens 64

- weights: flanx `init_params(preset)` exported with `export_hf`; flanx reads
  them back with `import_hf`, transformers with `from_pretrained`;
- inputs: random token ids, `--inputs_length` (512) long, no padding;
- cases: greedy and beam search (4 beams), batch 1 and 8 (the one-core
  pair, `flanx_1c` / `torch_1c`, runs greedy only); every case
  generates exactly `--new_tokens` tokens per row: the end-of-sequence id is
  set to an id outside the vocabulary on both sides, so no row stops early
  and both sides do the same number of decoder steps;
- both sides use a KV cache (flanx: `decoding.greedy_decode` / `beam_search`,
  jitted; transformers: `generate(use_cache=True)` under `inference_mode`,
  `torch.set_num_threads(2)`);
- each side runs in its own process; after the first (compiling) call and
  `--warmup` rounds, calls alternate between the sides and the median of
  `--repeats` is reported.

tokens/s = batch * new_tokens / seconds (beam search counts the returned
sequence, not the hypotheses). `ratio_1c_cpu` is the one-core ratio from each
worker's CPU time per call instead of wall-clock time: the same on an idle
machine, and still meaningful when other jobs share the core. `greedy_agreement` is the fraction of greedy
tokens on which both sides agree (1.0 = identical output).
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from benchmarks import common

# `*_1c`: pinned to one core (torch with 1 thread); the others use the machine (torch: --threads).
SIDES = ("flanx", "torch", "flanx_1c", "torch_1c")
METHODS = ("greedy", "beam4")
BATCHES = (1, 8)


def case_names(methods=METHODS, batches=BATCHES) -> list[str]:
    return [f"{m}_b{b}" for m in methods for b in batches]


def _parse_case(case: str) -> tuple[str, int]:
    method, batch = case.rsplit("_b", 1)
    return method, int(batch)


def prepare(model: str, max_batch: int, inputs_length: int, workdir: Path, seed: int = 0) -> tuple[Path, Path]:
    """Write the shared Hugging Face weights and the encoder inputs; returns (model_dir, inputs_path)."""
    import jax

    from flanx.checkpoints.hf import export_hf
    from flanx.models import get_config, init_params

    config = get_config(model)
    params = jax.device_get(init_params(config, jax.random.PRNGKey(seed)))
    model_dir = export_hf(params, config, workdir / f"{model}_hf")
    rng = np.random.default_rng(seed)
    tokens = rng.integers(2, config.vocab_size, (max_batch, inputs_length)).astype(np.int32)
    tokens[:, -1] = 1
    path = common.save_batch(workdir / f"{model}_inputs.npz", {"encoder_input_tokens": tokens})
    return model_dir, path


# ----------------------------------------------------------------------------- workers


def _flanx_worker(model_dir: str, inputs_path: str, cases: list[str], new_tokens: int) -> None:
    import jax
    import jax.numpy as jnp

    from flanx.checkpoints.hf import import_hf
    from flanx.models import decoding

    params, config = import_hf(model_dir)
    params = jax.device_put(params)
    tokens = common.load_batch(Path(inputs_path))["encoder_input_tokens"]
    never = config.vocab_size  # an end-of-sequence id no step can produce
    outputs = {}

    def make(case):
        method, batch = _parse_case(case)
        enc = jnp.asarray(tokens[:batch])

        def call():
            if method == "greedy":
                out = decoding.greedy_decode(params, config, enc, max_decode_length=new_tokens, eos_id=never)
            else:
                out, _ = decoding.beam_search(params, config, enc, num_beams=int(method[4:]),
                                              max_decode_length=new_tokens, eos_id=never)
                out = out[:, 0]
            outputs[case] = np.asarray(out)  # blocks until done
        return call

    common.serve({c: make(c) for c in cases}, lambda: {
        "outputs": {c: o.tolist() for c, o in outputs.items()}, "peak_rss_mib": common.peak_rss_mib()})


def _torch_worker(model_dir: str, inputs_path: str, cases: list[str], new_tokens: int, threads: int) -> None:
    import torch
    from transformers import T5ForConditionalGeneration

    torch.set_num_threads(threads)
    model = T5ForConditionalGeneration.from_pretrained(model_dir).eval()
    tokens = torch.from_numpy(common.load_batch(Path(inputs_path))["encoder_input_tokens"]).long()
    never = model.config.vocab_size
    outputs = {}

    def make(case):
        method, batch = _parse_case(case)
        enc = tokens[:batch]
        beams = 1 if method == "greedy" else int(method[4:])

        def call():
            with torch.inference_mode():
                out = model.generate(input_ids=enc, attention_mask=torch.ones_like(enc), do_sample=False,
                                     num_beams=beams, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                     eos_token_id=never, use_cache=True)
            outputs[case] = out[:, 1:].numpy()  # drop the decoder start token
        return call

    common.serve({c: make(c) for c in cases}, lambda: {
        "outputs": {c: o.tolist() for c, o in outputs.items()}, "peak_rss_mib": common.peak_rss_mib(),
        "threads": torch.get_num_threads()})


# ----------------------------------------------------------------------------- driver


def agreement(a, b) -> float | None:
    """Fraction of equal tokens between two [B, T] outputs (None when shapes differ)."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or a.size == 0:
        return None
    return float(np.mean(a == b))


def run(models=("tiny", "t5_1_1_small"), inputs_length: int = 512, new_tokens: int = 64,
        methods=METHODS, batches=BATCHES, warmup: int = 1, repeats: int = 3, threads: int = 2,
        timeout: float = 900, sides=SIDES, one_core_methods=("greedy",), write: bool = True) -> dict:
    """Both side pairs for every model; the one-core pair runs only `one_core_methods`."""
    cases = case_names(methods, batches)
    rows, summary = [], []
    with tempfile.TemporaryDirectory(prefix="flanx_decode_bench_") as tmp:
        for model in models:
            model_dir, inputs_path = prepare(model, max(batches), inputs_length, Path(tmp))
            print(f"decode {model}: inputs {inputs_length}, {new_tokens} new tokens", flush=True)
            res = {}
            for group in (tuple(s for s in sides if not common.side_cores(s)),
                          tuple(s for s in sides if common.side_cores(s))):
                group_cases = [c for c in cases if not common.side_cores(group[0]) or
                               _parse_case(c)[0] in one_core_methods] if group else []
                if not group_cases:
                    continue
                base = ["--model_dir", str(model_dir), "--inputs_path", str(inputs_path),
                        "--cases", ",".join(group_cases), "--new_tokens", str(new_tokens), "--threads", str(threads)]
                specs = {side: ("benchmarks.hf_decode_bench", ["--side", side] + base) for side in group}
                res.update(common.interleaved(specs, group_cases, warmup, repeats, timeout, run_timeout=timeout))
            for case in cases:
                method, batch = _parse_case(case)
                rates = {side: None for side in SIDES}
                cpu_rates = {side: None for side in SIDES}
                for side in sides:
                    r = res[side]
                    if r["status"] == "ok" and case not in r["cases"]:
                        continue  # not run on this side
                    ok = r["status"] == "ok"
                    stats = r["cases"][case] if ok else {}
                    rate = batch * new_tokens / stats["median_s"] if ok else None
                    rates[side] = rate
                    if ok and stats.get("cpu_median_s"):
                        cpu_rates[side] = batch * new_tokens / stats["cpu_median_s"]
                    rows.append({"model": model, "method": method, "batch": batch, "side": side,
                                 "status": r["status"], "reason": r.get("reason"),
                                 "first_call_s": r.get("first", {}).get(case), **stats, "tokens_per_s": rate,
                                 "peak_rss_mib": r.get("peak_rss_mib")})
                same = None
                if res["flanx"]["status"] == "ok" and res.get("torch", {}).get("status") == "ok":
                    same = agreement(res["flanx"]["outputs"].get(case), res["torch"]["outputs"].get(case))
                summary.append({"model": model, "method": method, "batch": batch,
                                "flanx_tokens_per_s": rates["flanx"], "torch_tokens_per_s": rates["torch"],
                                "ratio": common.ratio(rates["flanx"], rates["torch"]),
                                "flanx_1c_tokens_per_s": rates["flanx_1c"], "torch_1c_tokens_per_s": rates["torch_1c"],
                                "ratio_1c": common.ratio(rates["flanx_1c"], rates["torch_1c"]),
                                "ratio_1c_cpu": common.ratio(cpu_rates["flanx_1c"], cpu_rates["torch_1c"]),
                                "agreement": same})
    text = common.table(summary, ["model", "method", "batch", "flanx_tokens_per_s", "torch_tokens_per_s", "ratio",
                                  "flanx_1c_tokens_per_s", "torch_1c_tokens_per_s", "ratio_1c", "ratio_1c_cpu",
                                  "agreement"],
                        f"Decoding (CPU, inputs {inputs_length}, {new_tokens} new tokens): flanx vs transformers")
    print(text, flush=True)
    failures = sorted({f"{r['model']} {r['side']}: {r['reason']}" for r in rows if r["status"] != "ok"})
    if failures:
        print("failed: " + "; ".join(failures), flush=True)
    payload = {"rows": rows, "summary": summary, "table": text, "settings": {
        "inputs_length": inputs_length, "new_tokens": new_tokens, "warmup": warmup, "repeats": repeats,
        "torch_threads": threads}}
    if write:
        payload["path"] = str(common.write_result("decode_vs_hf", payload))
    return payload


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="tiny,t5_1_1_small")
    p.add_argument("--inputs_length", type=int, default=512)
    p.add_argument("--new_tokens", type=int, default=64)
    p.add_argument("--methods", default=",".join(METHODS), help="greedy, beamK (K beams)")
    p.add_argument("--batches", default=",".join(map(str, BATCHES)))
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)
    p.add_argument("--model_dir", help=argparse.SUPPRESS)
    p.add_argument("--inputs_path", help=argparse.SUPPRESS)
    p.add_argument("--cases", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        cases, cores = a.cases.split(","), common.side_cores(a.side)
        common.pin_cores(cores)
        if a.side.startswith("flanx"):
            _flanx_worker(a.model_dir, a.inputs_path, cases, a.new_tokens)
        else:
            _torch_worker(a.model_dir, a.inputs_path, cases, a.new_tokens, cores or a.threads)
        return
    run(tuple(a.models.split(",")), a.inputs_length, a.new_tokens, tuple(a.methods.split(",")),
        tuple(int(b) for b in a.batches.split(",")), a.warmup, a.repeats, a.threads)


if __name__ == "__main__":
    main()
