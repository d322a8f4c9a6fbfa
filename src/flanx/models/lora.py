"""LoRA for flanx's T5: adapter parameters, the trainable mask, merging, counting.

A dense layer named in `LoraConfig.targets` (default: `query` and `value` of
every attention block, i.e. encoder self-attention, decoder self-attention and
encoder-decoder attention) gets two extra parameters beside its `kernel`:

    lora_a [in, rank]   (random normal, std in**-0.5)
    lora_b [rank, out]  (zeros, so a fresh adapter leaves the model unchanged)

and computes `x @ kernel + (alpha / rank) * dropout(x) @ lora_a @ lora_b`
(`flanx.models.layers.lora_delta`, called by `Dense`). With `scan_layers` the
layer axis sits at position 1 of both, as for kernels. This module holds the
operations on parameter trees.

`add_lora(params, config, rng)` puts fresh adapters on pretrained params.
The base weights stay frozen: give `trainable_mask(params)` to the optimizer
(e.g. `optax.masked`), `count_trainable(params)` counts what is trained (works
on `jax.eval_shape` output too), and `merge_lora(params, config)` folds the
adapters into plain T5 kernels for export or fast inference.

`setup(params, config, rng)` is the one LoRA set-up every trainer path uses
(`python -m flanx.train`, the forgetting study, `flanx.train.trainer`): the
parameters to start from and the mask of what trains.
"""
from __future__ import annotations

import math
from collections.abc import Mapping

import jax
import jax.numpy as jnp

from flanx.models.layers import LORA_PARAM_NAMES


def _is_lora_name(path) -> bool:
    last = path[-1]
    return getattr(last, "key", getattr(last, "name", None)) in LORA_PARAM_NAMES


def has_lora(params) -> bool:
    leaves = jax.tree_util.tree_leaves_with_path(params)
    return any(_is_lora_name(path) for path, _ in leaves)


def trainable_mask(params):
    """Bools shaped like `params`: only LoRA parameters when there are any, else everything."""
    lora_present = has_lora(params)
    return jax.tree_util.tree_map_with_path(
        lambda path, _: _is_lora_name(path) if lora_present else True, params)


def count_trainable(params) -> int:
    """Number of trainable scalars (arrays or ShapeDtypeStructs)."""
    mask = trainable_mask(params)
    return int(sum(math.prod(leaf.shape) for leaf, m in
                   zip(jax.tree.leaves(params), jax.tree.leaves(mask)) if m))


def _only_lora(tree):
    out = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            sub = _only_lora(value)
            if sub:
                out[key] = sub
        elif key in LORA_PARAM_NAMES:
            out[key] = value
    return out


def _overlay(base, extra):
    out = dict(base)
    for key, value in extra.items():
        out[key] = _overlay(base.get(key, {}), value) if isinstance(value, Mapping) else value
    return out


def add_lora(params, config, rng):
    """`params` (plain T5, layout matching config.scan_layers) plus fresh adapters for config.lora."""
    from flanx.models.network import init_params

    if config.lora is None:
        raise ValueError("add_lora: config.lora is None; set it, e.g. config.replace(lora=LoraConfig(rank=8))")
    fresh = jax.jit(lambda r: _only_lora(init_params(config, r)))(rng)  # base init is dead code
    return _overlay(params, fresh)


def setup(params, config, rng=None):
    """(params, trainable mask) to fine-tune `config` from `params`.

    Without `config.lora`: `params` unchanged and mask None (everything trains).
    With it: `params` keeps its adapters when it has them (a resumed or already
    prepared run; shapes from `jax.eval_shape` are fine) or gets fresh ones from
    `rng` (a base checkpoint), and the mask selects only the adapters.
    """
    if getattr(config, "lora", None) is None:
        return params, None
    if not has_lora(params):
        if rng is None:
            raise ValueError("lora.setup: the parameters have no LoRA adapters to train; pass rng= to add fresh "
                             "ones (or start from parameters made with this LoRA config)")
        params = add_lora(params, config, rng)
    return params, trainable_mask(params)


def _merge_node(node: dict, scale: float) -> dict:
    a, b = node["lora_a"], node["lora_b"]
    kernel = node["kernel"]
    if a.ndim == 2:
        delta = a @ b
    else:  # scanned: a [in, layers, r], b [r, layers, out] -> [in, layers, out]
        delta = jnp.einsum("ilr,rlo->ilo", a, b)
    merged = {k: v for k, v in node.items() if k not in LORA_PARAM_NAMES}
    merged["kernel"] = (kernel + scale * delta).astype(kernel.dtype)
    return merged


def merge_lora(params, config):
    """Plain T5 params: every `kernel` with adapters becomes `kernel + (alpha/rank) * a @ b`.

    Use the result with `config.replace(lora=None)`.
    """
    if config.lora is None:
        if has_lora(params):
            raise ValueError("params hold lora_a/lora_b but config.lora is None: "
                             "pass the T5Config the LoRA params were made with")
        return params
    scale = config.lora.scale

    def walk(node):
        if not isinstance(node, Mapping):
            return node
        if "lora_a" in node or "lora_b" in node:
            missing = [k for k in ("kernel", "lora_a", "lora_b") if k not in node]
            if missing:
                raise ValueError(f"LoRA layer with keys {sorted(node)} lacks {missing}")
            return _merge_node(node, scale)
        return {k: walk(v) for k, v in node.items()}

    return walk(params)
