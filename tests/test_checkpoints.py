"""flanx.checkpoints: tree helpers, validation messages, scan <-> no-scan, native Orbax format, detection."""
from __future__ import annotations

import json

import jax
import numpy as np
import pytest
from helpers import assert_same_tree, random_params

from flanx import checkpoints as C
from flanx.models import LoraConfig, Transformer, get_config

CFG = get_config("tiny", num_decoder_layers=3)  # unequal depths catch encoder/decoder mix-ups


@pytest.fixture(scope="module")
def params():
    return random_params(CFG)


_ENC = np.array([[5, 6, 7, 8, 1, 0], [9, 10, 1, 0, 0, 0]], np.int32)
_DEC = np.array([[0, 11, 12, 13], [0, 14, 0, 0]], np.int32)


def logits(config, params):
    return np.asarray(jax.jit(lambda p: Transformer(config).apply({"params": p}, _ENC, _DEC))(params))


# ----------------------------------------------------------------------------- tree


def test_flatten_unflatten_round_trip_and_duplicates(params):
    flat = C.flatten(params)
    assert "encoder/layers_1/attention/query/kernel" in flat
    assert "decoder/layers_2/encoder_decoder_attention/out/kernel" in flat
    assert_same_tree(C.unflatten(flat), params)
    with pytest.raises(C.CheckpointError, match="a/b"):
        C.unflatten({"a/b": 1, "a/b/c": 2})


def test_stack_layers_puts_layer_axis_at_position_1(params):
    stacked = C.stack_layers(params)
    assert "layers_0" not in stacked["encoder"] and "layers" in stacked["decoder"]
    q = stacked["decoder"]["layers"]["self_attention"]["query"]["kernel"]
    assert q.shape == (64, 3, 64)
    np.testing.assert_array_equal(q[:, 2], params["decoder"]["layers_2"]["self_attention"]["query"]["kernel"])
    scale = stacked["encoder"]["layers"]["pre_mlp_layer_norm"]["scale"]
    assert scale.shape == (64, 2)
    np.testing.assert_array_equal(scale[:, 1], params["encoder"]["layers_1"]["pre_mlp_layer_norm"]["scale"])
    # Shapes are exactly what the scanned model creates.
    C.validate_params(stacked, CFG.replace(scan_layers=True))
    assert_same_tree(C.unstack_layers(stacked), params)
    assert C.stack_layers(stacked) == stacked  # already scanned: unchanged


@pytest.mark.slow  # compiles the model twice (3-6 s)
def test_scanned_and_unscanned_models_agree_on_restacked_params(params):
    plain = logits(CFG, params)
    scanned = logits(CFG.replace(scan_layers=True), C.stack_layers(params))
    np.testing.assert_allclose(scanned, plain, atol=1e-4, rtol=1e-4)
    assert np.abs(plain).max() > 1e-2  # a real signal, not all zeros


def test_stack_layers_rejects_inconsistent_layers(params):
    bad = C.unflatten(dict(C.flatten(params)))
    del bad["encoder"]["layers_1"]["mlp"]["wo"]
    with pytest.raises(C.CheckpointError, match="encoder/layers_1.*mlp/wo/kernel"):
        C.stack_layers(bad)
    gap = C.unflatten(dict(C.flatten(params)))
    gap["decoder"]["layers_5"] = gap["decoder"].pop("layers_2")
    with pytest.raises(C.CheckpointError, match="not numbered 0..2"):
        C.stack_layers(gap)


# ----------------------------------------------------------------------------- validation


def test_validate_names_unknown_missing_and_misshaped_parameters(params):
    C.validate_params(params, CFG)
    bad = C.unflatten(dict(C.flatten(params)))
    bad["encoder"]["layers_0"]["attention"]["extra"] = {"kernel": np.zeros((2, 2), np.float32)}
    del bad["decoder"]["decoder_norm"]
    bad["encoder"]["relpos_bias"]["rel_embedding"] = np.zeros((4, 16), np.float32)
    with pytest.raises(C.CheckpointError) as err:
        C.validate_params(bad, CFG, source="/ckpts/run1")
    msg = str(err.value)
    assert msg.startswith("/ckpts/run1")
    assert "unknown parameters (not in the model): encoder/layers_0/attention/extra/kernel" in msg
    assert "missing parameters (the model needs them): decoder/decoder_norm/scale" in msg
    assert "encoder/relpos_bias/rel_embedding has shape (4, 16), the model expects (4, 32)" in msg


def test_validate_vocab_mismatch_says_which_vocab_and_how_to_fix(params):
    bad = dict(params, token_embedder={"embedding": np.zeros((32128, 64), np.float32)})
    with pytest.raises(C.CheckpointError) as err:
        C.validate_params(bad, CFG, source="ckpt")
    msg = str(err.value)
    assert "token_embedder/embedding" in msg and "32128 entries" in msg and "vocab_size=384" in msg
    assert "--gin.flanx.T5Config.vocab_size=32128" in msg


def test_validate_layout_mismatch_points_to_restacking(params):
    with pytest.raises(C.CheckpointError, match="scanned.*scan_layers=False.*load_params"):
        C.validate_params(C.stack_layers(params), CFG)


# ----------------------------------------------------------------------------- native format


