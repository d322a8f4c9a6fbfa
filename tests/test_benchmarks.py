"""Benchmarks: packed synthetic batches, the FLOPs formula against the jaxpr, the MFU
script on CPU without TensorFlow, worker failures, targets, and a toy `run_all`."""
from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import common, mfu, profile_step, run_all
from flanx.models import get_config, init_params
from flanx.train import optim, step as step_lib
from flanx.train.config import LossConfig, OptimizerConfig

REPO = Path(__file__).resolve().parent.parent
# Unequal everything, so a swapped term in the formula shows up.
ODD = get_config("tiny", d_model=24, num_heads=3, head_dim=5, d_ff=36, num_encoder_layers=2,
                 num_decoder_layers=3, vocab_size=50, dropout_rate=0.0)


def test_packed_batch_layout():
    b = common.packed_batch(4, 96, 24, vocab_size=50, seed=3, input_range=(10, 40), target_range=(3, 9))
    again = common.packed_batch(4, 96, 24, vocab_size=50, seed=3, input_range=(10, 40), target_range=(3, 9))
    assert all(np.array_equal(b[k], again[k]) for k in b)
    assert not np.array_equal(b["encoder_input_tokens"],
                              common.packed_batch(4, 96, 24, 50, seed=4)["encoder_input_tokens"])
    assert all(v.dtype == np.int32 for v in b.values())
    for row in range(4):
        enc_seg, dec_seg = b["encoder_segment_ids"][row], b["decoder_segment_ids"][row]
        assert enc_seg.max() == dec_seg.max() >= 2  # several examples per row, same count on both sides
        for seg in range(1, enc_seg.max() + 1):
            for prefix, tok_key in (("encoder", "encoder_input_tokens"), ("decoder", "decoder_target_tokens")):
                idx = np.flatnonzero(b[f"{prefix}_segment_ids"][row] == seg)
                assert np.array_equal(idx, np.arange(idx[0], idx[-1] + 1))  # contiguous
                assert np.array_equal(b[f"{prefix}_positions"][row, idx], np.arange(len(idx)))
                toks = b[tok_key][row, idx]
                assert toks[-1] == 1 and np.all(toks[:-1] >= 2)  # EOS ends each example
            idx = np.flatnonzero(dec_seg == seg)
            dec_in = b["decoder_input_tokens"][row, idx]
            assert dec_in[0] == 0 and np.array_equal(dec_in[1:], b["decoder_target_tokens"][row, idx[:-1]])
        pad = b["encoder_input_tokens"][row] == 0
        assert np.all(b["encoder_segment_ids"][row][pad] == 0)
    assert np.array_equal(b["decoder_loss_weights"], (b["decoder_target_tokens"] > 0).astype(np.int32))
    assert common.slot_tokens(b) == 4 * (96 + 24)


def _batch(config, batch_size=2, li=20, lt=7):
    return {k: jnp.asarray(v) for k, v in common.packed_batch(batch_size, li, lt, config.vocab_size, 0,
                                                              (4, 12), (2, 4)).items()}


def _abstract_state(config, optimizer):
    """Shapes only: tracing the step needs no compiled init."""
    return jax.eval_shape(lambda: step_lib.init_state(init_params(config, jax.random.PRNGKey(0)), optimizer, None, 0))


def test_model_flops_equal_the_dot_products_of_the_forward_and_train_step():
    params = jax.eval_shape(lambda: init_params(ODD, jax.random.PRNGKey(0)))
    batch = _batch(ODD)
    apply = step_lib.model_apply_fn(ODD)
    forward = mfu.dot_flops(jax.make_jaxpr(lambda p, b: apply(p, b, None, False))(params, batch))
    flops = mfu.model_flops(ODD, 20, 7, batch_size=2)
    assert forward == 2 * flops["forward_per_sequence"] == sum(flops["forward_breakdown"].values()) * 2
    # by hand for this config: encoder 2 layers, decoder 3 layers, h = 15
    d, h, f, v, le, ld = 24, 15, 36, 50, 20, 7
    enc = 2 * (le * (4 * d * h + 3 * d * f) + le * 2 * le * h)
    dec = 3 * (ld * (6 * d * h + 3 * d * f) + le * 2 * d * h + ld * 2 * (ld + le) * h)
    assert flops["forward_per_sequence"] == 2 * (enc + dec + ld * d * v)
    opt_cfg = OptimizerConfig(learning_rate=1e-3)
    opt = optim.make_optimizer(opt_cfg)
    fn = step_lib.make_train_step(apply, opt, optim.make_schedule(opt_cfg), LossConfig(), enable_dropout=False)
    assert mfu.dot_flops(jax.make_jaxpr(fn)(_abstract_state(ODD, opt), batch)) == flops["step"] == 3 * forward


