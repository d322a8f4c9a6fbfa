"""`python -m flanx.convert` / `flanx convert`: conversions by value, layout flags, safe output handling."""
from __future__ import annotations

import numpy as np
import pytest
from helpers import assert_same_tree, random_params, run_python

from flanx import checkpoints as C
from flanx import convert
from flanx.models import get_config

CFG = get_config("tiny")


@pytest.fixture(scope="module")
def params():
    return random_params(CFG)


@pytest.fixture
def t5x_dir(tmp_path, params):
    C.export_t5x(params, tmp_path / "t5x", step=321)
    return tmp_path / "t5x"


def _run_cli(*args):
    return run_python("-m", "flanx.convert", *args, timeout=180)


def test_cli_t5x_to_flanx_scanned_and_back_to_t5x(tmp_path, t5x_dir, params):
    out = tmp_path / "native"
    result = _run_cli("--to", "flanx", "--model", "tiny", "--scan_layers", "true", t5x_dir, out)
    assert result.returncode == 0, result.stderr
    assert "wrote flanx checkpoint" in result.stdout
    ck = C.load_native(out)
    assert ck.step == 321 and ck.config == CFG.replace(scan_layers=True)
    assert ck.metadata["source_format"] == "t5x"
    assert_same_tree(ck.params, C.stack_layers(params))
    # flanx (scanned) -> T5X (unscanned), in-process through the umbrella `flanx convert` command.
    from flanx import cli

    assert cli.main(["convert", "--to", "t5x", "--scan_layers", "false", str(out), str(tmp_path / "back")]) == 0
    back, step = C.import_t5x(tmp_path / "back")
    assert step == 321 and sorted(p.name for p in (tmp_path / "back").iterdir()) == ["checkpoint_321"]
    assert_same_tree(back, params)


