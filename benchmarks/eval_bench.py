"""Evaluation throughput: the forgetting study's evaluation work, flanx against
Hugging Face `transformers` on the same CPU, weights and token ids.

    python -m benchmarks.eval_bench --summaries 500 --questions 100   # the study's full DialogSum test set

Two workloads, both read from flanx's seqio tasks (real data under
`FLANX_DATA_DIR`; `--synthetic` uses the synthetic chat tasks and the tiny model):

- `summaries`: greedy decoding of DialogSum test dialogues
  (`dialogsum_template_0_zero_shot`), inputs padded to 512, up to 128 new
  tokens, in batches of the study's evaluation batch size (50). flanx runs
  `flanx.predict.decode_tokens` (what the study's seqio `predict_fn`
  calls per batch: `decoding.greedy_decode`, which stops once every row has
  ended); transformers runs `generate(do_sample=False, num_beams=1,
  max_new_tokens=128)`, which also stops when every row has produced EOS.
- `rank_classification`: MMLU test questions
  (`mmlu_template_0_zero_shot_scoring`: one row per answer option, the study's
  rank classification), target log-likelihood sums at 512/128. flanx runs
  `flanx.predict.score_batch` (`decoding.score`); transformers one
  forward pass with the decoder inputs and a log-softmax gather.

Both sides get the same padded batches (the features seqio's
`EncDecFeatureConverter(pack=False)` makes from the tasks, as the study's
evaluator does), so they do the same matmuls. Weights: a random-weight preset
(`t5_1_1_small` by default; speed does not depend on the values), exported with
`export_hf`. `agreement` is the fraction of decoded rows (up to EOS) or of
log-likelihoods (to 1e-3 relative) on which the two sides agree.

`--cores 1` pins both sides to one core (torch with one thread) and adds
`ratio_cpu`, the ratio of the two sides' CPU seconds per pass: on a machine
shared with other jobs that is the ratio an idle core would show.

Each side runs in its own process (`common.interleaved`): a first call per
workload runs its first batch only (compilation; `first_batch_s`), then whole
passes alternate between the sides and the median of `--repeats` is reported. seqio's own work (reading, rendering,
tokenizing, metrics) is not timed: it is the same for both and happens once.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from benchmarks import common

SIDES = ("flanx", "torch")
CASES = ("summaries", "rank_classification")
REAL_TASKS = {"summaries": ("dialogsum_template_0_zero_shot", "test"),
              "rank_classification": ("mmlu_template_0_zero_shot_scoring", "test")}
SYNTHETIC_TASKS = {"summaries": ("synth_chat_summary_template_0to9_zsnoopt", "validation"),
                   "rank_classification": ("synth_chat_refund_template_0to7_zsopt_scoring", "validation")}
FEATURES = ("encoder_input_tokens", "decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights")


# ----------------------------------------------------------------------------- features


def _task_features(task_name: str, split: str, lengths: dict, rows: int | None = None,
                   questions: int | None = None) -> dict[str, np.ndarray]:
    """Padded model features of a task's first `rows` examples (scoring tasks: of the rows of
    its first `questions` questions, every answer option of each)."""
    import seqio
    task = seqio.get_mixture_or_task(task_name)
    ds = task.get_dataset(lengths, split=split, shuffle=False, num_epochs=1, seed=0)
    if questions is not None:
        ds = ds.filter(lambda ex: ex["idx"][0] < questions)
    if rows is not None:
        ds = ds.take(rows)
    ds = seqio.EncDecFeatureConverter(pack=False)(ds, lengths)
    examples = list(ds.as_numpy_iterator())
    if not examples:
        raise ValueError(f"task {task_name!r} has no {split!r} examples")
    return {k: np.stack([ex[k] for ex in examples]).astype(np.int32) for k in FEATURES}


def prepare_features(path: str, synthetic: bool, summaries: int, questions: int, inputs_length: int,
                     targets_length: int) -> dict:
    """Write both workloads' features to `path` (npz); runs in a worker (TensorFlow and seqio)."""
    import flanx.data

    flanx.data.register_all()
    tasks = SYNTHETIC_TASKS if synthetic else REAL_TASKS
    lengths = {"inputs": inputs_length, "targets": targets_length}
    summ = _task_features(*tasks["summaries"], lengths, rows=summaries)
    rank = _task_features(*tasks["rank_classification"], lengths, questions=questions)
    arrays = {f"summaries/{k}": v for k, v in summ.items()}
    arrays.update({f"rank_classification/{k}": v for k, v in rank.items()})
    np.savez(path, **arrays)
    return {"summaries_rows": len(summ["encoder_input_tokens"]), "rank_rows": len(rank["encoder_input_tokens"]),
            "summaries_mean_input_tokens": float((summ["encoder_input_tokens"] > 0).sum(axis=1).mean()),
            "rank_mean_input_tokens": float((rank["encoder_input_tokens"] > 0).sum(axis=1).mean()),
            "tasks": {k: v[0] for k, v in tasks.items()}}


