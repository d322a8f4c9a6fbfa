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


def test_targets_are_checked_against_the_thresholds():
    train = {"rows": [{"side": "flanx", "model": "tiny", "batch": 8, "lengths": "512/128", "vs_torch": 1.4,
                       "median_s": 0.5},
                      {"side": "torch", "model": "tiny", "batch": 8, "lengths": "512/128", "median_s": 0.7}]}
    decode = {"summary": [{"model": "tiny", "method": "greedy", "batch": 1, "ratio": 2.5, "ratio_1c": 1.9},
                          {"model": "tiny", "method": "beam4", "batch": 1, "ratio": 0.1},
                          {"model": "tiny", "method": "greedy", "batch": 8, "ratio": None}]}
    data = {"rows": [{"name": "mix", "vs_train_tiny": 6.0}]}
    rows = run_all.check_targets(train, decode, data)
    assert [(r["target"], r["met"]) for r in rows] == [("train", False), ("decode", True), ("decode", False),
                                                       ("decode", None), ("data", True)]
    assert run_all.train_steps_per_s(train) == {"tiny": 2.0}


@pytest.mark.slow
@pytest.mark.needs_torch
def test_run_all_toy_runs_every_benchmark(tmp_path, monkeypatch):
    monkeypatch.setattr(common, "RESULTS_DIR", tmp_path)
    out = run_all.run(dict(run_all.TOY))
    names = {p.name for p in tmp_path.iterdir()}
    assert {"train_vs_hf.json", "decode_vs_hf.json", "data_vs_train.json", "summary.json", "summary.md"} <= names
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
    assert "Targets" in (tmp_path / "summary.md").read_text()


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


@pytest.mark.slow
@pytest.mark.needs_torch
def test_eval_and_scaling_benchmarks_run_on_the_toy_settings(tmp_path, monkeypatch):
    from benchmarks import eval_bench, scaling_bench

    monkeypatch.setattr(common, "RESULTS_DIR", tmp_path)
    ev = eval_bench.run("tiny", summaries=4, questions=3, batch_size=4, inputs_length=64, targets_length=16,
                        repeats=1, synthetic=True)
    rows = {r["work"]: r for r in ev["rows"]}
    assert rows["summaries"]["rows"] == 4 and rows["rank_classification"]["rows"] == 6  # 2 options each
    for r in rows.values():
        assert r["ratio"] == pytest.approx(r["flanx_rows_per_s"] / r["torch_rows_per_s"])
    # same weights and tokens: identical greedy outputs and log-likelihoods on both sides
    assert rows["summaries"]["agreement"] == 1.0 and rows["rank_classification"]["agreement"] == 1.0
    sc = scaling_bench.run((32, 64), (2,), ("tiny",), warmup=0, steps=1, windows=1,
                           reference={"model": "tiny", "batch_size": 1, "inputs_length": 32})
    cells = {(r["batch_size"], r["inputs_length"]): r for r in sc["rows"]}
    assert set(cells) == {(1, 32), (1, 64), (2, 32)} and all(r["status"] == "ok" for r in sc["rows"])
    assert cells[(1, 32)]["time_per_token_vs_ref"] == 1.0
    for (batch, length), r in cells.items():
        assert r["tokens_per_s"] == pytest.approx(batch * (length + length // 4) / r["step_s"])
        assert r["xla_step_gib"] > 0 and r["peak_rss_mib"] > 100
    assert cells[(1, 64)]["attention_share"] > cells[(1, 32)]["attention_share"]
