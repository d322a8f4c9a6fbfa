"""LoRA adapters <-> Hugging Face PEFT adapters for T5 (`flanx convert --to peft` / `--from peft`).

A PEFT LoRA adapter directory holds `adapter_config.json` and
`adapter_model.safetensors`; `peft.PeftModel.from_pretrained(base_model, dir)`
puts it on a `transformers.T5ForConditionalGeneration`. Neither direction
needs torch or peft here (numpy + safetensors).

Names: PEFT wraps the torch `Linear` modules named in `target_modules`; for T5
those are `q, k, v, o` (every attention block: encoder self-attention, decoder
self- and cross-attention), `wi` (original T5) or `wi_0, wi_1` (v1.1) and `wo`.
flanx's `LoraConfig.targets` name the same layers `query, key, value, out, wi,
wi_0, wi_1, wo` and also adapt every block they occur in. Tensors:

    base_model.model.<HF module>.lora_A.weight   [r, in]   = flanx lora_a.T  (lora_a [in, r])
    base_model.model.<HF module>.lora_B.weight   [out, r]  = flanx lora_b.T  (lora_b [r, out])

where `<HF module>` is the module of the HF weight that `flanx.checkpoints.hf`
maps to the adapted kernel (e.g. `decoder.block.1.layer.1.EncDecAttention.q`
for `decoder/layers_1/encoder_decoder_attention/query`). Both compute
`x @ W + scale * x @ A^T @ B^T` with `scale = lora_alpha / r` (flanx: `alpha /
rank`); a `use_rslora` adapter (`scale = lora_alpha / sqrt(r)`) imports with
`alpha = lora_alpha * sqrt(r)`, the same scale.

PEFT options flanx's LoRA cannot express (DoRA, per-layer ranks or alphas,
adapters on only some layers, trained biases or extra modules, initialisations
that rewrite the base weights such as PiSSA/OLoRA/CorDA/LoftQ, ...) raise
`CheckpointError` naming the option.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from pathlib import Path

import numpy as np

from flanx.checkpoints.tree import CheckpointError, flatten, is_scanned, unflatten, unstack_layers

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PREFIX = "base_model.model."
# flanx LoRA target -> PEFT's module name for T5.
TO_PEFT = {"query": "q", "key": "k", "value": "v", "out": "o", "wi": "wi", "wi_0": "wi_0", "wi_1": "wi_1",
           "wo": "wo"}
FROM_PEFT = {v: k for k, v in TO_PEFT.items()}
# Options whose non-default value changes what the adapter computes in a way flanx's LoRA does not.
_UNSUPPORTED = {
    "use_dora": "DoRA (weight-decomposed LoRA)", "lora_bias": "a trained bias on lora_B",
    "rank_pattern": "per-layer ranks", "alpha_pattern": "per-layer alphas",
    "layers_to_transform": "adapters on only some layers", "layer_replication": "layer replication",
    "modules_to_save": "extra fully trained modules", "trainable_token_indices": "trained token embeddings",
    "target_parameters": "adapters on nn.Parameters", "use_qalora": "QALoRA", "fan_in_fan_out": "fan_in_fan_out",
    "alora_invocation_tokens": "activated LoRA", "use_bdlora": "block-diagonal LoRA",
    "megatron_config": "Megatron layers",
}
_BASE_REWRITING_INITS = ("pissa", "olora", "corda", "loftq")
_KEY = re.compile(r"^base_model\.model\.(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.[A-Za-z0-9_-]+)?\.weight$")


def is_adapter_dir(path: str | os.PathLike) -> bool:
    return (Path(path) / CONFIG_FILE).is_file()


def _modules(config) -> dict[str, str]:
    """{HF module name: flanx layer path} for every dense layer LoRA can adapt in `config`."""
    from flanx.checkpoints import hf

    out = {}
    for hf_name, (fx_path, _) in hf.name_map(dataclasses.replace(config, scan_layers=False, lora=None)).items():
        module = hf_name[: -len(".weight")]
        if module.rsplit(".", 1)[-1] in FROM_PEFT and fx_path.endswith("/kernel"):
            out[module] = fx_path[: -len("/kernel")]
    return out


# ----------------------------------------------------------------------------- export


def adapter_config(lora, target_modules: list[str], base_model_name_or_path: str | None = None) -> dict:
    """`adapter_config.json` contents for a flanx `LoraConfig` (PEFT's field names)."""
    return {
        "peft_type": "LORA", "task_type": "SEQ_2_SEQ_LM", "base_model_name_or_path": base_model_name_or_path,
        "r": lora.rank, "lora_alpha": lora.alpha, "lora_dropout": lora.dropout, "target_modules": target_modules,
        "bias": "none", "fan_in_fan_out": False, "use_rslora": False, "use_dora": False,
        "init_lora_weights": True, "modules_to_save": None, "layers_to_transform": None, "layers_pattern": None,
        "rank_pattern": {}, "alpha_pattern": {}, "inference_mode": True,
    }


def export_peft(params: dict, config, out_dir: str | os.PathLike, *,
                base_model_name_or_path: str | None = None) -> Path:
    """Write `params`' LoRA adapters as a PEFT adapter (config + safetensors) in `out_dir`."""
    from safetensors.numpy import save_file

    if config.lora is None:
        raise CheckpointError("the checkpoint has no LoRA adapters (its config has lora=None); export the whole "
                              "model with --to hf instead")
    if is_scanned(params):
        params = unstack_layers(params)
    flat = {p: np.asarray(v) for p, v in flatten(params).items()}
    tensors, targets = {}, set()
    for module, fx in _modules(config).items():
        short = module.rsplit(".", 1)[-1]
        if FROM_PEFT[short] not in config.lora.targets:
            continue
        a, b = flat.get(f"{fx}/lora_a"), flat.get(f"{fx}/lora_b")
        if a is None or b is None:
            raise CheckpointError(f"{fx} is a LoRA target ({FROM_PEFT[short]!r}) but has no lora_a/lora_b")
        tensors[f"{PREFIX}{module}.lora_A.weight"] = np.ascontiguousarray(a.T, dtype=np.float32)
        tensors[f"{PREFIX}{module}.lora_B.weight"] = np.ascontiguousarray(b.T, dtype=np.float32)
        targets.add(short)
    if not tensors:
        raise CheckpointError(f"LoraConfig.targets {config.lora.targets} adapt no layer of this model "
                              f"(its MLP is {config.mlp_activations}); nothing to export")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, out / WEIGHTS_FILE, metadata={"format": "pt"})
    cfg = adapter_config(config.lora, sorted(targets), base_model_name_or_path)
    (out / CONFIG_FILE).write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    return out