def test_dot_flops_counts_scanned_layers_and_recomputation():
    cfg = ODD.replace(scan_layers=True, remat_policy="full")
    opt_cfg = OptimizerConfig(learning_rate=1e-3)
    opt = optim.make_optimizer(opt_cfg)
    fn = step_lib.make_train_step(step_lib.model_apply_fn(cfg), opt, optim.make_schedule(opt_cfg),
                                  LossConfig(), enable_dropout=False)
    executed = mfu.dot_flops(jax.make_jaxpr(fn)(_abstract_state(cfg, opt), _batch(cfg)))
    flops = mfu.model_flops(cfg, 20, 7, batch_size=2)
    layers = flops["step"] // 3 - 2 * flops["forward_breakdown"]["logits"]
    # full remat recomputes every layer's forward matmuls except the MLP output `wo` (its
    # output is not needed by the backward pass); the logits are outside the remat'd layers
    wo = 2 * 2 * cfg.d_ff * cfg.d_model * (cfg.num_encoder_layers * 20 + cfg.num_decoder_layers * 7)
    assert executed == flops["step"] + layers - wo


def test_peak_tflops_by_device_kind():
    assert mfu.peak_tflops("NVIDIA H100 80GB HBM3") == 989.4
    assert mfu.peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert mfu.peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert mfu.peak_tflops("NVIDIA H200") == 989.4
    assert mfu.peak_tflops("cpu") is None


