"""`make bench`: every CPU benchmark in one run, side by side, with the targets checked.

    python -m benchmarks.run_all                      # the full CPU set (about 25 minutes on 2 idle cores)
    python -m benchmarks.run_all --only train,decode  # a subset
    python -m benchmarks.run_all --toy                # a smoke run: tiny model, short sequences

In order:
1. training step, flanx vs transformers (eager and torch.compile), `tiny`
   and `t5_1_1_small`, batch 8 x 512/128 packed (`benchmarks.hf_train_bench`);
2. decoding, greedy and beam 4 at batch 1 and 8, flanx vs transformers
   `generate` (`benchmarks.hf_decode_bench`);
3. evaluation, the forgetting study's work (greedy summaries of DialogSum
   test dialogues, rank classification of MMLU questions), flanx's evaluator
   vs transformers (`benchmarks.eval_bench`; 50 dialogues and 25 questions
   here, `--summaries 500` for the study's full test set);
4. the data pipeline (dialogue and FLAN-style mixtures) against the train
   step's consumption measured in 1 (`benchmarks.pipeline_vs_train`);
5. scaling of flanx's train step with input length, batch size and model
   size (`benchmarks.scaling_bench`).

Each prints its table and writes `benchmarks/results/<name>.json`; this
module then prints all tables again with the targets (`TARGETS`) marked met
or missed, and writes `results/summary.json` and `results/summary.md`.
The GPU MFU benchmark is separate: `benchmarks/mfu.py` / `benchmarks/gpu_check.sh`.
"""
from __future__ import annotations

import argparse
import time

from benchmarks import common

# target name -> (threshold, what is compared)
TARGETS = {
    "train": (1.5, "flanx / eager transformers training tokens/s, per model, with all cores and with one"),
    "decode": (2.0, "flanx / transformers greedy tokens/s, per model and batch, with all cores and with one"),
    "data": (5.0, "pipeline batches/s / train steps/s, each mixture against each measured model"),
}
FULL = {"models": ("tiny", "t5_1_1_small"), "batch_size": 8, "inputs_length": 512, "targets_length": 128,
        "new_tokens": 64, "repeats": 3, "warmup": 0, "train_warmup": 0, "window_batches": 100, "windows": 3,
        "compile_timeout": 420, "train_sides": ("flanx", "torch", "flanx_1c", "torch_1c", "torch_compile"),
        "decode_sides": ("flanx", "torch", "flanx_1c", "torch_1c"), "decode_batches": (1, 8), "real_data": None,
        # torch.compile's first t5_1_1_small step took 1,046 s here (docs/performance.md): tiny only by default
        "compile_models": ("tiny",),
        "eval": {"model": "t5_1_1_small", "summaries": 50, "questions": 25, "batch_size": 50,
                 "inputs_length": 512, "targets_length": 128, "repeats": 2, "synthetic": False},
        "scale": {"lengths": (256, 512, 1024, 2048), "batches": (1, 4, 8),
                  "models": ("tiny", "t5_1_1_small", "t5_1_1_base")}}
# --toy: no torch.compile (it takes minutes even for tiny) and the synthetic mixtures.
TOY = {"models": ("tiny",), "batch_size": 2, "inputs_length": 64, "targets_length": 16, "new_tokens": 8,
       "repeats": 2, "warmup": 0, "train_warmup": 0, "window_batches": 5, "windows": 2, "compile_timeout": 300,
       "train_sides": ("flanx", "torch"), "decode_sides": ("flanx", "torch"), "decode_batches": (2,),
       "real_data": False, "compile_models": (),
       "eval": {"model": "tiny", "summaries": 4, "questions": 3, "batch_size": 4, "inputs_length": 64,
                "targets_length": 16, "repeats": 1, "synthetic": True},
       "scale": {"lengths": (64, 128), "batches": (1, 2), "models": ("tiny",), "reference_model": "tiny",
                 "reference_inputs": 64}}
SECTIONS = ("train", "decode", "eval", "data", "scale")


def check_targets(train: dict | None, decode: dict | None, data: dict | None) -> list[dict]:
    """One row per measured comparison: value, threshold, met (None when a side failed)."""
    rows = []

    def add(target, subject, value):
        threshold = TARGETS[target][0]
        rows.append({"target": target, "subject": subject, "value": value, "threshold": threshold,
                     "met": None if value is None else value >= threshold})

    if train:
        for r in train["rows"]:
            if r["side"].startswith("flanx"):
                cores = "1 core" if r["side"].endswith("_1c") else "all cores"
                add("train", f"{r['model']} batch {r['batch']} {r['lengths']}, {cores}", r.get("vs_torch"))
    if decode:
        for r in decode["summary"]:
            if r["method"] == "greedy":
                add("decode", f"{r['model']} greedy batch {r['batch']}, all cores", r.get("ratio"))
                if r.get("ratio_1c") is not None:
                    add("decode", f"{r['model']} greedy batch {r['batch']}, 1 core", r.get("ratio_1c"))
    if data:
        for r in data["rows"]:
            for key in sorted(k for k in r if k.startswith("vs_train_")):
                add("data", f"{r['name']} vs {key[len('vs_train_'):]} train step", r.get(key))
    return rows


