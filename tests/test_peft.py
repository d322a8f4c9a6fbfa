"""PEFT LoRA adapters <-> flanx LoRA (`flanx convert --to peft` / `--from peft`), checked against
`peft` on `transformers` T5 (logits unmerged and merged), plus exact round trips and refused options."""
from __future__ import annotations

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flanx import checkpoints as C
from flanx import convert
from flanx.checkpoints import CheckpointError
from flanx.checkpoints import peft as peft_lib
from flanx.models import LoraConfig, T5Config, Transformer, init_params

# Tiny T5s both ways: v1.1 (gated GELU, untied logits, decoder deeper) and original T5 (ReLU `wi`, tied).
V11 = T5Config(vocab_size=101, d_model=48, num_heads=3, head_dim=8, d_ff=40, num_encoder_layers=1,
               num_decoder_layers=2, relative_attention_num_buckets=8, relative_attention_max_distance=20,
               dropout_rate=0.0, mlp_activations=("gelu", "linear"))
ORIGINAL = V11.replace(mlp_activations=("relu",), logits_via_embedding=True, num_encoder_layers=2,
                       num_decoder_layers=1)
# Between them every PEFT T5 name: q, k, v, o, wi, wi_0, wi_1, wo.
LORAS = {
    "v1_1": (V11, LoraConfig(rank=4, alpha=8.0, targets=("query", "key", "value", "out", "wi_0", "wi_1", "wo"))),
    "original": (ORIGINAL, LoraConfig(rank=3, alpha=5.0, targets=("query", "value", "wi"))),
}


def lora_params(config, seed=0):
    """Random base weights and random, non-zero adapters (a fresh lora_b is zero)."""
    params = jax.device_get(init_params(config, jax.random.PRNGKey(seed)))
    rng = np.random.default_rng(seed)
    flat = {}
    for path, value in C.flatten(params).items():
        value = np.asarray(value)
        if path.endswith(("lora_a", "lora_b")):
            value = rng.normal(0, 0.3, value.shape).astype(np.float32)
        flat[path] = value
    return C.unflatten(flat)


def inputs(vocab=101, seed=0):
    rng = np.random.default_rng(seed)
    enc = rng.integers(2, vocab, (3, 13)).astype(np.int32)
    enc[1, 9:] = 0
    dec = rng.integers(2, vocab, (3, 7)).astype(np.int32)
    dec[:, 0] = 0
    return enc, dec


def flanx_logits(params, config, enc, dec):
    return np.asarray(Transformer(config).apply({"params": params}, jnp.asarray(enc), jnp.asarray(dec)))


@pytest.mark.slow
def test_flanx_peft_flanx_round_trip_is_exact(tmp_path):
    config, lora = LORAS["v1_1"]
    config = config.replace(lora=lora)
    params = lora_params(config)
    C.save_params(tmp_path / "run", params, config, step=7)
    assert convert.main(["--to", "peft", "--with_base", str(tmp_path / "run"), str(tmp_path / "adapter")]) == 0
    cfg = json.loads((tmp_path / "adapter" / peft_lib.CONFIG_FILE).read_text())
    assert cfg["target_modules"] == ["k", "o", "q", "v", "wi_0", "wi_1", "wo"]
    assert (cfg["r"], cfg["lora_alpha"], cfg["peft_type"]) == (4, 8.0, "LORA")
    assert cfg["base_model_name_or_path"] == str((tmp_path / "adapter" / "base").absolute())
    # detected as PEFT; its base found in adapter/base
    assert convert.main(["--to", "flanx", str(tmp_path / "adapter"), str(tmp_path / "back")]) == 0
    back = C.load_native(tmp_path / "back")
    assert back.config == config
    a, b = C.flatten(params), C.flatten(back.params)
    assert sorted(a) == sorted(b)
    for k in a:
        np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]), err_msg=k)


@pytest.mark.slow
def test_export_refuses_a_model_without_adapters_and_merge(tmp_path):
    C.save_params(tmp_path / "plain", lora_params(V11), V11)
    with pytest.raises(CheckpointError, match="no LoRA adapters"):
        convert.convert(tmp_path / "plain", tmp_path / "out", "peft")
    config = V11.replace(lora=LORAS["v1_1"][1])
    C.save_params(tmp_path / "run", lora_params(config), config)
    with pytest.raises(ValueError, match="merge_lora"):
        convert.convert(tmp_path / "run", tmp_path / "out", "peft", merge_lora=True)
    assert not (tmp_path / "out").exists()


def _write_adapter(path, cfg_overrides=None, tensors=None):
    """A flanx-exported adapter with `cfg_overrides` in its config and `tensors(weights)` as its weights."""
    from safetensors.numpy import load_file, save_file

    config, lora = LORAS["v1_1"]
    config = config.replace(lora=lora)
    peft_lib.export_peft(lora_params(config), config, path)
    cfg = json.loads((path / peft_lib.CONFIG_FILE).read_text())
    cfg.update(cfg_overrides or {})
    (path / peft_lib.CONFIG_FILE).write_text(json.dumps(cfg))
    if tensors is not None:
        save_file(tensors(load_file(path / peft_lib.WEIGHTS_FILE)), path / peft_lib.WEIGHTS_FILE)
    return path