@pytest.mark.slow
def test_mfu_script_on_cpu_imports_no_tensorflow(tmp_path):
    out = tmp_path / "mfu.jsonl"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.mfu", "--model", "tiny", "--batch_size", "2", "--inputs_length", "32",
         "--targets_length", "16", "--warmup", "1", "--steps", "2", "--windows", "2", "--peak_tflops", "0.5",
         "--scan_layers", "false", "--remat", "dots_saveable", "--trace_dir", str(tmp_path / "trace"),
         "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
        env={**__import__("os").environ, "PYTHONPATH": f"{REPO}:{REPO / 'src'}"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = json.loads(out.read_text().splitlines()[-1])
    assert r["status"] == "ok" and r["forbidden_modules"] == []
    assert r["model_flops_per_step"] == mfu.model_flops(get_config("tiny"), 32, 16, 2)["step"]
    assert r["achieved_tflops"] == pytest.approx(r["model_flops_per_step"] / r["step_s"] / 1e12)
    assert r["mfu"] == pytest.approx(r["achieved_tflops"] / 0.5)
    assert r["tokens_per_s"] == pytest.approx(2 * 48 / r["step_s"])
    assert r["step_s"] == pytest.approx(statistics.median(r["window_step_s"]))
    # dots_saveable keeps matmul outputs: nothing but non-matmul work is recomputed
    assert r["executed_dot_flops_per_step"] == r["model_flops_per_step"]
    assert np.isfinite(r["loss"]) and "flanx train step MFU" in proc.stdout
    parts = profile_step.attribute_trace(str(tmp_path / "trace"))
    assert sum(p["share"] for p in parts) == pytest.approx(1.0)
    shares = {p["part"]: p["share"] for p in parts}
    assert shares["dense matmuls (incl. logits) (backward)"] > 0 and shares["attention einsums (forward)"] > 0


@pytest.mark.slow
def test_dropping_positions_keeps_packed_logits():
    """Why `mfu.py --no_positions` measures the same computation: relative positions are
    shift-invariant within a packed segment, and attention across segments is masked."""
    params = init_params(ODD, jax.random.PRNGKey(0))
    batch = _batch(ODD, batch_size=3, li=40, lt=12)
    model_apply = step_lib.model_apply_fn(ODD)
    apply = jax.jit(lambda p, b: model_apply(p, b, None, False))
    with_positions = np.asarray(apply(params, batch))
    without = np.asarray(apply(params, {k: v for k, v in batch.items() if not k.endswith("_positions")}))
    real = np.asarray(batch["decoder_target_tokens"]) > 0
    assert np.array_equal(with_positions[real], without[real])
    flat = dict(batch, decoder_positions=batch["decoder_positions"] * 0)  # positions do matter when they differ
    assert not np.allclose(np.asarray(apply(params, flat))[real], with_positions[real])


def test_worker_failure_is_reported_with_the_error(tmp_path):
    res = common.interleaved({"flanx": ("benchmarks.hf_train_bench", [
        "--side", "flanx", "--model_dir", str(tmp_path / "missing"), "--batch_path", str(tmp_path / "b.npz")])},
        ["step"], warmup=0, repeats=1, setup_timeout=120)
    assert res["flanx"]["status"] == "failed"
    assert "no config.json" in res["flanx"]["reason"]


def test_targets_are_checked_against_the_thresholds(tmp_path):
    train = {"rows": [{"side": "flanx", "model": "tiny", "batch": 8, "lengths": "512/128", "vs_torch": 1.4,
                       "median_s": 0.5},
                      {"side": "torch", "model": "tiny", "batch": 8, "lengths": "512/128", "median_s": 0.7},
                      {"side": "flanx_1c", "model": "tiny", "batch": 8, "lengths": "512/128", "vs_torch": 1.1,
                       "median_s": 0.9}]}
    decode = {"summary": [{"model": "tiny", "method": "greedy", "batch": 1, "ratio": 2.5, "ratio_1c": 1.9},
                          {"model": "tiny", "method": "beam4", "batch": 1, "ratio": 0.1},
                          {"model": "tiny", "method": "greedy", "batch": 8, "ratio": None},
                          {"model": "small", "method": "greedy", "batch": 8, "ratio": 9.0, "ratio_1c": 1.2,
                           "torch_tokens_per_s": 7.0, "torch_1c_tokens_per_s": 40.0}]}
    data = {"rows": [{"name": "mix", "vs_train_tiny": 6.0}]}
    rows = run_all.check_targets(train, decode, data)
    # training: 1.5x with all cores, 1.0x on one core; decoding: 2x on both; an all-cores ratio where
    # transformers ran slower on all cores than on one is void
    assert [(r["target"], r["threshold"], r["met"]) for r in rows] == [
        ("train", 1.5, False), ("train", 1.0, True), ("decode", 2.0, True), ("decode", 2.0, False),
        ("decode", 2.0, None), ("decode", 2.0, None), ("decode", 2.0, False), ("data", 5.0, True)]
    assert [r["subject"] for r in rows if r["note"]] == ["small greedy batch 8, all cores"]
    assert run_all.train_steps_per_s(train) == {"tiny": 2.0}
    (tmp_path / "train_vs_hf.json").write_text(json.dumps(train))
    (tmp_path / "decode_vs_hf.json").write_text(json.dumps(decode))
    table = run_all.targets_from_results(tmp_path)  # no data_vs_train.json: no data rows
    marks = [line.strip(" |").split("|")[4].strip() for line in table.splitlines()
             if line.startswith(("| train", "| decode", "| data"))]
    assert marks == ["missed", "met", "met", "missed", "n/a", "n/a", "missed"]


@pytest.mark.slow
@pytest.mark.needs_torch
def test_run_all_toy_runs_every_benchmark(tmp_path, monkeypatch):
    monkeypatch.setattr(common, "RESULTS_DIR", tmp_path)
    for target in ("train", "decode"):
        monkeypatch.setitem(run_all.TARGETS, target, (1e6, "out of reach: the profiles must run"))
    out = run_all.run(dict(run_all.TOY))
    names = {p.name for p in tmp_path.iterdir()}
    assert {"train_vs_hf.json", "decode_vs_hf.json", "eval_vs_hf.json", "data_vs_train.json", "scaling.json",
            "profile_train_step.json", "profile_decode.json", "summary.json", "summary.md"} <= names
    train = json.loads((tmp_path / "train_vs_hf.json").read_text())
    assert [(r["side"], r["status"]) for r in train["rows"]] == [("flanx", "ok"), ("torch", "ok")]
    flanx_row = train["rows"][0]
    assert flanx_row["tokens_per_s"] == pytest.approx(2 * 80 / flanx_row["median_s"])
    # same weights and the same unpadded inputs: greedy and beam outputs agree token for token
    decode = json.loads((tmp_path / "decode_vs_hf.json").read_text())
    assert [(r["method"], r["batch"], r["agreement"]) for r in decode["summary"]] == [("greedy", 2, 1.0),
                                                                                      ("beam4", 2, 1.0)]
    data = json.loads((tmp_path / "data_vs_train.json").read_text())
    assert [r["name"] for r in data["rows"]] == ["synth_chat_summary_mix", "synth_multitask"]
    for r in data["rows"]:
        assert r["status"] == "ok" and r["examples_per_s"] > 0
        assert r["vs_train_tiny"] == pytest.approx(r["batches_per_s"] * flanx_row["median_s"])
    assert {t["target"] for t in out["targets"]} == {"train", "decode", "data"}
    summary = (tmp_path / "summary.md").read_text()
    assert "Targets" in summary and "missed" in summary and "load average" in summary
    _check_toy_eval(json.loads((tmp_path / "eval_vs_hf.json").read_text()))
    _check_toy_scaling(json.loads((tmp_path / "scaling.json").read_text()))
    # the missed training target brought the one-core profile of the train step
    profile = json.loads((tmp_path / "profile_train_step.json").read_text())
    assert profile["status"] == "ok" and profile["settings"]["cores"] == 1
    assert [p["piece"] for p in profile["pieces"]] == ["step"]
    assert sum(p["share"] for p in profile["parts"]) == pytest.approx(1.0)
    step_cpu = profile["pieces"][0]["cpu_median_s"]
    assert sum(p["seconds"] for p in profile["parts"]) == pytest.approx(step_cpu)  # scaled to the CPU time
    dense = next(m for m in profile["matmuls"] if m["matmuls"].startswith("dense"))
    flops = mfu.model_flops(get_config("tiny"), 64, 16, 2)["forward_breakdown"]
    assert dense["gflop"] == pytest.approx(3 * 2 * sum(v for k, v in flops.items() if "attention" not in k) / 1e9)
    assert dense["gflop_per_s"] == pytest.approx(dense["gflop"] / dense["seconds"])
    assert dense["vs_bare_xla"] == pytest.approx(dense["gflop_per_s"] / profile["bare_matmul"]["cpu_gflop_per_s"])
    assert "Why the training target is missed" in out["report"]
    # and the missed decoding target the one-core profile of a greedy call (tiny, batch 2, 64 in, 8 out)
    decoding = json.loads((tmp_path / "profile_decode.json").read_text())
    assert decoding["status"] == "ok" and decoding["settings"]["cores"] == 1
    assert sum(p["seconds"] for p in decoding["parts"]) == pytest.approx(decoding["call"]["cpu_median_s"])
    flops = mfu.model_flops(get_config("tiny"), 64, 8, 2)["forward_breakdown"]
    dense = next(m for m in decoding["matmuls"] if m["matmuls"].startswith("dense"))
    assert dense["gflop"] == pytest.approx(2 * sum(v for k, v in flops.items() if "attention" not in k) / 1e9)
    assert dense["vs_bare_streaming"] == pytest.approx(
        dense["gflop_per_s"] / decoding["streaming_matmul"]["cpu_gflop_per_s"])
    assert "Why the decoding target is missed" in out["report"]


def _check_toy_eval(ev: dict) -> None:
    rows = {r["work"]: r for r in ev["rows"]}
    assert rows["summaries"]["rows"] == 4 and rows["rank_classification"]["rows"] == 6  # 2 options each
    for r in rows.values():
        assert r["ratio"] == pytest.approx(r["flanx_rows_per_s"] / r["torch_rows_per_s"])
        assert r["flanx_rows_per_s"] == pytest.approx(r["rows"] / r["flanx_s"])
    # same weights and tokens: identical greedy outputs and log-likelihoods on both sides
    assert rows["summaries"]["agreement"] == 1.0 and rows["rank_classification"]["agreement"] == 1.0


def _check_toy_scaling(sc: dict) -> None:
    cells = {(r["batch_size"], r["inputs_length"]): r for r in sc["rows"]}
    assert set(cells) == {(1, 64), (1, 128), (2, 64)} and all(r["status"] == "ok" for r in sc["rows"])
    assert cells[(1, 64)]["time_per_token_vs_ref"] == 1.0
    for (batch, length), r in cells.items():
        assert r["tokens_per_s"] == pytest.approx(batch * (length + length // 4) / r["step_s"])
        assert r["xla_step_gib"] > 0 and r["peak_rss_mib"] > 100
        assert r["time_per_token_vs_ref"] == pytest.approx(r["flop_per_token_vs_ref"] * cells[(1, 64)][
            "model_gflop_per_s"] / r["model_gflop_per_s"])
    assert cells[(1, 128)]["attention_share"] > cells[(1, 64)]["attention_share"]
    assert cells[(1, 128)]["flop_per_token_vs_ref"] > 1 and cells[(2, 64)]["flop_per_token_vs_ref"] == pytest.approx(1)
    assert "input length (time per token vs 64)" in sc["table"]


def test_scaling_grid_varies_one_axis_at_a_time():
    from benchmarks import scaling_bench

    ref = {"model": "m", "batch_size": 1, "inputs_length": 512}
    cells = scaling_bench.grid((256, 512, 2048), (1, 4), ("tiny", "m"), ref)
    keys = [(c["model"], c["batch_size"], c["inputs_length"], c["targets_length"]) for c in cells]
    assert keys == [("m", 1, 256, 64), ("m", 1, 512, 128), ("m", 1, 2048, 512), ("m", 4, 512, 128),
                    ("tiny", 1, 512, 128)]  # the reference cell once, targets a quarter of the inputs


def test_eval_agreement_counts_rows():
    from benchmarks import eval_bench

    assert eval_bench.agreement("summaries", [[5, 6], [7]], [[5, 6], [8]]) == 0.5
    assert eval_bench.agreement("rank_classification", [-1.0, -2.0], [-1.0000001, -2.5]) == 0.5
    assert eval_bench.agreement("summaries", [[1]], None) is None


def test_jax_attention_route_equals_flanx_attention(monkeypatch):
    """`mfu.py --attention jax` (the GPU script's attention experiment) computes flanx's attention."""
    from flanx.models import layers

    keys = jax.random.split(jax.random.PRNGKey(0), 4)
    q, k, v = (jax.random.normal(key, (2, 5, 3, 4)) for key in keys[:3])
    mask = jnp.arange(5)[None, :] <= jnp.arange(5)[:, None]  # causal
    bias = layers.attention_bias(mask[None, None], jax.random.normal(keys[3], (1, 3, 5, 5)))
    expected = layers.dot_product_attention(q, k, v, bias)
    monkeypatch.setattr(layers, "dot_product_attention", layers.dot_product_attention)  # restored afterwards
    mfu.use_jax_attention(None)
    assert layers.dot_product_attention is not expected
    np.testing.assert_allclose(np.asarray(layers.dot_product_attention(q, k, v, bias)), np.asarray(expected),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_gpu_check_script_dry_run_on_cpu(tmp_path):
    """`TOY=1 benchmarks/gpu_check.sh`: every run of the script's toy grid completes on CPU and lands in
    mfu.jsonl and table.md, the trace included."""
    import os

    env = {**os.environ, "TOY": "1", "OUT": str(tmp_path), "PYTHON": sys.executable, "BUDGET_S": "600"}
    proc = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh")], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    results = [json.loads(line) for line in (tmp_path / "mfu.jsonl").read_text().splitlines()]
    assert [(r["status"], r["attention"], r["scan_layers"]) for r in results] == [
        ("ok", "xla", True), ("ok", "xla", False), ("ok", "jax", True)]
    for r in results:
        assert r["mfu"] == pytest.approx(r["model_flops_per_step"] / r["step_s"] / 1e12)  # peak 1 TFLOP/s
        assert np.isfinite(r["loss"]) and r["forbidden_modules"] == []
    assert results[0]["positions"] and not results[2]["positions"]
    assert "cpu" in (tmp_path / "devices.txt").read_text()
    assert "flanx train step MFU" in (tmp_path / "table.md").read_text()
    assert any((tmp_path / "trace_toy").rglob("*.xplane.pb"))


def test_linearity_notes_name_where_and_why_scaling_bends():
    from benchmarks import scaling_bench

    ref = {"model": "m", "batch_size": 1, "inputs_length": 512}

    def cell(time_vs_ref, flop_vs_ref, gflop_per_s, share, **changes):
        return {**ref, **changes, "time_per_token_vs_ref": time_vs_ref, "flop_per_token_vs_ref": flop_vs_ref,
                "model_gflop_per_s": gflop_per_s, "attention_share": share}

    rows = [cell(1.0, 1.0, 100, 0.1), cell(1.05, 1.05, 100, 0.2, inputs_length=1024),
            cell(1.5, 1.25, 1.25 / 1.5 * 100, 0.3, inputs_length=2048), cell(0.9, 1.0, 111, 0.1, batch_size=4),
            cell(3.0, 4.0, 133, 0.08, model="big"), cell(2.0, 1.0, 50, 0.1, model="big", batch_size=4)]
    # (the last cell is off two axes: in no axis's line)
    notes = scaling_bench.linearity_notes(rows, ref)
    assert notes == [
        "- input length (time per token vs 512): 512: 1.00x, 1024: 1.05x, 2048: 1.50x. Not linear at 2048: "
        "matmul FLOPs per token x1.25 (attention 30% of them) and the FLOP rate x0.83 (83 GFLOP/s).",
        "- batch size (time per token vs 1): 1: 1.00x, 4: 0.90x. Linear within 15%.",
        "- model size (time per token vs m): m: 1.00x, big: 3.00x. Not linear in FLOPs per token at big: "
        "matmul FLOPs per token x4 and the FLOP rate x1.33 (133 GFLOP/s)."]