def test_default_keeps_the_input_layout(tmp_path, params):
    C.export_t5x(C.stack_layers(params), tmp_path / "scanned", step=1)
    assert convert.main(["--to", "flanx", "--model", "tiny", str(tmp_path / "scanned"), str(tmp_path / "a")]) == 0
    ck = C.load_native(tmp_path / "a")
    assert ck.config.scan_layers and C.is_scanned(ck.params)
    assert convert.main(["--from", "flanx", "--to", "flanx", "--scan_layers", "no", "--step", "9",
                         str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    ck = C.load_native(tmp_path / "b")
    assert not ck.config.scan_layers and ck.step == 9
    assert_same_tree(ck.params, params)


def test_refuses_to_overwrite_without_flag_and_replaces_with_it(tmp_path, t5x_dir, params, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    with pytest.raises(SystemExit, match="exists and is not empty; pass --overwrite"):
        convert.main(["--to", "flanx", "--model", "tiny", str(t5x_dir), str(out)])
    assert (out / "keep.txt").read_text() == "precious"
    assert convert.main(["--to", "flanx", "--model", "tiny", "--overwrite", str(t5x_dir), str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["flanx.json", "params"]
    assert not [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name or ".old-" in p.name]
    (tmp_path / "empty").mkdir()  # an existing empty directory is fine
    assert convert.main(["--to", "t5x", str(out), str(tmp_path / "empty")]) == 0


def test_a_failed_conversion_leaves_no_output(tmp_path, t5x_dir, monkeypatch):
    def crash(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(C, "save_params", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        convert.main(["--to", "flanx", "--model", "tiny", str(t5x_dir), str(tmp_path / "out")])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t5x"]


def test_bad_inputs_fail_with_a_message(tmp_path, t5x_dir, capsys):
    assert convert.main(["--to", "flanx", str(t5x_dir), str(tmp_path / "o")]) == 1
    assert "carries no model config; pass --model NAME (e.g. --model flan_t5_base) or --config FILE" in capsys.readouterr().err
    assert convert.main(["--to", "flanx", "--model", "flan_t5_small", str(t5x_dir), str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert "token_embedder/embedding" in err and "vocab_size=32128" in err
    assert convert.main(["--to", "flanx", "--model", "tiny", str(tmp_path / "missing"), str(tmp_path / "o")]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    with pytest.raises(SystemExit):
        convert.main(["--to", "flanx", "--scan_layers", "maybe", str(t5x_dir), str(tmp_path / "o")])
    assert "expected true or false" in capsys.readouterr().err


def test_merge_lora_folds_adapters_into_kernels(tmp_path, params):
    from flanx.models import LoraConfig

    cfg = CFG.replace(lora=LoraConfig(rank=2, alpha=4.0, targets=("query",)))
    with_lora = random_params(cfg, seed=5)
    C.save_params(tmp_path / "lora", with_lora, cfg)
    assert convert.main(["--to", "flanx", str(tmp_path / "lora"), str(tmp_path / "kept")]) == 0
    assert C.load_native(tmp_path / "kept").config.lora == cfg.lora
    assert convert.main(["--to", "t5x", "--merge_lora", str(tmp_path / "lora"), str(tmp_path / "t5x")]) == 0
    merged, _, _ = C.load_params(tmp_path / "t5x", CFG)  # plain T5 names: no lora_a / lora_b left
    node = with_lora["decoder"]["layers_1"]["encoder_decoder_attention"]["query"]
    want = node["kernel"] + 2.0 * node["lora_a"] @ node["lora_b"]
    got = merged["decoder"]["layers_1"]["encoder_decoder_attention"]["query"]["kernel"]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(merged["encoder"]["layers_0"]["attention"]["key"]["kernel"],
                                  with_lora["encoder"]["layers_0"]["attention"]["key"]["kernel"])


def _safetensors(directory):
    from safetensors.numpy import load_file

    return load_file(directory / "model.safetensors")


def test_hf_to_flanx_to_hf_round_trip_is_exact(tmp_path, params):
    from flanx.checkpoints import hf

    hf.export_hf(params, CFG, tmp_path / "hf_in")
    assert C.detect_format(tmp_path / "hf_in") == "hf"
    assert convert.main(["--to", "flanx", "--scan_layers", "true", str(tmp_path / "hf_in"), str(tmp_path / "native")]) == 0
    ck = C.load_native(tmp_path / "native")
    assert ck.config == CFG.replace(scan_layers=True) and ck.metadata["source_format"] == "hf"
    assert_same_tree(ck.params, C.stack_layers(params))
    assert convert.main(["--to", "hf", str(tmp_path / "native"), str(tmp_path / "hf_out")]) == 0
    before, after = _safetensors(tmp_path / "hf_in"), _safetensors(tmp_path / "hf_out")
    assert sorted(before) == sorted(after)
    for name in before:
        np.testing.assert_array_equal(after[name], before[name], err_msg=name)
    assert (tmp_path / "hf_in" / "config.json").read_text() == (tmp_path / "hf_out" / "config.json").read_text()


@pytest.mark.needs_torch
@pytest.mark.slow
def test_transformers_checkpoint_survives_flanx_and_t5x_round_trip(tmp_path):
    """A directory written by transformers itself -> flanx -> T5X -> HF loads back with identical weights."""
    import torch
    import transformers

    hf_cfg = transformers.T5Config(vocab_size=96, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_decoder_layers=3,
                                   num_heads=3, feed_forward_proj="gated-gelu", tie_word_embeddings=False,
                                   decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    torch.manual_seed(0)
    model = transformers.T5ForConditionalGeneration(hf_cfg).eval()
    model.save_pretrained(tmp_path / "hf_in")
    assert convert.main(["--to", "flanx", str(tmp_path / "hf_in"), str(tmp_path / "native")]) == 0
    config = C.load_native(tmp_path / "native").config
    assert (config.num_encoder_layers, config.num_decoder_layers, config.num_heads) == (2, 3, 3)
    assert convert.main(["--to", "t5x", "--scan_layers", "true", str(tmp_path / "native"), str(tmp_path / "t5x")]) == 0
    # The wrong preset is refused (vocab 384 vs 96), and nothing is written.
    assert convert.main(["--to", "hf", "--model", "tiny", str(tmp_path / "t5x"), str(tmp_path / "bad")]) == 1
    assert not (tmp_path / "bad").exists()
    # T5X carries no config: take it from the flanx checkpoint's flanx.json (or the HF config.json).
    assert convert.main(["--to", "hf", "--config", str(tmp_path / "native" / "flanx.json"), str(tmp_path / "t5x"),
                         str(tmp_path / "hf_out")]) == 0
    assert convert.main(["--to", "flanx", "--config", str(tmp_path / "hf_in" / "config.json"), str(tmp_path / "t5x"),
                         str(tmp_path / "native2")]) == 0
    assert C.load_native(tmp_path / "native2").config == config.replace(scan_layers=True)
    reloaded = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path / "hf_out").eval()
    want, got = model.state_dict(), reloaded.state_dict()
    assert sorted(want) == sorted(got)
    for name in want:
        assert torch.equal(want[name], got[name]), name
