"""`make bench`: every CPU benchmark in one run, side by side, with the targets checked.

    python -m benchmarks.run_all                      # the full CPU set (see docs/performance.md for its time)
    python -m benchmarks.run_all --only train,decode  # a subset
    python -m benchmarks.run_all --summaries 50 --questions 25   # evaluation sized down
    python -m benchmarks.run_all --toy                # a smoke run: tiny model, short sequences

In order:
1. training step, flanx vs transformers (eager and torch.compile), `tiny`
   and `t5_1_1_small`, batch 8 x 512/128 packed (`benchmarks.hf_train_bench`);
2. decoding, greedy and beam 4 at batch 1 and 8, flanx vs transformers
   `generate` (`benchmarks.hf_decode_bench`);
3. evaluation, the forgetting study's work (greedy summaries of DialogSum
   test dialogues at 512/128, rank classification of MMLU questions), flanx's
   evaluator vs transformers (`benchmarks.eval_bench`; the whole 500-dialogue
   test set and 100 questions, one timed pass per side);
4. the data pipeline (dialogue and FLAN-style mixtures) against the train
   step's consumption measured in 1 (`benchmarks.pipeline_vs_train`);
5. scaling of flanx's train step with input length, batch size and model
   size (`benchmarks.scaling_bench`).

Each prints its table and writes `benchmarks/results/<name>.json`; this
module then prints all tables again with the targets (`TARGETS`) marked met
or missed, and writes `results/summary.json` and `results/summary.md`. When
a training target is missed (or void) it also profiles the t5_1_1_small train step on
one core (`benchmarks.profile_step --cores 1 --pieces step`): the share of
the step in matmuls and their GFLOP/s against a bare XLA matmul, which says
how much of the gap a faster non-matmul part could close. When a decoding
target is missed (or void) it profiles one t5_1_1_small greedy call at batch 8 on one
core (`benchmarks.profile_decode`): its matmul rate against a bare XLA matmul
and against a batch-8 matmul whose weights stream from memory.
The GPU MFU benchmark is separate: `benchmarks/mfu.py` / `benchmarks/gpu_check.sh`.
"""
from __future__ import annotations

import argparse
import time

from benchmarks import common

# target name -> (threshold, what is compared); ONE_CORE: thresholds of the one-core rows where they differ
TARGETS = {
    "train": (1.5, "flanx / eager transformers training tokens/s, per model, with all cores (one core: 1.0)"),
    "decode": (2.0, "flanx / transformers greedy tokens/s, per model and batch, with all cores and with one"),
    "data": (5.0, "pipeline batches/s / train steps/s, each mixture against each measured model"),
}
ONE_CORE = {"train": 1.0}
FULL = {"models": ("tiny", "t5_1_1_small"), "batch_size": 8, "inputs_length": 512, "targets_length": 128,
        "new_tokens": 64, "repeats": 3, "warmup": 0, "train_warmup": 0, "window_batches": 100, "windows": 3,
        "compile_timeout": 420, "train_sides": ("flanx", "torch", "flanx_1c", "torch_1c", "torch_compile"),
        "decode_sides": ("flanx", "torch", "flanx_1c", "torch_1c"), "decode_batches": (1, 8), "real_data": None,
        # torch.compile's first t5_1_1_small step took 1,046 s here (docs/performance.md): tiny only by default
        "compile_models": ("tiny",),
        "eval": {"model": "t5_1_1_small", "summaries": 500, "questions": 100, "batch_size": 50,
                 "inputs_length": 512, "targets_length": 128, "repeats": 1, "synthetic": False},
        "profile": {"model": "t5_1_1_small", "batch_size": 8, "inputs_length": 512, "targets_length": 128,
                    "repeats": 2, "trace_steps": 3},
        "decode_profile": {"model": "t5_1_1_small", "batch_size": 8, "inputs_length": 512, "new_tokens": 64},
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
                 "reference_inputs": 64},
       "profile": {"model": "tiny", "batch_size": 2, "inputs_length": 64, "targets_length": 16, "repeats": 1,
                   "trace_steps": 2},
       "decode_profile": {"model": "tiny", "batch_size": 2, "inputs_length": 64, "new_tokens": 8}}
SECTIONS = ("train", "decode", "eval", "data", "scale")


OVERLOADED = "void: transformers slower on all cores than on one (machine shared)"