def _load(path: str, case: str) -> dict[str, np.ndarray]:
    with np.load(path) as f:
        return {k.split("/", 1)[1]: f[k] for k in f.files if k.startswith(case + "/")}


def _batches(n: int, batch_size: int):
    return [(start, min(start + batch_size, n)) for start in range(0, n, batch_size)]


def _first_call_one_batch(cases: dict) -> dict:
    """Wrap each case `fn(batches)` so its first call (the untimed compile call) runs one batch and
    later calls run them all."""
    calls = {name: 0 for name in cases}

    def wrap(name, fn):
        def call():
            calls[name] += 1
            fn(1 if calls[name] == 1 else None)
        return call

    return {name: wrap(name, fn) for name, fn in cases.items()}


# ----------------------------------------------------------------------------- workers


def _flanx_worker(model_dir: str, features: str, batch_size: int, targets_length: int) -> None:
    import jax

    from flanx import predict
    from flanx.checkpoints.hf import import_hf

    params, config = import_hf(model_dir)
    params = jax.device_put(params)
    summ, rank = _load(features, "summaries"), _load(features, "rank_classification")
    decode = predict.DecodeConfig(method="greedy", batch_size=batch_size, max_decode_length=targets_length)
    outputs: dict = {}

    def summaries(limit):
        enc = summ["encoder_input_tokens"]
        rows = []
        for a, b in _batches(len(enc), batch_size)[:limit]:
            tokens, _ = predict.decode_tokens(params, config, enc[a:b], decode, targets_length)
            rows += [predict.trim_at_eos(t) for t in tokens]
        outputs["summaries"] = rows

    def rank_classification(limit):
        n = len(rank["encoder_input_tokens"])
        scores = [predict.score_batch(params, config, {k: v[a:b] for k, v in rank.items()}, batch_size)
                  for a, b in _batches(n, batch_size)[:limit]]
        outputs["rank_classification"] = np.concatenate(scores).tolist()

    common.serve(_first_call_one_batch({"summaries": summaries, "rank_classification": rank_classification}),
                 lambda: {"outputs": outputs, "peak_rss_mib": common.peak_rss_mib()})


