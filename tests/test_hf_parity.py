"""flanx vs transformers (torch CPU, float32) on tiny random T5 v1.1 and original T5,
plus Hugging Face import/export: round trip, sharded / .bin files, bad checkpoints."""
import json
import shutil

import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from safetensors.numpy import load_file, save_file  # noqa: E402

from flanx.checkpoints.hf import CheckpointError, export_hf, import_hf  # noqa: E402
from flanx.models import Transformer  # noqa: E402
from flanx.models import decoding  # noqa: E402

pytestmark = [pytest.mark.needs_torch, pytest.mark.slow]

# v1.1: decoder deeper than encoder (transformers' cached generate cannot run it);
# original T5: encoder deeper. Both with an odd number of heads.
VARIANTS = {
    "t5_v1_1": dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False, num_layers=1,
                    num_decoder_layers=2),
    "t5_original": dict(feed_forward_proj="relu", tie_word_embeddings=True, num_layers=2,
                        num_decoder_layers=1),
}


def _hf_model(variant, seed=0):
    torch.manual_seed(seed)
    cfg = transformers.T5Config(vocab_size=101, d_model=48, d_kv=8, num_heads=3, d_ff=40,
                                relative_attention_num_buckets=8, relative_attention_max_distance=20,
                                dropout_rate=0.0, decoder_start_token_id=0, pad_token_id=0,
                                eos_token_id=1, **VARIANTS[variant])
    model = transformers.T5ForConditionalGeneration(cfg).eval()
    if not VARIANTS[variant]["tie_word_embeddings"]:
        # an untied lm_head with its own values (transformers 5 initialises it tied)
        model.lm_head.weight = torch.nn.Parameter(torch.randn(cfg.vocab_size, cfg.d_model) * 0.2)
    return model


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def pair(request, tmp_path_factory):
    model = _hf_model(request.param)
    path = tmp_path_factory.mktemp(request.param)
    model.save_pretrained(path)
    params, config = import_hf(path)
    return request.param, model, path, params, config


def _inputs(seed=0, batch=3, enc_len=23, dec_len=9, vocab=101):
    rng = np.random.default_rng(seed)
    enc = rng.integers(2, vocab, (batch, enc_len)).astype(np.int32)
    for i, n in enumerate((enc_len, 15, 4)[:batch]):
        enc[i, n:] = 0
    dec = rng.integers(2, vocab, (batch, dec_len)).astype(np.int32)
    dec[:, 0] = 0
    dec[2, 6:] = 0  # a padded target
    return enc, dec


def _hf_logits(model, enc, dec):
    with torch.no_grad():
        out = model(input_ids=torch.tensor(enc, dtype=torch.long),
                    attention_mask=torch.tensor(enc > 0, dtype=torch.long),
                    decoder_input_ids=torch.tensor(dec, dtype=torch.long), use_cache=False)
    return out.logits.numpy()


def test_config_mapping(pair):
    variant, model, _, _, config = pair
    assert config.num_heads == 3 and config.head_dim == 8 and config.vocab_size == 101
    assert (config.num_encoder_layers, config.num_decoder_layers) == (
        VARIANTS[variant]["num_layers"], VARIANTS[variant]["num_decoder_layers"])
    assert config.logits_via_embedding == (variant == "t5_original")
    assert config.mlp_activations == (("relu",) if variant == "t5_original" else ("gelu", "linear"))
    assert (config.relative_attention_num_buckets, config.relative_attention_max_distance) == (8, 20)


def test_logits_and_scores_match(pair):
    _, model, _, params, config = pair
    enc, dec = _inputs()
    ours = np.asarray(Transformer(config).apply({"params": params}, jnp.asarray(enc), jnp.asarray(dec)))
    theirs = _hf_logits(model, enc, dec)
    assert np.abs(theirs).max() > 1.0
    np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)

    targets = np.concatenate([dec[:, 1:], np.ones((3, 1), np.int32)], axis=1)
    targets[2, 5:] = 0
    weights = (targets > 0).astype(np.float32)
    batch = dict(encoder_input_tokens=enc, decoder_input_tokens=dec, decoder_target_tokens=targets,
                 decoder_loss_weights=weights)
    logp = torch.log_softmax(torch.tensor(theirs, dtype=torch.float64), -1).numpy()
    want = (np.take_along_axis(logp, targets[..., None], -1)[..., 0] * weights).sum(-1)
    np.testing.assert_allclose(np.asarray(decoding.score(params, config, batch)), want, atol=1e-4, rtol=0)


def _hf_greedy(model, enc, steps, eos, cached):
    ids = torch.tensor(enc, dtype=torch.long)
    mask = torch.tensor(enc > 0, dtype=torch.long)
    with torch.no_grad():
        if cached:
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=steps, do_sample=False,
                                 num_beams=1, eos_token_id=eos, pad_token_id=0, min_new_tokens=0)
            out = out[:, 1:].numpy()
            return np.pad(out, ((0, 0), (0, steps - out.shape[1])))
        dec = torch.zeros((len(enc), 1), dtype=torch.long)
        done = torch.zeros(len(enc), dtype=torch.bool)
        for _ in range(steps):
            logits = model(input_ids=ids, attention_mask=mask, decoder_input_ids=dec, use_cache=False).logits
            nxt = torch.where(done, 0, logits[:, -1].argmax(-1))
            done |= nxt == eos
            dec = torch.cat([dec, nxt[:, None]], 1)
        return dec[:, 1:].numpy()


