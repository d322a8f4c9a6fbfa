"""Hugging Face T5 / FLAN-T5 checkpoints <-> flanx params and `T5Config`.

`import_hf(path) -> (params, config)` reads a directory written by
`transformers` (`config.json` plus `model.safetensors`, sharded safetensors
with `model.safetensors.index.json`, or `pytorch_model.bin` / sharded
`pytorch_model.bin.index.json`, which need torch and are loaded with
`weights_only=True`, tensors only). Shards must lie inside the directory. `export_hf(params, config, out_dir)`
writes `config.json` + `model.safetensors` (numpy API, no torch needed) that
`transformers.T5ForConditionalGeneration.from_pretrained` loads.

Name mapping (torch `Linear` weights are `[out, in]`, flanx kernels `[in, out]`):

    shared.weight                                     token_embedder/embedding
    {enc,dec}oder.block.0.layer.0.SelfAttention.relative_attention_bias.weight
                                                      {enc,dec}oder/relpos_bias/rel_embedding (transposed)
    encoder.block.{i}.layer.0.SelfAttention.{q,k,v,o} encoder/layers_{i}/attention/{query,key,value,out}
    encoder.block.{i}.layer.1.DenseReluDense.*        encoder/layers_{i}/mlp/{wi,wi_0,wi_1,wo}
    decoder.block.{i}.layer.{0,1,2}                   self_attention, encoder_decoder_attention, mlp
    *.layer.{j}.layer_norm.weight                     the matching pre_*_layer_norm/scale
    {enc,dec}oder.final_layer_norm.weight             {enc,dec}oder/{enc,dec}oder_norm/scale
    lm_head.weight                                    decoder/logits_dense/kernel (absent when tied)

Unknown, missing or mis-shaped tensors and vocabulary mismatches raise
`CheckpointError` naming the tensor.
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np

from flanx.checkpoints.tree import CheckpointError, expected_shapes, flatten, unflatten

_ATTENTION = {"q": "query", "k": "key", "v": "value", "o": "out"}
_FF_TO_ACTIVATIONS = {
    "gated-gelu": ("gelu", "linear"),  # transformers maps gated-gelu to the tanh "gelu_new"
    "gated-relu": ("relu", "linear"),
    "gated-silu": ("silu", "linear"),
    "relu": ("relu",),
    "silu": ("silu",),
}
# Checkpoint tensors transformers itself ignores or derives from others.
_DERIVED = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight")
_IGNORED = ("decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight",)


# ----------------------------------------------------------------------------- config


def config_from_hf(hf: dict, source: str = "config.json"):
    """T5Config from a Hugging Face T5 config dict."""
    from flanx.models import T5Config

    if hf.get("model_type", "t5") != "t5":
        raise CheckpointError(f"{source}: model_type {hf.get('model_type')!r} is not 't5'")
    missing = [k for k in ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_heads") if k not in hf]
    if missing:
        raise CheckpointError(f"{source}: missing fields {missing}")
    ff = hf.get("feed_forward_proj", "relu")
    if ff not in _FF_TO_ACTIVATIONS:
        raise CheckpointError(f"{source}: feed_forward_proj {ff!r} is not supported by flanx; "
                              f"supported: {sorted(_FF_TO_ACTIVATIONS)}")
    # transformers 5 writes tie_word_embeddings=True always and keeps the old meaning
    # (scale the decoder output by d_model**-0.5) in scale_decoder_outputs.
    scaled = hf.get("scale_decoder_outputs", hf.get("tie_word_embeddings", True))
    return T5Config(
        vocab_size=hf["vocab_size"], d_model=hf["d_model"], num_heads=hf["num_heads"],
        head_dim=hf["d_kv"], d_ff=hf["d_ff"], num_encoder_layers=hf["num_layers"],
        num_decoder_layers=hf.get("num_decoder_layers") or hf["num_layers"],
        relative_attention_num_buckets=hf.get("relative_attention_num_buckets", 32),
        relative_attention_max_distance=hf.get("relative_attention_max_distance", 128),
        dropout_rate=float(hf.get("dropout_rate", 0.1)), mlp_activations=_FF_TO_ACTIVATIONS[ff],
        logits_via_embedding=bool(scaled), layer_norm_epsilon=float(hf.get("layer_norm_epsilon", 1e-6)))


def config_to_hf(config) -> dict:
    """Hugging Face `config.json` contents for `config`."""
    ff = {v: k for k, v in _FF_TO_ACTIVATIONS.items()}.get(tuple(config.mlp_activations))
    if ff is None:
        raise CheckpointError(f"T5Config.mlp_activations {config.mlp_activations} has no Hugging Face "
                              f"feed_forward_proj; exportable: {sorted(_FF_TO_ACTIVATIONS.values())}")
    return {
        "architectures": ["T5ForConditionalGeneration"], "model_type": "t5",
        "vocab_size": config.vocab_size, "d_model": config.d_model, "d_kv": config.head_dim,
        "d_ff": config.d_ff, "num_layers": config.num_encoder_layers,
        "num_decoder_layers": config.num_decoder_layers, "num_heads": config.num_heads,
        "relative_attention_num_buckets": config.relative_attention_num_buckets,
        "relative_attention_max_distance": config.relative_attention_max_distance,
        "dropout_rate": config.dropout_rate, "layer_norm_epsilon": config.layer_norm_epsilon,
        "initializer_factor": 1.0, "feed_forward_proj": ff,
        "tie_word_embeddings": bool(config.logits_via_embedding),
        "is_encoder_decoder": True, "use_cache": True,
        "decoder_start_token_id": 0, "pad_token_id": 0, "eos_token_id": 1,
    }


# ----------------------------------------------------------------------------- names


def name_map(config) -> dict[str, tuple[str, bool]]:
    """{HF tensor name: (flanx '/' path, transposed)} for every parameter of `config`."""
    mlp = (["wi"] if len(config.mlp_activations) == 1
           else [f"wi_{i}" for i in range(len(config.mlp_activations))]) + ["wo"]
    names = {"shared.weight": ("token_embedder/embedding", False)}

    def attention(hf_prefix, flanx_prefix):
        for short, long in _ATTENTION.items():
            names[f"{hf_prefix}.{short}.weight"] = (f"{flanx_prefix}/{long}/kernel", True)

    def feed_forward(hf_prefix, flanx_prefix):
        for w in mlp:
            names[f"{hf_prefix}.DenseReluDense.{w}.weight"] = (f"{flanx_prefix}/mlp/{w}/kernel", True)

    for stack, layers in (("encoder", config.num_encoder_layers), ("decoder", config.num_decoder_layers)):
        names[f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"] = (
            f"{stack}/relpos_bias/rel_embedding", True)
        names[f"{stack}.final_layer_norm.weight"] = (f"{stack}/{stack}_norm/scale", False)
        for i in range(layers):
            hf, fx = f"{stack}.block.{i}.layer", f"{stack}/layers_{i}"
            if stack == "encoder":
                attention(f"{hf}.0.SelfAttention", f"{fx}/attention")
                names[f"{hf}.0.layer_norm.weight"] = (f"{fx}/pre_attention_layer_norm/scale", False)
                feed_forward(f"{hf}.1", fx)
                names[f"{hf}.1.layer_norm.weight"] = (f"{fx}/pre_mlp_layer_norm/scale", False)
            else:
                attention(f"{hf}.0.SelfAttention", f"{fx}/self_attention")
                names[f"{hf}.0.layer_norm.weight"] = (f"{fx}/pre_self_attention_layer_norm/scale", False)
                attention(f"{hf}.1.EncDecAttention", f"{fx}/encoder_decoder_attention")
                names[f"{hf}.1.layer_norm.weight"] = (f"{fx}/pre_cross_attention_layer_norm/scale", False)
                feed_forward(f"{hf}.2", fx)
                names[f"{hf}.2.layer_norm.weight"] = (f"{fx}/pre_mlp_layer_norm/scale", False)
    if not config.logits_via_embedding:
        names["lm_head.weight"] = ("decoder/logits_dense/kernel", True)
    return names


# ----------------------------------------------------------------------------- import


def _shards(index: Path, path: Path) -> list[Path]:
    """The shard files a `*.index.json` names, each checked to lie inside `path` and to exist."""
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
        names = sorted(set(weight_map.values()))
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{index}: not a Hugging Face shard index (a JSON object whose \"weight_map\" maps "
                              f"tensor names to shard files): {type(e).__name__}: {e}") from None
    files = []
    for shard in names:
        if not isinstance(shard, str) or Path(shard).is_absolute() or ".." in Path(shard).parts:
            raise CheckpointError(f"{index} names shard {shard!r}, which is not a file inside {path}; flanx reads "
                                  "shards only from the checkpoint directory")
        if not (path / shard).is_file():
            raise CheckpointError(f"{index} lists shard {shard}, which is missing from {path}")
        files.append(path / shard)
    return files


def _load_safetensors(file: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    try:
        return dict(load_file(file))
    except Exception as e:  # noqa: BLE001 - safetensors_rust.SafetensorError and friends
        raise CheckpointError(f"{file}: not a readable safetensors file ({type(e).__name__}: {e}); the file is "
                              "damaged, truncated or not safetensors - download or copy it again") from None


def _load_torch_bin(file: Path) -> dict[str, np.ndarray]:
    """A `pytorch_model.bin` (shard) read with `weights_only=True`: tensors only, no code from the file."""
    import pickle

    try:
        import torch
    except ImportError:
        raise CheckpointError(f"{file} needs torch to read (pip install torch), "
                              "or convert the checkpoint to safetensors") from None
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(
            f"{file}: holds pickled Python objects besides tensors, which flanx does not load (loading them could "
            "run code from the file). Convert the checkpoint to safetensors in an environment you trust, or use "
            "another checkpoint") from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{file}: not a readable PyTorch checkpoint ({detail}); the file is damaged or "
                              "truncated - download or copy it again") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{file}: holds a {type(state).__name__}, not a dict of tensors")
    return {k: v.to(torch.float32).numpy() if v.is_floating_point() else v.numpy() for k, v in state.items()}


def _read_tensors(path: Path) -> dict[str, np.ndarray]:
    if (path / "model.safetensors").is_file():
        return _load_safetensors(path / "model.safetensors")
    for index, load in (("model.safetensors.index.json", _load_safetensors),
                        ("pytorch_model.bin.index.json", _load_torch_bin)):
        if (path / index).is_file():
            tensors = {}
            for shard in _shards(path / index, path):
                tensors.update(load(shard))
            return tensors
    if (path / "pytorch_model.bin").is_file():
        return _load_torch_bin(path / "pytorch_model.bin")
    raise CheckpointError(f"{path}: no model.safetensors, model.safetensors.index.json, pytorch_model.bin or "
                          "pytorch_model.bin.index.json found")


def import_hf(path: str | os.PathLike) -> tuple[dict, object]:
    """(float32 params, T5Config) from a Hugging Face T5 directory."""
    path = Path(path)
    config_file = path / "config.json"
    if not config_file.is_file():
        raise CheckpointError(f"{path}: no config.json (is this a Hugging Face model directory?)")
    try:
        hf_config = json.loads(config_file.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{config_file}: not valid JSON ({e})") from None
    if not isinstance(hf_config, dict):
        raise CheckpointError(f"{config_file}: expected a JSON object, got {type(hf_config).__name__}")
    config = config_from_hf(hf_config, str(config_file))
    tensors = _read_tensors(path)
    names, shapes = name_map(config), expected_shapes(config)

    shared = tensors.get("shared.weight")
    if shared is not None and shared.shape[0] != config.vocab_size:
        raise CheckpointError(f"{path}: shared.weight has {shared.shape[0]} rows but config.json says "
                              f"vocab_size={config.vocab_size}; fix vocab_size in config.json")
    for derived in _DERIVED:
        if derived in tensors and "shared.weight" not in tensors:
            tensors["shared.weight"] = tensors[derived]  # some exports keep only the tied copy
    if config.logits_via_embedding and "lm_head.weight" in tensors:
        if not np.array_equal(tensors["lm_head.weight"], tensors.get("shared.weight")):
            raise CheckpointError(f"{path}: lm_head.weight differs from shared.weight, but the config ties "
                                  "them (tie_word_embeddings / scale_decoder_outputs true)")
        del tensors["lm_head.weight"]
    if not config.logits_via_embedding and "lm_head.weight" not in tensors and "shared.weight" in tensors:
        tensors["lm_head.weight"] = tensors["shared.weight"]  # untied in the config, tied in the file

    unknown = sorted(set(tensors) - set(names) - set(_DERIVED) - set(_IGNORED))
    missing = sorted(set(names) - set(tensors))
    if unknown or missing:
        raise CheckpointError(f"{path} does not match its config.json: unknown tensors {unknown[:8]}, "
                              f"missing tensors {missing[:8]}")
    flat = {}
    for hf_name, (fx_path, transposed) in names.items():
        array = np.asarray(tensors[hf_name], dtype=np.float32)
        array = np.ascontiguousarray(array.T) if transposed else array
        if array.shape != shapes[fx_path]:
            want = shapes[fx_path][::-1] if transposed else shapes[fx_path]
            raise CheckpointError(f"{path}: tensor {hf_name} has shape {tensors[hf_name].shape}, "
                                  f"config.json implies {want}")
        flat[fx_path] = array
    return unflatten(flat), config


# ----------------------------------------------------------------------------- export


def export_hf(params: dict, config, out_dir: str | os.PathLike) -> Path:
    """Write `config.json` + `model.safetensors` (float32) for transformers; returns out_dir.

    Scanned params are unstacked and LoRA adapters merged first.
    """
    from safetensors.numpy import save_file

    from flanx.checkpoints.tree import is_scanned, unstack_layers
    from flanx.models import lora

    if config.lora is not None or lora.has_lora(params):
        params = lora.merge_lora(params, config)
        config = dataclasses.replace(config, lora=None)
    if is_scanned(params):
        params = unstack_layers(params)
    config = dataclasses.replace(config, scan_layers=False)
    flat = {p: np.asarray(v) for p, v in flatten(params).items()}
    names, shapes = name_map(config), expected_shapes(config)
    wanted = {fx for fx, _ in names.values()}
    unknown, missing = sorted(set(flat) - wanted), sorted(wanted - set(flat))
    if unknown or missing:
        raise CheckpointError(f"export_hf: params do not match the config: unknown {unknown[:8]}, "
                              f"missing {missing[:8]}")
    tensors = {}
    for hf_name, (fx_path, transposed) in names.items():
        array = flat[fx_path]
        if array.shape != shapes[fx_path]:
            raise CheckpointError(f"export_hf: parameter {fx_path} has shape {array.shape}, "
                                  f"the config implies {shapes[fx_path]}")
        array = array.astype(np.float32)
        tensors[hf_name] = np.ascontiguousarray(array.T if transposed else array)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, out / "model.safetensors", metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(config_to_hf(config), indent=2, sort_keys=True) + "\n")
    return out
