"""flanx checkpoints: load any supported format into validated parameters, save the native one.

Formats (`detect_format` tells them apart by their files):

- `'hf'`: a Hugging Face T5 / FLAN-T5 directory (`config.json` + safetensors or
  `pytorch_model.bin`, possibly sharded) - `flanx.checkpoints.hf`;
- `'t5x'`: a T5X model dir or `checkpoint_<step>/` dir (msgpack + zarr) -
  `flanx.checkpoints.t5x`;
- `'t5x_msgpack'`: a single msgpack file with every array inline;
- `'flanx'`: the native Orbax format, including the trainer's
  CheckpointManager directories - `flanx.checkpoints.native`.

`load_params(path, config)` -> `(params, config, step)`: reads any of them,
restacks layers to the requested `scan_layers`, and validates names and
shapes against the config, so a mismatch fails here with the parameter named
rather than deep inside a jitted step. Nothing here imports TensorFlow.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, NamedTuple

from flanx.checkpoints.native import NativeCheckpoint, load_native, save_params
from flanx.checkpoints.t5x import export_t5x, import_t5x
from flanx.checkpoints.tree import (
    CheckpointError,
    cast_floating,
    expected_shapes,
    flatten,
    is_scanned,
    match_layout,
    stack_layers,
    to_numpy,
    unflatten,
    unstack_layers,
    validate_params,
)

FORMATS = ("hf", "t5x", "t5x_msgpack", "flanx")
_HF_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
_NEED_CONFIG = "pass config= (e.g. flanx.models.get_config('flan_t5_base')), or on the command line --model NAME"
_MSGPACK_MAP_FIRST_BYTES = set(range(0x80, 0x90)) | {0xDE, 0xDF}

__all__ = [
    "FORMATS", "CheckpointError", "NativeCheckpoint", "RawCheckpoint", "detect_format", "read_checkpoint",
    "fit_params", "load_params", "save_params",
    "load_native", "import_t5x", "export_t5x", "flatten", "unflatten", "expected_shapes",
    "validate_params", "stack_layers", "unstack_layers", "is_scanned", "match_layout", "cast_floating", "to_numpy",
]


def detect_format(path: str | os.PathLike) -> str:
    """'hf' | 't5x' | 't5x_msgpack' | 'flanx' for the checkpoint at `path`, or CheckpointError."""
    from flanx.checkpoints import native, t5x

    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint path {path} does not exist")
    if path.is_file():
        with open(path, "rb") as f:
            first = f.read(1)
        if first and first[0] in _MSGPACK_MAP_FIRST_BYTES:
            return "t5x_msgpack"
        raise CheckpointError(f"{path} is a file but not a msgpack checkpoint (it does not start with a msgpack map)")
    if (path / "config.json").is_file() and any((path / w).is_file() for w in _HF_WEIGHTS):
        return "hf"
    if (path / native.SIDECAR).is_file():
        return "flanx"
    if (path / t5x.CHECKPOINT_FILE).is_file() or t5x.step_dirs(path):
        return "t5x"
    try:
        native.resolve(path)
        return "flanx"
    except CheckpointError:
        pass
    raise CheckpointError(
        f"{path}: unknown checkpoint format. Looked for: Hugging Face (config.json with "
        f"{' / '.join(_HF_WEIGHTS)}); T5X ({t5x.CHECKPOINT_FILE} msgpack file, or checkpoint_<step>/"
        f"{t5x.CHECKPOINT_FILE}); flanx ({native.SIDECAR} + params/, an Orbax PyTree with _METADATA, or "
        "CheckpointManager <step>/params/ dirs, also under checkpoints/); a single msgpack file"
    )


class RawCheckpoint(NamedTuple):
    params: dict[str, Any]
    config: Any  # the config stored with the checkpoint, or None (T5X)
    step: int | None
    fmt: str
    source: str  # "<format> checkpoint <path>", for messages


def read_checkpoint(path: str | os.PathLike, fmt: str | None = None) -> RawCheckpoint:
    """Read a checkpoint as stored: no restacking, casting or validation."""
    path = Path(path)
    fmt = fmt or detect_format(path)
    if fmt == "hf":
        from flanx.checkpoints import hf

        params, config = hf.import_hf(path)
        return RawCheckpoint(params, config, None, fmt, f"Hugging Face checkpoint {path}")
    if fmt in ("t5x", "t5x_msgpack"):
        params, step = import_t5x(path)
        return RawCheckpoint(params, None, step, fmt, f"T5X checkpoint {path}")
    if fmt == "flanx":
        ckpt = load_native(path)
        return RawCheckpoint(ckpt.params, ckpt.config, ckpt.step, fmt, f"flanx checkpoint {path}")
    raise CheckpointError(f"unknown checkpoint format {fmt!r}; choose from {FORMATS}")


def fit_params(params: dict[str, Any], config: Any, scan_layers: bool | None = None, *, dtype: Any = "float32",
               source: str = "checkpoint") -> tuple[dict[str, Any], Any]:
    """Restack `params` to `scan_layers` (None: `config.scan_layers`), cast, validate -> (params, config)."""
    if scan_layers is not None and bool(scan_layers) != config.scan_layers:
        config = dataclasses.replace(config, scan_layers=bool(scan_layers))
    params = match_layout(params, config.scan_layers)
    if dtype is not None:
        params = cast_floating(params, dtype)
    validate_params(params, config, source=source)
    return params, config


def load_params(path: str | os.PathLike, config: Any = None, scan_layers: bool | None = None, *,
                fmt: str | None = None, dtype: Any = "float32") -> tuple[dict[str, Any], Any, int | None]:
    """Load a checkpoint of any supported format -> (params, config, step).

    config: the model config to validate against; None uses the config stored with
      the checkpoint (Hugging Face and flanx checkpoints carry one; T5X ones do not).
    scan_layers: layer layout of the returned params (None: `config.scan_layers`);
      the returned config says the same.
    fmt: skip detection ('hf', 't5x', 't5x_msgpack', 'flanx').
    dtype: cast floating parameters to this dtype (None keeps the stored dtypes).
    """
    fmt = fmt or detect_format(path)
    if config is None and fmt in ("t5x", "t5x_msgpack"):
        raise CheckpointError(f"T5X checkpoint {path} carries no model config; {_NEED_CONFIG}")
    raw = read_checkpoint(path, fmt)
    config = config if config is not None else raw.config
    if config is None:
        raise CheckpointError(f"{raw.source} carries no model config; {_NEED_CONFIG}")
    params, config = fit_params(raw.params, config, scan_layers, dtype=dtype, source=raw.source)
    return params, config, raw.step