# ----------------------------------------------------------------------------- import


def read_adapter_config(path: str | os.PathLike) -> dict:
    """The adapter's config, checked: a LoRA adapter flanx's LoRA computes identically."""
    file = Path(path) / CONFIG_FILE
    if not file.is_file():
        raise CheckpointError(f"{path}: no {CONFIG_FILE} (is this a PEFT adapter directory?)")
    try:
        cfg = json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{file}: not valid JSON ({e})") from e
    if cfg.get("peft_type", "LORA") != "LORA":
        raise CheckpointError(f"{file}: peft_type {cfg.get('peft_type')!r}; flanx imports LORA adapters only")
    for key, what in _UNSUPPORTED.items():
        if cfg.get(key):
            raise CheckpointError(f"{file}: {key}={cfg[key]!r} ({what}) has no flanx LoRA equivalent; "
                                  f"only plain LoRA adapters on every layer of their target modules import")
    if cfg.get("bias", "none") != "none":
        raise CheckpointError(f"{file}: bias={cfg['bias']!r}; flanx's LoRA has no bias terms (needs bias='none')")
    init = cfg.get("init_lora_weights", True)
    if isinstance(init, str) and init.lower().startswith(_BASE_REWRITING_INITS):
        raise CheckpointError(f"{file}: init_lora_weights={init!r} rewrites the base weights, so the adapter "
                              "only works on that modified base; convert it to plain LoRA with PEFT first "
                              "(save_pretrained(..., path_initial_model_for_weight_conversion=...))")
    for key in ("r", "lora_alpha"):
        if not isinstance(cfg.get(key), (int, float)) or cfg[key] <= 0:
            raise CheckpointError(f"{file}: {key}={cfg.get(key)!r}; expected a positive number")
    return cfg


def _read_weights(path: Path) -> dict[str, np.ndarray]:
    if (path / WEIGHTS_FILE).is_file():
        from safetensors.numpy import load_file

        return dict(load_file(path / WEIGHTS_FILE))
    if (path / "adapter_model.bin").is_file():
        try:
            import torch
        except ImportError:
            raise CheckpointError(f"{path}/adapter_model.bin needs torch to read (pip install torch)") from None
        state = torch.load(path / "adapter_model.bin", map_location="cpu", weights_only=True)
        return {k: v.to(torch.float32).numpy() for k, v in state.items()}
    raise CheckpointError(f"{path}: no {WEIGHTS_FILE} or adapter_model.bin")