def test_greedy_decode_matches(pair):
    variant, model, _, params, config = pair
    enc, _ = _inputs(seed=1)
    steps = 10
    first = np.asarray(decoding.greedy_decode(params, config, enc, steps))
    # use a token the model really emits as EOS, so stopping and zero-filling are exercised
    eos = int(first[0, 3])
    ours = np.asarray(decoding.greedy_decode(params, config, enc, steps, eos_id=eos))
    cached = config.num_decoder_layers <= config.num_encoder_layers
    theirs = _hf_greedy(model, enc, steps, eos, cached=cached)
    np.testing.assert_array_equal(ours, theirs)
    assert (ours[0, 4:] == 0).all() and ours[0, 3] == eos


def _saved_tensors(path):
    return load_file(path / "model.safetensors")


def test_round_trip_exact_and_transformers_loads_export(pair, tmp_path):
    variant, model, path, params, config = pair
    out = export_hf(params, config, tmp_path / "export")
    original, exported = _saved_tensors(path), _saved_tensors(out)
    common = sorted(set(original) & set(exported))
    assert len(common) >= len(original) - 1  # transformers may store a tied tensor under one name only
    for name in common:
        np.testing.assert_array_equal(exported[name], original[name], err_msg=name)
    reloaded, info = transformers.T5ForConditionalGeneration.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    before, after = model.state_dict(), reloaded.state_dict()
    assert sorted(before) == sorted(after)
    for name, tensor in before.items():
        assert torch.equal(after[name], tensor), name
    enc, dec = _inputs(seed=2)
    np.testing.assert_array_equal(_hf_logits(reloaded.eval(), enc, dec), _hf_logits(model, enc, dec))
    again, config2 = import_hf(out)
    assert config2 == config


def test_sharded_bf16_and_pytorch_bin_import(pair, tmp_path):
    variant, model, path, params, config = pair
    if variant != "t5_v1_1":
        pytest.skip("file layouts are checked once")
    model.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    sharded, _ = import_hf(tmp_path / "sharded")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shutil.copy(path / "config.json", bin_dir / "config.json")
    torch.save(model.state_dict(), bin_dir / "pytorch_model.bin")
    from_bin, _ = import_hf(bin_dir)
    for other in (sharded, from_bin):
        assert _flat_equal(other, params)
    bf16 = tmp_path / "bf16"
    model.to(torch.bfloat16).save_pretrained(bf16)
    model.to(torch.float32)
    halved, _ = import_hf(bf16)
    assert halved["token_embedder"]["embedding"].dtype == np.float32
    np.testing.assert_allclose(halved["token_embedder"]["embedding"], params["token_embedder"]["embedding"],
                               rtol=1e-2)


def _flat_equal(a, b):
    from flanx.checkpoints.tree import flatten
    fa, fb = flatten(a), flatten(b)
    return fa.keys() == fb.keys() and all(np.array_equal(fa[k], fb[k]) for k in fa)


def test_bad_checkpoints_name_the_tensor(pair, tmp_path):
    variant, _, path, _, _ = pair
    if variant != "t5_v1_1":
        pytest.skip("error paths are checked once")
    tensors = _saved_tensors(path)
    hf_config = json.loads((path / "config.json").read_text())

    def write(name, tensors, config=hf_config):
        d = tmp_path / name
        d.mkdir()
        save_file(tensors, d / "model.safetensors")
        (d / "config.json").write_text(json.dumps(config))
        return d

    missing = dict(tensors)
    del missing["decoder.block.1.layer.1.EncDecAttention.k.weight"]
    with pytest.raises(CheckpointError, match=r"missing tensors \['decoder.block.1.layer.1.EncDecAttention.k"):
        import_hf(write("missing", missing))
    extra = dict(tensors, **{"encoder.block.7.layer.0.SelfAttention.q.weight": np.zeros((24, 48), np.float32)})
    with pytest.raises(CheckpointError, match=r"unknown tensors \['encoder.block.7.layer.0.SelfAttention.q"):
        import_hf(write("extra", extra))
    with pytest.raises(CheckpointError, match="shared.weight has 101 rows.*vocab_size=128"):
        import_hf(write("vocab", tensors, dict(hf_config, vocab_size=128)))
    with pytest.raises(CheckpointError, match=r"tensor encoder.block.0.layer.1.DenseReluDense.wi_0.weight has shape"):
        import_hf(write("dff", tensors, dict(hf_config, d_ff=64)))
    with pytest.raises(CheckpointError, match="feed_forward_proj 'gated-swish'"):
        import_hf(write("act", tensors, dict(hf_config, feed_forward_proj="gated-swish")))
