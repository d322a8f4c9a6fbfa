"""Parameter trees: '/'-path flattening, validation against a T5Config, layer stacking.

Every checkpoint format in `flanx.checkpoints` reads into and writes from the
same plain nested dict of numpy arrays named as in T5X (docs/architecture.md).
This module owns the operations on that tree that do not depend on a file
format:

- `flatten` / `unflatten` between nested dicts and `{'encoder/layers_0/...': array}`;
- `expected_shapes(config)`: the shapes `flanx.models.init_params` would
  create, computed abstractly with `jax.eval_shape` (no memory, no FLOPs);
- `validate_params(params, config, source)`: unknown, missing and mis-shaped
  parameters and a wrong vocabulary size fail with `CheckpointError` naming
  the parameter and the fix;
- `stack_layers` / `unstack_layers`: unscanned `layers_{i}` subtrees <-> one
  scanned `layers` subtree with the layer axis at position 1 (T5X's layout for
  `scan_layers=True`), so scan and no-scan checkpoints convert into each other.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

LAYERS = "layers"
_LAYER_KEY = re.compile(r"^layers_(\d+)$")
_MAX_LISTED = 8


class CheckpointError(ValueError):
    """A checkpoint cannot be read or does not fit the model; the message says why and how to fix it."""


# ----------------------------------------------------------------------------- flatten


def flatten(tree: Mapping[str, Any], sep: str = "/", is_leaf: Callable[[Any], bool] | None = None) -> dict[str, Any]:
    """Nested dict -> `{'a/b/c': leaf}`; empty sub-dicts are dropped.

    `is_leaf(value)` marks dicts to keep whole (e.g. TensorStore specs).
    """
    flat: dict[str, Any] = {}

    def visit(node: Mapping[str, Any], prefix: str) -> None:
        for key, value in node.items():
            if not isinstance(key, str):
                raise CheckpointError(f"parameter tree key {key!r} under {prefix or '<root>'!r} is not a string")
            path = f"{prefix}{sep}{key}" if prefix else key
            if isinstance(value, Mapping) and not (is_leaf and is_leaf(value)):
                visit(value, path)
            else:
                flat[path] = value

    visit(tree, "")
    return flat


def unflatten(flat: Mapping[str, Any], sep: str = "/") -> dict[str, Any]:
    """`{'a/b/c': leaf}` -> nested dict (the inverse of `flatten`)."""
    tree: dict[str, Any] = {}
    for path, value in flat.items():
        *parents, leaf = path.split(sep)
        node = tree
        for name in parents:
            child = node.setdefault(name, {})
            if not isinstance(child, dict):
                raise CheckpointError(f"parameter path {path!r} nests under {name!r}, which is already an array")
            node = child
        if leaf in node:
            raise CheckpointError(f"parameter path {path!r} appears twice (or is both an array and a subtree)")
        node[leaf] = value
    return tree


def to_numpy(tree: Mapping[str, Any]) -> dict[str, Any]:
    """Copy a tree of jax/numpy arrays into host numpy arrays (plain dicts, no FrozenDict)."""
    return unflatten({path: np.asarray(value) for path, value in flatten(tree).items()})


def cast_floating(tree: Mapping[str, Any], dtype: Any) -> dict[str, Any]:
    """Cast every floating-point leaf to `dtype` (integer leaves are kept)."""
    dtype = np.dtype(dtype)

    def cast(x: Any) -> Any:
        x = np.asarray(x)
        return x.astype(dtype) if np.issubdtype(x.dtype, np.floating) or x.dtype.name == "bfloat16" else x

    return unflatten({path: cast(value) for path, value in flatten(tree).items()})


def _listing(names: list[str]) -> str:
    shown = ", ".join(names[:_MAX_LISTED])
    more = len(names) - _MAX_LISTED
    return shown + (f" (and {more} more)" if more > 0 else "")


# ----------------------------------------------------------------------------- validation


def expected_shapes(config: Any) -> dict[str, tuple[int, ...]]:
    """Flat `{path: shape}` of the parameters `flanx.models.init_params(config, rng)` creates."""
    import jax

    from flanx import models

    abstract = jax.eval_shape(lambda rng: models.init_params(config, rng), jax.random.PRNGKey(0))
    return {path: tuple(leaf.shape) for path, leaf in flatten(abstract).items()}


def is_scanned(params: Mapping[str, Any]) -> bool:
    """True when the tree holds scanned `layers` subtrees rather than `layers_{i}`."""
    return any(f"/{LAYERS}/" in f"/{path}" for path in flatten(params))


def _vocab_hint(config: Any, have: int) -> str:
    return (
        f"the checkpoint's vocabulary has {have} entries but the config says vocab_size="
        f"{config.vocab_size}; use the config the checkpoint was trained with, or set "
        f"--gin.flanx.T5Config.vocab_size={have} (Python: dataclasses.replace(config, vocab_size={have}))"
    )


def validate_params(params: Mapping[str, Any], config: Any, source: str = "checkpoint") -> None:
    """Raise `CheckpointError` unless `params` has exactly the names and shapes `config` needs.

    `source` (a path or a description) starts every message so the user knows which
    file is wrong. The vocabulary size is checked first, since a checkpoint trained
    with another vocabulary mis-shapes several parameters at once.
    """
    have = {path: tuple(np.shape(value)) for path, value in flatten(params).items()}
    want = expected_shapes(config)

    embedding = have.get("token_embedder/embedding")
    if embedding and len(embedding) == 2 and embedding[0] != config.vocab_size:
        raise CheckpointError(f"{source}: parameter token_embedder/embedding has shape {embedding}: {_vocab_hint(config, embedding[0])}")

    scanned_have, scanned_want = is_scanned(params), bool(getattr(config, "scan_layers", False))
    if scanned_have != scanned_want:
        raise CheckpointError(
            f"{source}: the parameters are {'scanned (layers/...)' if scanned_have else 'unscanned (layers_N/...)'} "
            f"but config.scan_layers={scanned_want}; load them with flanx.checkpoints.load_params, which restacks "
            "layers, or convert them with flanx.checkpoints.stack_layers / unstack_layers"
        )
    problems = []
    unknown = sorted(set(have) - set(want))
    missing = sorted(set(want) - set(have))
    if unknown:
        problems.append(f"unknown parameters (not in the model): {_listing(unknown)}")
    if missing:
        problems.append(f"missing parameters (the model needs them): {_listing(missing)}")
    wrong = [f"{p} has shape {have[p]}, the model expects {want[p]}" for p in sorted(set(have) & set(want)) if have[p] != want[p]]
    if wrong:
        problems.append("shape mismatch: " + "; ".join(wrong[:_MAX_LISTED]) + (f" (and {len(wrong) - _MAX_LISTED} more)" if len(wrong) > _MAX_LISTED else ""))
    if problems:
        raise CheckpointError(
            f"{source} does not match the model config (vocab_size={config.vocab_size}, "
            f"scan_layers={scanned_want}):\n  - " + "\n  - ".join(problems)
            + "\nCheck that the config (--model NAME / --gin.flanx.T5Config.*) is the one the checkpoint was made with."
        )


# ----------------------------------------------------------------------------- scan <-> no scan


def _layer_groups(node: Mapping[str, Any], where: str) -> list[tuple[int, str]]:
    indexed = sorted((int(m.group(1)), key) for key in node if (m := _LAYER_KEY.match(key)))
    indices = [i for i, _ in indexed]
    if indices and indices != list(range(len(indices))):
        raise CheckpointError(f"{where}: layer subtrees are not numbered 0..{len(indices) - 1}: found {[k for _, k in indexed]}")
    return indexed


def stack_layers(params: Mapping[str, Any]) -> dict[str, Any]:
    """Unscanned -> scanned: every `{.., layers_0: T, layers_1: T, ..}` becomes `{.., layers: T'}`.

    Each leaf of `T'` stacks the per-layer arrays on a new axis 1 (`[d] -> [d, L]`,
    `[in, out] -> [in, L, out]`), the layout `nn.scan(..., variable_axes={'params': 1})`
    and T5X use. Trees that are already scanned are returned unchanged.
    """

    def visit(node: Mapping[str, Any], where: str) -> dict[str, Any]:
        groups = _layer_groups(node, where)
        out = {k: (visit(v, f"{where}/{k}") if isinstance(v, Mapping) else v)
               for k, v in node.items() if not _LAYER_KEY.match(k)}
        if not groups:
            return out
        if LAYERS in node:
            raise CheckpointError(f"{where}: holds both '{LAYERS}' and 'layers_N' subtrees; keep one layout")
        per_layer = [flatten(node[key]) for _, key in groups]
        names = set(per_layer[0])
        for (_, key), flat in zip(groups, per_layer):
            if set(flat) != names:
                diff = sorted(names.symmetric_difference(flat))
                raise CheckpointError(f"{where}/{key}: its parameters differ from {where}/layers_0 ({_listing(diff)}); cannot stack")
        stacked = {}
        for name in sorted(names):
            arrays = [np.asarray(flat[name]) for flat in per_layer]
            shapes = {a.shape for a in arrays}
            if len(shapes) != 1:
                raise CheckpointError(f"{where}/layers_*/{name}: shapes differ across layers {sorted(shapes)}; cannot stack")
            if not arrays[0].ndim:
                raise CheckpointError(f"{where}/layers_*/{name}: scalar parameters have no axis to stack layers after")
            stacked[name] = np.stack(arrays, axis=1)
        out[LAYERS] = unflatten(stacked)
        return out

    return visit(params, "<params>")


def unstack_layers(params: Mapping[str, Any]) -> dict[str, Any]:
    """Scanned -> unscanned: the inverse of `stack_layers` (axis 1 of each leaf is the layer axis)."""

    def visit(node: Mapping[str, Any], where: str) -> dict[str, Any]:
        out = {}
        for key, value in node.items():
            if key != LAYERS or not isinstance(value, Mapping):
                out[key] = visit(value, f"{where}/{key}") if isinstance(value, Mapping) else value
                continue
            if _layer_groups(node, where):
                raise CheckpointError(f"{where}: holds both '{LAYERS}' and 'layers_N' subtrees; keep one layout")
            flat = {name: np.asarray(a) for name, a in flatten(value).items()}
            counts = {name: (a.shape[1] if a.ndim >= 2 else None) for name, a in flat.items()}
            if None in counts.values() or len(set(counts.values())) != 1:
                raise CheckpointError(
                    f"{where}/{LAYERS}: cannot find one layer count on axis 1 of every array "
                    f"(axis-1 sizes: {_listing([f'{n}={c}' for n, c in sorted(counts.items())])})"
                )
            num_layers = next(iter(counts.values()))
            for i in range(num_layers):
                out[f"layers_{i}"] = unflatten({name: np.take(a, i, axis=1) for name, a in flat.items()})
        return out

    return visit(params, "<params>")


def match_layout(params: Mapping[str, Any], scan_layers: bool) -> dict[str, Any]:
    """Restack `params` so its layer layout matches `scan_layers`."""
    if scan_layers:
        return params if is_scanned(params) else stack_layers(params)
    return unstack_layers(params) if is_scanned(params) else dict(params)