def test_native_round_trip_with_config_step_metadata_and_lora(tmp_path, params):
    cfg = CFG.replace(lora=LoraConfig(rank=4, targets=("query", "value", "wo")))
    bf16 = dict(params, token_embedder={"embedding": params["token_embedder"]["embedding"].astype(jax.numpy.bfloat16)})
    out = C.save_params(tmp_path / "ck", bf16, cfg, {"note": "x", "n": np.int64(3)}, step=12)
    assert sorted(p.name for p in out.iterdir()) == ["flanx.json", "params"]
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]
    ck = C.load_native(out)
    assert ck.config == cfg and ck.step == 12 and ck.metadata == {"note": "x", "n": 3}
    assert_same_tree(ck.params, bf16)
    assert C.detect_format(out) == "flanx"
    with pytest.raises(C.CheckpointError, match="already exists"):
        C.save_params(out, params, cfg)
    C.save_params(out, C.stack_layers(params), cfg.replace(scan_layers=True), overwrite=True)
    assert C.is_scanned(C.load_native(out).params)


def test_native_rejects_corrupt_sidecar_and_unknown_config_fields(tmp_path, params):
    out = C.save_params(tmp_path / "ck", params, CFG)
    side = out / "flanx.json"
    data = json.loads(side.read_text())
    data["config"]["num_expertz"] = 8
    side.write_text(json.dumps(data))
    with pytest.raises(C.CheckpointError, match="flanx.json.*num_expertz"):
        C.load_native(out)
    side.write_text("{not json")
    with pytest.raises(C.CheckpointError, match="flanx.json.*not valid JSON"):
        C.load_native(out)


def test_load_params_from_trainer_checkpoints(tmp_path, params):
    """What flanx.train writes: MODEL_DIR/flanx.json + checkpoints/<step>/{params,opt_state,train,data}/."""
    from types import SimpleNamespace

    from flanx.checkpoints import native
    from flanx.train.checkpointing import Checkpointer

    model_dir = tmp_path / "model"
    ckpt = Checkpointer(str(model_dir / "checkpoints"), async_save=False)
    for step, p in ((3, random_params(CFG, seed=1)), (7, params)):
        state = SimpleNamespace(step=np.int32(step), rng=np.array([0, step], np.uint32), params=p,
                                opt_state={"v": np.ones(3, np.float32)})
        ckpt.save(state, data_state={"pos": step})
    ckpt.close()
    # The model dir, its checkpoints/ dir, the step dir and the params item all resolve to step 7.
    for where in (model_dir, model_dir / "checkpoints", model_dir / "checkpoints" / "7",
                  model_dir / "checkpoints" / "7" / "params"):
        assert C.detect_format(where) == "flanx"
        loaded, config, step = C.load_params(where, CFG)
        assert step == 7 and config == CFG
        assert_same_tree(loaded, params)
    with pytest.raises(C.CheckpointError, match="carries no model config.*--model"):
        C.load_params(model_dir, None)
    # The trainer's MODEL_DIR/flanx.json supplies the config.
    sidecar = {"format": "flanx", "version": native.FORMAT_VERSION, "config": native.config_to_dict(CFG), "step": None}
    (model_dir / native.SIDECAR).write_text(json.dumps(sidecar))
    loaded, config, step = C.load_params(model_dir / "checkpoints" / "3", scan_layers=True)
    assert config == CFG.replace(scan_layers=True) and step == 3 and C.is_scanned(loaded)
    assert_same_tree(C.unstack_layers(loaded), random_params(CFG, seed=1))


def test_load_params_restacks_to_requested_layout_and_checks_shapes(tmp_path, params):
    out = C.save_params(tmp_path / "ck", params, CFG, step=5)
    loaded, config, step = C.load_params(out, scan_layers=True)
    assert config == CFG.replace(scan_layers=True) and step == 5
    assert_same_tree(loaded, C.stack_layers(params))
    with pytest.raises(C.CheckpointError, match="vocab_size=384"):
        C.load_params(out, get_config("tiny", vocab_size=500, num_decoder_layers=3))
    with pytest.raises(C.CheckpointError, match="unknown parameters.*decoder/layers_2"):
        C.load_params(out, get_config("tiny"))


def test_detect_format_names_what_it_looked_for(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(C.CheckpointError) as err:
        C.detect_format(tmp_path / "empty")
    msg = str(err.value)
    for looked_for in ("config.json", "checkpoint_<step>", "flanx.json", "_METADATA", "msgpack"):
        assert looked_for in msg
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(C.CheckpointError, match="not a msgpack"):
        C.detect_format(tmp_path / "notes.txt")
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text("{}")
    (hf / "model.safetensors").write_bytes(b"")
    assert C.detect_format(hf) == "hf"
    with pytest.raises(C.CheckpointError, match="does not exist"):
        C.detect_format(tmp_path / "nope")


@pytest.mark.needs_torch
def test_sharded_pytorch_bin_loads_tensors_only_and_matches_safetensors(tmp_path, params):
    """`pytorch_model.bin.index.json` + shards (as transformers writes large models) load with
    weights_only=True per shard and give exactly the safetensors export's parameters."""
    import torch
    from safetensors.numpy import load_file

    from flanx.checkpoints import hf

    reference = tmp_path / "st"
    hf.export_hf(params, CFG, reference)
    tensors = load_file(reference / "model.safetensors")
    sharded = tmp_path / "bin"
    sharded.mkdir()
    (sharded / "config.json").write_text((reference / "config.json").read_text())
    names = sorted(tensors)
    shards = {"pytorch_model-00001-of-00002.bin": names[::2], "pytorch_model-00002-of-00002.bin": names[1::2]}
    for shard, keys in shards.items():
        torch.save({k: torch.from_numpy(tensors[k].copy()) for k in keys}, sharded / shard)
    (sharded / "pytorch_model.bin.index.json").write_text(json.dumps(
        {"weight_map": {k: shard for shard, keys in shards.items() for k in keys}}))
    assert C.detect_format(sharded) == "hf"
    assert_same_tree(hf.import_hf(sharded)[0], hf.import_hf(reference)[0])