def _torch_worker(model_dir: str, features: str, batch_size: int, targets_length: int, threads: int) -> None:
    import torch
    from transformers import T5ForConditionalGeneration

    torch.set_num_threads(threads)
    model = T5ForConditionalGeneration.from_pretrained(model_dir).eval()
    summ, rank = _load(features, "summaries"), _load(features, "rank_classification")
    outputs: dict = {}

    def pad_rows(x: np.ndarray) -> torch.Tensor:  # the same fixed-size batches flanx's evaluator makes
        full = np.zeros((batch_size,) + x.shape[1:], x.dtype)
        full[:len(x)] = x
        return torch.from_numpy(full).long()

    def summaries(limit):
        enc = summ["encoder_input_tokens"]
        rows = []
        for a, b in _batches(len(enc), batch_size)[:limit]:
            ids = pad_rows(enc[a:b])
            with torch.inference_mode():
                out = model.generate(input_ids=ids, attention_mask=(ids > 0).long(), do_sample=False, num_beams=1,
                                     max_new_tokens=targets_length, use_cache=True)
            rows += [_trim(r[1:]) for r in out[:b - a].tolist()]  # drop the decoder start token
        outputs["summaries"] = rows

    def rank_classification(limit):
        n = len(rank["encoder_input_tokens"])
        scores = []
        for a, b in _batches(n, batch_size)[:limit]:
            batch = {k: pad_rows(v[a:b]) for k, v in rank.items()}
            with torch.inference_mode():
                logits = model(input_ids=batch["encoder_input_tokens"],
                               attention_mask=(batch["encoder_input_tokens"] > 0).long(),
                               decoder_input_ids=batch["decoder_input_tokens"]).logits
                logp = torch.log_softmax(logits.float(), dim=-1)
                token = logp.gather(-1, batch["decoder_target_tokens"][..., None])[..., 0]
                scores.append((token * batch["decoder_loss_weights"].float()).sum(-1)[:b - a].numpy())
        outputs["rank_classification"] = np.concatenate(scores).tolist()

    common.serve(_first_call_one_batch({"summaries": summaries, "rank_classification": rank_classification}),
                 lambda: {"outputs": outputs, "peak_rss_mib": common.peak_rss_mib(),
                          "threads": torch.get_num_threads()})


def _trim(tokens, eos_id: int = 1) -> list[int]:
    out = []
    for t in tokens:
        if t == eos_id:
            break
        if t:
            out.append(int(t))
    return out


# ----------------------------------------------------------------------------- driver


def agreement(case: str, a, b) -> float | None:
    """Fraction of rows on which both sides agree (decoded tokens exactly; scores to 1e-3 relative)."""
    if a is None or b is None or len(a) != len(b) or not len(a):
        return None
    if case == "summaries":
        return float(np.mean([x == y for x, y in zip(a, b)]))
    a, b = np.asarray(a), np.asarray(b)
    return float(np.mean(np.isclose(a, b, rtol=1e-3, atol=1e-3)))