def train_steps_per_s(train: dict | None) -> dict[str, float]:
    """{model: flanx train steps/s} from the training benchmark's rows."""
    out = {}
    for r in (train or {}).get("rows", []):
        if r["side"] == "flanx" and r.get("median_s"):
            out[r["model"]] = 1.0 / r["median_s"]
    return out


def run(settings: dict, only=SECTIONS) -> dict:
    from benchmarks import eval_bench, hf_decode_bench, hf_train_bench, pipeline_vs_train, scaling_bench

    start = time.perf_counter()
    s = settings
    train = decode = evaluation = data = scale = None
    timings = {}
    if "train" in only:
        t0 = time.perf_counter()
        train = hf_train_bench.run(s["models"], s["batch_size"], s["inputs_length"], s["targets_length"],
                                   s["train_warmup"], s["repeats"], s["train_sides"],
                                   compile_timeout=s["compile_timeout"], compile_models=s["compile_models"])
        timings["train_s"] = time.perf_counter() - t0
    if "decode" in only:
        t0 = time.perf_counter()
        decode = hf_decode_bench.run(s["models"], s["inputs_length"], s["new_tokens"],
                                     batches=s["decode_batches"], warmup=s["warmup"], repeats=s["repeats"],
                                     sides=s["decode_sides"])
        timings["decode_s"] = time.perf_counter() - t0
    if "eval" in only:
        t0 = time.perf_counter()
        e = s["eval"]
        evaluation = eval_bench.run(e["model"], e["summaries"], e["questions"], e["batch_size"], e["inputs_length"],
                                    e["targets_length"], repeats=e["repeats"], synthetic=e["synthetic"])
        timings["eval_s"] = time.perf_counter() - t0
    if "data" in only:
        t0 = time.perf_counter()
        data = pipeline_vs_train.run(train_steps_per_s(train), s["batch_size"], s["inputs_length"],
                                     s["targets_length"], s["window_batches"], s["windows"], s["real_data"])
        timings["data_s"] = time.perf_counter() - t0
    if "scale" in only:
        t0 = time.perf_counter()
        c = s["scale"]
        reference = dict(scaling_bench.REFERENCE, model=c.get("reference_model", scaling_bench.REFERENCE["model"]),
                         inputs_length=c.get("reference_inputs", scaling_bench.REFERENCE["inputs_length"]))
        scale = scaling_bench.run(c["lengths"], c["batches"], c["models"], reference=reference)
        timings["scale_s"] = time.perf_counter() - t0
    timings["total_s"] = time.perf_counter() - start
    targets = check_targets(train, decode, data)
    target_table = common.table(
        [{**t, "met": {True: "yes", False: "NO", None: "n/a"}[t["met"]]} for t in targets],
        ["target", "subject", "value", "threshold", "met"], "Targets (measured side by side in this run)")
    sections = [p["table"] for p in (train, decode, evaluation, data, scale) if p and p.get("table")] + [target_table]
    report = "\n\n".join(sections)
    print("\n" + "=" * 30 + " flanx benchmarks " + "=" * 30 + "\n\n" + report, flush=True)
    print(f"\ntotal {timings['total_s']:.0f} s; JSON in {common.RESULTS_DIR}", flush=True)
    payload = {"settings": {k: list(v) if isinstance(v, tuple) else v for k, v in s.items()},  # nested: JSON
               "targets": targets, "timings": timings, "report": report,
               "results": {n: p.get("path") for n, p in (("train", train), ("decode", decode), ("eval", evaluation),
                                                          ("data", data), ("scale", scale)) if p}}
    payload["path"] = str(common.write_result("summary", payload))
    common.RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    info = common.machine_info()
    (common.RESULTS_DIR / "summary.md").write_text(
        f"<!-- {info.get('time')} {info.get('cpu_model', '')} x{info.get('cpu_count')} "
        f"commit {info.get('git_commit', '?')} -->\n\n{report}\n")
    return payload


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--toy", action="store_true", help="tiny model, short sequences: a smoke run in seconds")
    p.add_argument("--only", default=",".join(SECTIONS), help="comma list of " + ", ".join(SECTIONS))
    p.add_argument("--models", help="override the models, e.g. tiny")
    p.add_argument("--repeats", type=int)
    p.add_argument("--compile_timeout", type=float, help="seconds allowed for torch.compile's first step")
    p.add_argument("--no_compile", action="store_true", help="skip the torch.compile side")
    p.add_argument("--compile_models", help="models to run torch.compile for (default: tiny)")
    a = p.parse_args(argv)
    settings = dict(TOY if a.toy else FULL)
    if a.models:
        settings["models"] = tuple(a.models.split(","))
    if a.repeats:
        settings["repeats"] = a.repeats
    if a.compile_timeout:
        settings["compile_timeout"] = a.compile_timeout
    if a.compile_models:
        settings["compile_models"] = tuple(a.compile_models.split(","))
    if a.no_compile:
        settings["train_sides"] = tuple(x for x in settings["train_sides"] if x != "torch_compile")
    run(settings, tuple(a.only.split(",")))


if __name__ == "__main__":
    main()