@pytest.mark.parametrize("overrides, match", [
    ({"use_dora": True}, "use_dora"),
    ({"rank_pattern": {"q": 8}}, "rank_pattern"),
    ({"layers_to_transform": [0]}, "layers_to_transform"),
    ({"init_lora_weights": "pissa_niter_4"}, "rewrites the base weights"),
    ({"bias": "lora_only"}, "bias"),
    ({"peft_type": "IA3"}, "peft_type"),
])
def test_import_refuses_options_flanx_cannot_express(tmp_path, overrides, match):
    adapter = _write_adapter(tmp_path / "adapter", overrides)
    base = C.save_params(tmp_path / "base", lora_params(V11), V11)
    with pytest.raises(CheckpointError, match=match):
        convert.convert(adapter, tmp_path / "out", "flanx", base=str(base))


def test_import_refuses_partial_coverage_bad_shapes_and_missing_base(tmp_path):
    base = C.save_params(tmp_path / "base", lora_params(V11), V11)
    skip = "base_model.model.decoder.block.1.layer.0.SelfAttention.q"
    partial = _write_adapter(tmp_path / "partial", tensors=lambda t: {k: v for k, v in t.items() if skip not in k})
    with pytest.raises(CheckpointError, match="skips 1 layer"):
        convert.convert(partial, tmp_path / "out", "flanx", base=str(base))
    wrong_r = _write_adapter(tmp_path / "wrong_r", {"r": 5})
    with pytest.raises(CheckpointError, match="r=5"):
        convert.convert(wrong_r, tmp_path / "out", "flanx", base=str(base))
    with pytest.raises(CheckpointError, match="--base PATH"):
        convert.convert(wrong_r, tmp_path / "out", "flanx")
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- against peft + transformers

@pytest.mark.needs_torch
@pytest.mark.slow
@pytest.mark.parametrize("variant", sorted(LORAS))
def test_export_loads_in_peft_with_the_same_logits_unmerged_and_merged(tmp_path, variant):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    config, lora = LORAS[variant]
    config = config.replace(lora=lora)
    params = lora_params(config, seed=1)
    C.save_params(tmp_path / "run", params, config)
    assert convert.main(["--to", "peft", "--with_base", str(tmp_path / "run"), str(tmp_path / "adapter")]) == 0
    base = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path / "adapter" / "base")
    model = peft.PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
    enc, dec = inputs()
    ours = flanx_logits(params, config, enc, dec)
    no_lora = flanx_logits(peft_lib.without_lora(params), config.replace(lora=None), enc, dec)
    assert np.abs(ours - no_lora).max() > 1e-2  # the adapters matter

    def torch_logits(m):
        with torch.no_grad():
            return m(input_ids=torch.tensor(enc, dtype=torch.long), attention_mask=torch.tensor(enc > 0),
                     decoder_input_ids=torch.tensor(dec, dtype=torch.long), use_cache=False).logits.numpy()
    np.testing.assert_allclose(torch_logits(model), ours, atol=1e-4, rtol=0)
    np.testing.assert_allclose(torch_logits(model.merge_and_unload()), ours, atol=1e-4, rtol=0)


@pytest.mark.needs_torch
@pytest.mark.slow
@pytest.mark.parametrize("use_rslora", [False, True])
def test_peft_adapter_imports_with_the_same_logits(tmp_path, use_rslora):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    torch.manual_seed(0)
    hf_cfg = transformers.T5Config(vocab_size=101, d_model=48, d_kv=8, num_heads=3, d_ff=40, num_layers=1,
                                   num_decoder_layers=2, relative_attention_num_buckets=8,
                                   relative_attention_max_distance=20, dropout_rate=0.0,
                                   feed_forward_proj="gated-gelu", tie_word_embeddings=False,
                                   decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    base = transformers.T5ForConditionalGeneration(hf_cfg).eval()
    base.lm_head.weight = torch.nn.Parameter(torch.randn(101, 48) * 0.2)
    base.save_pretrained(tmp_path / "base")
    lora_cfg = peft.LoraConfig(r=4, lora_alpha=6, target_modules=["q", "v", "o", "wi_1"], lora_dropout=0.0,
                               use_rslora=use_rslora, task_type="SEQ_2_SEQ_LM")
    model = peft.get_peft_model(base, lora_cfg).eval()
    with torch.no_grad():  # non-zero B (peft initialises it to zero)
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn_like(p) * 0.3)
    model.save_pretrained(tmp_path / "adapter")
    enc, dec = inputs(seed=2)
    with torch.no_grad():
        theirs = model(input_ids=torch.tensor(enc, dtype=torch.long), attention_mask=torch.tensor(enc > 0),
                       decoder_input_ids=torch.tensor(dec, dtype=torch.long), use_cache=False).logits.numpy()
    assert convert.main(["--to", "flanx", "--from", "peft", "--base", str(tmp_path / "base"),
                         str(tmp_path / "adapter"), str(tmp_path / "flanx")]) == 0
    params, config, _ = C.load_params(tmp_path / "flanx")
    assert config.lora.rank == 4 and config.lora.targets == ("query", "value", "out", "wi_1")
    assert math.isclose(config.lora.scale, 6 / (math.sqrt(4) if use_rslora else 4))
    np.testing.assert_allclose(flanx_logits(params, config, enc, dec), theirs, atol=1e-4, rtol=0)
    # and merged into a plain Hugging Face export, which transformers loads with the same logits
    assert convert.main(["--to", "hf", "--base", str(tmp_path / "base"), str(tmp_path / "adapter"),
                         str(tmp_path / "merged")]) == 0
    merged = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path / "merged").eval()
    with torch.no_grad():
        again = merged(input_ids=torch.tensor(enc, dtype=torch.long), attention_mask=torch.tensor(enc > 0),
                       decoder_input_ids=torch.tensor(dec, dtype=torch.long), use_cache=False).logits.numpy()
    np.testing.assert_allclose(again, theirs, atol=1e-4, rtol=0)