def lora_config_from_peft(cfg: dict, targets: tuple[str, ...]):
    """flanx `LoraConfig` computing what PEFT's config does (rslora folded into alpha)."""
    from flanx.models import LoraConfig

    rank = int(cfg["r"])
    alpha = float(cfg["lora_alpha"]) * (math.sqrt(rank) if cfg.get("use_rslora") else 1.0)
    return LoraConfig(rank=rank, alpha=alpha, dropout=float(cfg.get("lora_dropout") or 0.0), targets=targets)


def import_peft(path: str | os.PathLike, base_params: dict, base_config) -> tuple[dict, object]:
    """(params with lora_a/lora_b, config with `lora`) from a PEFT adapter and its base model.

    `base_params`: the plain T5 parameters the adapter was trained on (any
    layout), `base_config` their `T5Config`.
    """
    path = Path(path)
    cfg = read_adapter_config(path)
    rank = int(cfg["r"])
    pairs: dict[str, dict[str, np.ndarray]] = {}
    modules = _modules(base_config)
    for key, value in _read_weights(path).items():
        match = _KEY.match(key)
        if match is None or match["module"] not in modules:
            raise CheckpointError(f"{path}/{WEIGHTS_FILE}: tensor {key!r} is not a LoRA weight of a T5 "
                                  f"{'/'.join(FROM_PEFT)} layer of this base model "
                                  f"(expected {PREFIX}<module>.lora_A.weight / .lora_B.weight)")
        pairs.setdefault(match["module"], {})[match["ab"]] = np.asarray(value, np.float32)
    if not pairs:
        raise CheckpointError(f"{path}: the adapter holds no LoRA weights")
    shorts = {m.rsplit(".", 1)[-1] for m in pairs}
    # flanx adapts every layer of a target kind: the adapter must cover all of them.
    uncovered = sorted(m for m in modules if m.rsplit(".", 1)[-1] in shorts and m not in pairs)
    if uncovered:
        raise CheckpointError(f"{path}: the adapter skips {len(uncovered)} layer(s) of its target modules "
                              f"{sorted(shorts)}, e.g. {uncovered[:3]}; flanx's LoRA adapts every such layer")
    base_params = unstack_layers(base_params) if is_scanned(base_params) else base_params
    flat = {p: np.asarray(v) for p, v in flatten(base_params).items()}
    for module, ab in sorted(pairs.items()):
        fx = modules[module]
        if set(ab) != {"A", "B"}:
            raise CheckpointError(f"{path}: {module} has lora_{''.join(ab)} but not both lora_A and lora_B")
        kernel = flat.get(f"{fx}/kernel")
        if kernel is None:
            raise CheckpointError(f"base model has no {fx}/kernel for adapter module {module}")
        n_in, n_out = kernel.shape
        if ab["A"].shape != (rank, n_in) or ab["B"].shape != (n_out, rank):
            raise CheckpointError(f"{path}: {module}.lora_A/B have shapes {ab['A'].shape}/{ab['B'].shape}; "
                                  f"r={rank} and the base layer [{n_out}, {n_in}] imply {(rank, n_in)}/{(n_out, rank)}")
        flat[f"{fx}/lora_a"] = np.ascontiguousarray(ab["A"].T)
        flat[f"{fx}/lora_b"] = np.ascontiguousarray(ab["B"].T)
    targets = tuple(FROM_PEFT[s] for s in TO_PEFT.values() if s in shorts)
    config = dataclasses.replace(base_config, scan_layers=False, lora=lora_config_from_peft(cfg, targets))
    return unflatten(flat), config


def base_path(path: str | os.PathLike, base: str | None) -> Path:
    """Where the adapter's base model is: `base`, else `<adapter>/base`, else its local base_model_name_or_path."""
    if base:
        return Path(base)
    if (Path(path) / "base").is_dir():
        return Path(path) / "base"
    named = read_adapter_config(path).get("base_model_name_or_path")
    if named and Path(named).is_dir():
        return Path(named)
    raise CheckpointError(f"{path}: the adapter's base model {named!r} is not a local directory; pass "
                          "--base PATH (a Hugging Face, T5X or flanx checkpoint of the base model; T5X also "
                          "needs --model NAME)")


def without_lora(params: dict) -> dict:
    """`params` minus every lora_a / lora_b: the frozen base weights."""
    return unflatten({p: v for p, v in flatten(params).items() if p.rsplit("/", 1)[-1] not in ("lora_a", "lora_b")})