def check_targets(train: dict | None, decode: dict | None, data: dict | None) -> list[dict]:
    """One row per measured comparison: value, threshold, met (None when a side failed, or for an
    all-cores row when transformers on all cores was slower than on one: then the machine was
    shared and its threads waited on each other, so the ratio says nothing about flanx)."""
    rows = []

    def add(target, subject, value, note=None):
        threshold = ONE_CORE.get(target, TARGETS[target][0]) if subject.endswith("1 core") else TARGETS[target][0]
        rows.append({"target": target, "subject": subject, "value": value, "threshold": threshold,
                     "met": None if value is None or note else value >= threshold, "note": note})

    if train:
        torch_rate = {(r["model"], r["side"]): r.get("tokens_per_s") for r in train["rows"]}
        for r in train["rows"]:
            if r["side"].startswith("flanx"):
                one_core = r["side"].endswith("_1c")
                all_rate, one_rate = torch_rate.get((r["model"], "torch")), torch_rate.get((r["model"], "torch_1c"))
                note = OVERLOADED if not one_core and all_rate and one_rate and all_rate < one_rate else None
                add("train", f"{r['model']} batch {r['batch']} {r['lengths']}, {'1 core' if one_core else 'all cores'}",
                    r.get("vs_torch"), note)
    if decode:
        for r in decode["summary"]:
            if r["method"] == "greedy":
                all_rate, one_rate = r.get("torch_tokens_per_s"), r.get("torch_1c_tokens_per_s")
                note = OVERLOADED if all_rate and one_rate and all_rate < one_rate else None
                add("decode", f"{r['model']} greedy batch {r['batch']}, all cores", r.get("ratio"), note)
                if r.get("ratio_1c") is not None:
                    add("decode", f"{r['model']} greedy batch {r['batch']}, 1 core", r.get("ratio_1c"))
    if data:
        for r in data["rows"]:
            for key in sorted(k for k in r if k.startswith("vs_train_")):
                add("data", f"{r['name']} vs {key[len('vs_train_'):]} train step", r.get(key))
    return rows


def missed(targets: list[dict], target: str) -> bool:
    """Whether some row of `target` was missed, or void (measured, but not a fair comparison)."""
    return any(t["target"] == target and (t["met"] is False or t.get("note")) for t in targets)


def profile_train_step(p: dict, timeout: float = 1800) -> dict:
    """`benchmarks.profile_step` on one core with a trace: time split and matmul rate of the train step."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="flanx_profile_") as trace_dir:
        res = common.run_worker("benchmarks.profile_step", [
            "--model", p["model"], "--batch_size", str(p["batch_size"]), "--inputs_length", str(p["inputs_length"]),
            "--targets_length", str(p["targets_length"]), "--repeats", str(p["repeats"]), "--cores", "1",
            "--pieces", "step", "--trace_steps", str(p["trace_steps"]), "--trace_dir", trace_dir], timeout)
    if res["status"] != "ok":
        res["text"] = f"profile of the train step failed: {res['reason']}"
    res["table"] = ("Why the training target is missed: the flanx train step on one core\n\n" + res["text"])
    print(res["table"], flush=True)
    res["path"] = str(common.write_result("profile_train_step", res))
    return res


def profile_decoding(p: dict, timeout: float = 1200) -> dict:
    """`benchmarks.profile_decode` on one core: time split and matmul rate of one greedy call."""
    res = common.run_worker("benchmarks.profile_decode", [
        "--model", p["model"], "--batch_size", str(p["batch_size"]), "--inputs_length", str(p["inputs_length"]),
        "--new_tokens", str(p["new_tokens"]), "--cores", "1"], timeout)
    if res["status"] != "ok":
        res["text"] = f"profile of greedy decoding failed: {res['reason']}"
    res["table"] = "Why the decoding target is missed: one flanx greedy call on one core\n\n" + res["text"]
    print(res["table"], flush=True)
    res["path"] = str(common.write_result("profile_decode", res))
    return res


def train_steps_per_s(train: dict | None) -> dict[str, float]:
    """{model: flanx train steps/s} from the training benchmark's rows."""
    out = {}
    for r in (train or {}).get("rows", []):
        if r["side"] == "flanx" and r.get("median_s"):
            out[r["model"]] = 1.0 / r["median_s"]
    return out