def run(model: str = "t5_1_1_small", summaries: int = 50, questions: int = 25, batch_size: int = 50,
        inputs_length: int = 512, targets_length: int = 128, warmup: int = 0, repeats: int = 2,
        threads: int = 2, synthetic: bool = False, timeout: float = 3600, write: bool = True,
        cores: int | None = None) -> dict:
    """Prepare the features, run both sides interleaved, print the table; returns the results."""
    if cores:
        threads = min(threads, cores)
    from benchmarks import hf_train_bench

    rows = []
    with tempfile.TemporaryDirectory(prefix="flanx_eval_bench_") as tmp:
        features = str(Path(tmp) / "features.npz")
        info = common.run_worker("benchmarks.eval_bench", [
            "--prepare", features, "--summaries", str(summaries), "--questions", str(questions),
            "--inputs_length", str(inputs_length), "--targets_length", str(targets_length)]
            + (["--synthetic"] if synthetic else []), timeout)
        if info["status"] != "ok":
            print(f"eval: preparing the features failed: {info['reason']}", flush=True)
            return {"rows": [], "table": "", "status": "failed", "reason": info["reason"]}
        model_dir, _ = hf_train_bench.prepare(model, 1, 8, 8, Path(tmp))
        print(f"eval {model}: {info['summaries_rows']} summaries, {info['rank_rows']} rank-classification rows, "
              f"batch {batch_size}, {inputs_length}/{targets_length}", flush=True)
        base = ["--model_dir", str(model_dir), "--features", features, "--batch_size", str(batch_size),
                "--targets_length", str(targets_length), "--threads", str(threads)] + (
                    ["--cores", str(cores)] if cores else [])
        specs = {side: ("benchmarks.eval_bench", ["--side", side] + base) for side in SIDES}
        res = common.interleaved(specs, list(CASES), warmup, repeats, timeout, run_timeout=timeout)
    counts = {"summaries": info["summaries_rows"], "rank_classification": info["rank_rows"]}
    for case in CASES:
        rate = {}
        for side in SIDES:
            r = res[side]
            rate[side] = counts[case] / r["cases"][case]["median_s"] if r["status"] == "ok" else None
        outs = [res[s].get("outputs", {}).get(case) for s in SIDES]
        rows.append({"model": model, "work": case, "task": info["tasks"][case], "rows": counts[case],
                     "batch": batch_size, "lengths": f"{inputs_length}/{targets_length}",
                     "mean_input_tokens": info["summaries_mean_input_tokens" if case == "summaries"
                                               else "rank_mean_input_tokens"],
                     "flanx_s": res["flanx"].get("cases", {}).get(case, {}).get("median_s"),
                     "torch_s": res["torch"].get("cases", {}).get(case, {}).get("median_s"),
                     "flanx_rows_per_s": rate["flanx"], "torch_rows_per_s": rate["torch"],
                     "ratio": common.ratio(rate["flanx"], rate["torch"]), "agreement": agreement(case, *outs),
                     "ratio_cpu": common.ratio(*[res[s].get("cases", {}).get(case, {}).get("cpu_median_s")
                                                 for s in ("torch", "flanx")]),
                     "flanx_first_batch_s": res["flanx"].get("first", {}).get(case),
                     "torch_first_batch_s": res["torch"].get("first", {}).get(case)})
    text = common.table(rows, ["model", "work", "rows", "batch", "lengths", "mean_input_tokens", "flanx_s", "torch_s",
                               "flanx_rows_per_s", "torch_rows_per_s", "ratio", "ratio_cpu", "agreement"],
                        "Evaluation (CPU, the study's work): flanx vs transformers"
                        + (f", pinned to {cores} core(s)" if cores else ""))
    print(text, flush=True)
    failures = [f"{s}: {res[s]['reason']}" for s in SIDES if res[s]["status"] != "ok"]
    if failures:
        print("failed: " + "; ".join(failures), flush=True)
    payload = {"rows": rows, "table": text, "features": info, "settings": {
        "model": model, "summaries": summaries, "questions": questions, "batch_size": batch_size,
        "inputs_length": inputs_length, "targets_length": targets_length, "warmup": warmup, "repeats": repeats,
        "torch_threads": threads, "synthetic": synthetic, "cores": cores},
        "peak_rss_mib": {s: res[s].get("peak_rss_mib") for s in SIDES}}
    if write:
        payload["path"] = str(common.write_result("eval_vs_hf", payload))
    return payload


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="t5_1_1_small")
    p.add_argument("--summaries", type=int, default=50, help="DialogSum test dialogues to summarize (study: 500)")
    p.add_argument("--questions", type=int, default=25, help="MMLU test questions to rank-classify")
    p.add_argument("--batch_size", type=int, default=50, help="the study's eval_batch_size")
    p.add_argument("--inputs_length", type=int, default=512)
    p.add_argument("--targets_length", type=int, default=128)
    p.add_argument("--warmup", type=int, default=0)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--synthetic", action="store_true", help="synthetic chat tasks (no FLANX_DATA_DIR needed)")
    p.add_argument("--cores", type=int, help="pin both sides to this many cores (1: also ratio_cpu)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--prepare", help=argparse.SUPPRESS)
    p.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)
    p.add_argument("--model_dir", help=argparse.SUPPRESS)
    p.add_argument("--features", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker and a.prepare:
        common.emit(prepare_features(a.prepare, a.synthetic, a.summaries, a.questions, a.inputs_length,
                                     a.targets_length))
    elif a.worker and a.side == "flanx":
        common.pin_cores(a.cores)
        _flanx_worker(a.model_dir, a.features, a.batch_size, a.targets_length)
    elif a.worker:
        common.pin_cores(a.cores)
        _torch_worker(a.model_dir, a.features, a.batch_size, a.targets_length, a.threads)
    else:
        run(a.model, a.summaries, a.questions, a.batch_size, a.inputs_length, a.targets_length, a.warmup,
            a.repeats, a.threads, a.synthetic, cores=a.cores)


if __name__ == "__main__":
    main()