def run(settings: dict, only=SECTIONS) -> dict:
    from benchmarks import eval_bench, hf_decode_bench, hf_train_bench, pipeline_vs_train, scaling_bench

    start, load_start = time.perf_counter(), _load_average()
    s = settings
    train = decode = evaluation = data = scale = profile = decode_profile = None
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
                                    e["targets_length"], repeats=e["repeats"], synthetic=e["synthetic"],
                                    cores=e.get("cores"))
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
    targets = check_targets(train, decode, data)
    if missed(targets, "train") and s.get("profile"):
        t0 = time.perf_counter()
        profile = profile_train_step(s["profile"])
        timings["profile_s"] = time.perf_counter() - t0
    if missed(targets, "decode") and s.get("decode_profile"):
        t0 = time.perf_counter()
        decode_profile = profile_decoding(s["decode_profile"])
        timings["decode_profile_s"] = time.perf_counter() - t0
    timings["total_s"] = time.perf_counter() - start
    target_table = targets_table(targets, "Targets (measured side by side in this run)")
    sections = ([p["table"] for p in (train, decode, evaluation, data, scale, profile, decode_profile)
                 if p and p.get("table")]
                + [target_table])
    report = "\n\n".join(sections)
    print("\n" + "=" * 30 + " flanx benchmarks " + "=" * 30 + "\n\n" + report, flush=True)
    info = common.machine_info()
    load = _load_average()
    footer = (f"{info.get('time')}, {info.get('cpu_model', '')} x{info.get('cpu_count')}, commit "
              f"{info.get('git_commit', '?')}; load average (1, 5, 15 min) at the start {load_start}, "
              f"at the end {load}; total {timings['total_s']:.0f} s")
    print(f"\n{footer}; JSON in {common.RESULTS_DIR}", flush=True)
    payload = {"settings": {k: list(v) if isinstance(v, tuple) else v for k, v in s.items()},  # nested: JSON
               "targets": targets, "timings": timings, "report": report,
               "load_average": {"start": load_start, "end": load},
               "results": {n: p.get("path") for n, p in (("train", train), ("decode", decode), ("eval", evaluation),
                                                          ("data", data), ("scale", scale), ("profile", profile),
                                                          ("decode_profile", decode_profile))
                           if p}}
    payload["path"] = str(common.write_result("summary", payload))
    common.RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (common.RESULTS_DIR / "summary.md").write_text(f"<!-- {footer} -->\n\n{report}\n")
    return payload


def _load_average() -> str:
    import os

    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


def targets_from_results(directory) -> str:
    """The targets table recomputed from a finished run's JSON (`TARGETS` as they are now)."""
    import json
    from pathlib import Path

    def load(name):
        path = Path(directory) / f"{name}.json"
        return json.loads(path.read_text()) if path.is_file() else None

    targets = check_targets(load("train_vs_hf"), load("decode_vs_hf"), load("data_vs_train"))
    return targets_table(targets, f"Targets (from the results in {directory})")


def targets_table(targets: list[dict], title: str) -> str:
    return common.table([{**t, "met": {True: "met", False: "missed", None: "n/a"}[t["met"]]} for t in targets],
                        ["target", "subject", "value", "threshold", "met", "note"], title)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--toy", action="store_true", help="tiny model, short sequences: a smoke run in seconds")
    p.add_argument("--only", default=",".join(SECTIONS), help="comma list of " + ", ".join(SECTIONS))
    p.add_argument("--models", help="override the models, e.g. tiny")
    p.add_argument("--repeats", type=int)
    p.add_argument("--compile_timeout", type=float, help="seconds allowed for torch.compile's first step")
    p.add_argument("--no_compile", action="store_true", help="skip the torch.compile side")
    p.add_argument("--summaries", type=int, help="DialogSum dialogues to summarize (default 500, the test set)")
    p.add_argument("--questions", type=int, help="MMLU questions to rank-classify (default 100)")
    p.add_argument("--eval_cores", type=int, help="pin the evaluation's two sides to this many cores (1: CPU-time "
                   "ratio too, for a machine shared with other jobs)")
    p.add_argument("--no_profile", action="store_true", help="no profiles when a target is missed")
    p.add_argument("--compile_models", help="models to run torch.compile for (default: tiny)")
    p.add_argument("--targets_from", metavar="DIR", help="only recompute the targets table from the JSON a run "
                   "left in DIR (e.g. benchmarks/results)")
    a = p.parse_args(argv)
    if a.targets_from:
        print(targets_from_results(a.targets_from))
        return
    settings = dict(TOY if a.toy else FULL)
    if a.models:
        settings["models"] = tuple(a.models.split(","))
    if a.repeats:
        settings["repeats"] = a.repeats
    if a.compile_timeout:
        settings["compile_timeout"] = a.compile_timeout
    if a.compile_models:
        settings["compile_models"] = tuple(a.compile_models.split(","))
    if a.summaries or a.questions:
        settings["eval"] = dict(settings["eval"], summaries=a.summaries or settings["eval"]["summaries"],
                                questions=a.questions or settings["eval"]["questions"])
    if a.eval_cores:
        settings["eval"] = dict(settings["eval"], cores=a.eval_cores)
    if a.no_profile:
        settings["profile"] = settings["decode_profile"] = None
    if a.no_compile:
        settings["train_sides"] = tuple(x for x in settings["train_sides"] if x != "torch_compile")
    run(settings, tuple(a.only.split(",")))


if __name__ == "__main__":
    main()
