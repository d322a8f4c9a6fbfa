"""T5X checkpoints: import (the public FLAN-T5 layout) and export, without T5X or TensorFlow.

A T5X checkpoint is a directory `MODEL_DIR/checkpoint_<step>/` holding:

- `checkpoint`: a msgpack file (flax.serialization encoding, arrays as msgpack
  extension types) with the train-state tree. Version >= 2 files wrap it as
  `{'version': N, 'optimizer': {'target': params, 'state': {'step': ..,
  'param_states': optimizer slots}}}`; version-0 files hold the inner dict alone.
- one zarr v2 array directory per large leaf (`target.encoder.layers_0.attention.query.kernel/`
  with `.zarray` and chunk files, usually gzip-compressed). In the msgpack the
  leaf is then either a TensorStore spec dict whose `kvstore.path` names that
  directory relative to the checkpoint (T5X's own writer), or a placeholder
  string `'PLACEHOLDER://target.encoder....'` (Orbax-era writers).
  Orbax-era writers may keep those arrays in an OCDBT store (`manifest.ocdbt`)
  instead of plain directories; both are read.

A single-file msgpack checkpoint (the same tree with every array inline) also
loads, as does a plain `flax.serialization.to_bytes(params)` file.

Only the parameters (`target`) are imported; optimizer state is dropped and the
step returned. `export_t5x` writes the same layout (zarr via TensorStore, spec
dicts in the msgpack, no optimizer slots), so round trips are testable and the
result loads in T5X with its optimizer state initialised fresh.
"""
from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from flanx.checkpoints.tree import CheckpointError, flatten, unflatten

CHECKPOINT_FILE = "checkpoint"
VERSION = 3
PLACEHOLDER_PREFIXES = ("PLACEHOLDER://", "AGGREGATED://")
_STEP_DIR = re.compile(r"^checkpoint_(\d+)$")
_CHUNK_BYTES = 64 * 1024 * 1024


# ----------------------------------------------------------------------------- locating


def step_dirs(model_dir: str | os.PathLike) -> dict[int, Path]:
    """`{step: path}` of the complete `checkpoint_<step>/` directories under `model_dir`."""
    model_dir = Path(model_dir)
    found = {}
    if model_dir.is_dir():
        for child in model_dir.iterdir():
            m = _STEP_DIR.match(child.name)
            if m and (child / CHECKPOINT_FILE).is_file():
                found[int(m.group(1))] = child
    return found


def find_checkpoint_file(path: str | os.PathLike) -> Path:
    """The msgpack file for `path`: the file itself, `<dir>/checkpoint`, or the latest step under a model dir."""
    path = Path(path)
    if path.is_file():
        return path
    if (path / CHECKPOINT_FILE).is_file():
        return path / CHECKPOINT_FILE
    steps = step_dirs(path)
    if steps:
        return steps[max(steps)] / CHECKPOINT_FILE
    if not path.exists():
        raise CheckpointError(f"T5X checkpoint {path} does not exist")
    raise CheckpointError(
        f"{path} is not a T5X checkpoint: looked for a msgpack file, {path / CHECKPOINT_FILE}, "
        f"and checkpoint_<step>/{CHECKPOINT_FILE} subdirectories"
    )


# ----------------------------------------------------------------------------- reading


def read_msgpack(path: str | os.PathLike) -> dict[str, Any]:
    """Decode a flax/T5X msgpack file into a dict, naming the file when it is corrupt or truncated."""
    from flax import serialization

    path = Path(path)
    data = path.read_bytes()
    if not data:
        raise CheckpointError(f"{path}: the T5X msgpack checkpoint file is empty (an interrupted write or copy?)")
    try:
        tree = serialization.msgpack_restore(data)
    except Exception as e:  # msgpack raises ValueError subclasses and others for bad bytes
        raise CheckpointError(
            f"{path}: not a readable msgpack checkpoint ({type(e).__name__}: {e}); the file is corrupt or "
            f"truncated ({len(data)} bytes) - copy it again from its source"
        ) from e
    if not isinstance(tree, dict):
        raise CheckpointError(f"{path}: msgpack holds a {type(tree).__name__}, not a checkpoint dict")
    return tree


def _train_state(contents: dict[str, Any], source: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split decoded msgpack contents into (params tree, other state)."""
    version = contents.get("version", 0)
    if "optimizer" in contents:
        if not isinstance(version, (int, np.integer)) or version < 2:
            raise CheckpointError(f"{source}: T5X checkpoint version {version!r} is older than 2 and not supported")
        contents = contents["optimizer"]
    if "target" in contents:
        return contents["target"], contents.get("state") or {}
    if "params" in contents and isinstance(contents["params"], dict):  # a flax TrainState
        return contents["params"], {k: v for k, v in contents.items() if k != "params"}
    if {"encoder", "decoder"} & set(contents) or "token_embedder" in contents:  # bare parameters
        return contents, {}
    raise CheckpointError(
        f"{source}: no parameters found; expected 'optimizer/target', 'target', 'params' or a bare "
        f"parameter tree, got top-level keys {sorted(contents)}"
    )


def _is_spec(node: Any) -> bool:
    return isinstance(node, dict) and "driver" in node and ("kvstore" in node or "path" in node)


def _zarr_location(leaf: Any) -> str | None:
    """The array's name relative to the checkpoint directory, or None for an inline array."""
    if isinstance(leaf, str) and leaf.startswith(PLACEHOLDER_PREFIXES):
        prefix = next(p for p in PLACEHOLDER_PREFIXES if leaf.startswith(p))
        return leaf[len(prefix):]
    if _is_spec(leaf):
        kvstore = leaf.get("kvstore")
        rel = kvstore.get("path") if isinstance(kvstore, dict) else None
        rel = rel or leaf.get("path")  # TensorStore < 0.1.14 kept the path at the top
        if not isinstance(rel, str):
            raise CheckpointError(f"TensorStore spec without a path: {leaf}")
        # T5X may record where it wrote the array (an absolute path or URL on its machine): only the
        # array's name counts, and it is read from the checkpoint directory, never from that location.
        return rel.rstrip("/").rsplit("/", 1)[-1] if (Path(rel).is_absolute() or "://" in rel) else rel
    return None


def _inside(ckpt_dir: Path, name: str, param: str) -> Path:
    """`ckpt_dir / name`, refused when it leads out of the checkpoint directory (`..`, links)."""
    target = ckpt_dir / name
    if ".." in Path(name).parts or not target.resolve().is_relative_to(ckpt_dir.resolve()):
        raise CheckpointError(f"{ckpt_dir}: parameter {param}: its array path {name!r} leads outside the checkpoint "
                              "directory; flanx reads T5X arrays only from inside it (the checkpoint file is "
                              "damaged or was crafted)")
    return target


def _open_spec(ckpt_dir: Path, name: str, param: str) -> dict[str, Any]:
    plain = _inside(ckpt_dir, name, param)
    if (plain / ".zarray").is_file():
        return {"driver": "zarr", "kvstore": {"driver": "file", "path": str(plain)}}
    if (ckpt_dir / "manifest.ocdbt").is_file():
        return {"driver": "zarr", "kvstore": {"driver": "ocdbt", "base": f"file://{ckpt_dir}", "path": name}}
    raise CheckpointError(
        f"{ckpt_dir}: parameter {param}: its zarr array directory {name}/ (with .zarray) is missing; the checkpoint "
        "was copied incompletely - copy every subdirectory of the checkpoint directory"
    )


def _read_zarr_arrays(ckpt_dir: Path, names: dict[str, str]) -> dict[str, np.ndarray]:
    """Read `{param path: zarr name}` concurrently with TensorStore."""
    import tensorstore as ts

    specs = {path: _open_spec(ckpt_dir, name, path) for path, name in names.items()}
    opened = {path: ts.open(spec, open=True, read=True) for path, spec in specs.items()}
    stores = {}
    for path, future in opened.items():
        try:
            stores[path] = future.result()
        except Exception as e:
            raise CheckpointError(f"{ckpt_dir}: parameter {path} ({names[path]}/): cannot open its zarr array: {e}") from e
    reads = {path: store.read() for path, store in stores.items()}
    arrays = {}
    for path, future in reads.items():
        try:
            arrays[path] = np.asarray(future.result())
        except Exception as e:
            raise CheckpointError(
                f"{ckpt_dir}: parameter {path} ({names[path]}/): its zarr chunks are unreadable "
                f"(corrupt or truncated): {e}"
            ) from e
    return arrays


def _as_step(value: Any) -> int | None:
    if value is None:
        return None
    try:
        return int(np.asarray(value).reshape(()))
    except (TypeError, ValueError):
        return None


def import_t5x(path: str | os.PathLike) -> tuple[dict[str, Any], int | None]:
    """Load the parameters of a T5X checkpoint -> (params as numpy, step or None).

    `path` may be a model dir (the latest `checkpoint_<step>/` is used), a
    `checkpoint_<step>/` dir, or a msgpack file. Optimizer state is not read.
    """
    ckpt_file = find_checkpoint_file(path)
    ckpt_dir = ckpt_file.parent
    target, state = _train_state(read_msgpack(ckpt_file), ckpt_file)
    if not isinstance(target, dict) or not target:
        raise CheckpointError(f"{ckpt_file}: the parameter tree (target) is empty")

    flat = flatten(target, is_leaf=_is_spec)
    inline, external = {}, {}
    for path_, leaf in flat.items():
        location = _zarr_location(leaf)
        if location is not None:
            external[path_] = location
        elif isinstance(leaf, (np.ndarray, np.generic)):
            inline[path_] = np.asarray(leaf)
        else:
            raise CheckpointError(f"{ckpt_file}: parameter {path_} holds a {type(leaf).__name__} ({leaf!r:.80}), not an array")
    arrays = {**inline, **_read_zarr_arrays(ckpt_dir, external)}
    step = _as_step(state.get("step")) if isinstance(state, dict) else None
    if step is None:
        m = _STEP_DIR.match(ckpt_dir.name)
        step = int(m.group(1)) if m else None
    return unflatten({p: arrays[p] for p in flat}), step


# ----------------------------------------------------------------------------- writing


def _chunk_shape(shape: tuple[int, ...], itemsize: int) -> list[int]:
    """Largest chunk that divides `shape` and stays under 64 MiB (shrinking the largest dim first)."""
    chunk = list(shape)
    limit = max(1, _CHUNK_BYTES // itemsize)
    while int(np.prod(chunk)) > limit:
        i = int(np.argmax(chunk))
        size = chunk[i]
        chunk[i] = next(d for d in range(size // 2, 0, -1) if shape[i] % d == 0)
    return [max(1, c) for c in chunk]


def export_t5x(params: dict[str, Any], out_dir: str | os.PathLike, step: int = 0, *, inline: bool = False) -> Path:
    """Write `params` as T5X checkpoint `out_dir/checkpoint_<step>/`; return that directory.

    Arrays go to gzip zarr directories referenced by TensorStore spec dicts (as
    T5X writes them), or inline into the msgpack with `inline=True`. The step
    directory is written under a temporary name and renamed when complete.
    """
    import tensorstore as ts
    from flax import serialization

    final = Path(out_dir) / f"checkpoint_{int(step)}"
    if final.exists():
        raise CheckpointError(f"{final} already exists; remove it or export to another directory/step")
    tmp = final.with_name(f"{final.name}.tmp-{os.getpid()}-{int(time.time())}")
    tmp.mkdir(parents=True)
    try:
        flat = {path: np.asarray(value) for path, value in flatten(params).items()}
        written, pending = {}, []
        for path, array in flat.items():
            if inline or array.ndim == 0:
                written[path] = array
                continue
            name = "target." + path.replace("/", ".")
            metadata = {"compressor": {"id": "gzip"}, "shape": list(array.shape),
                        "chunks": _chunk_shape(array.shape, array.dtype.itemsize)}
            dtype = array.dtype.name
            store = ts.open({"driver": "zarr", "kvstore": {"driver": "file", "path": str(tmp / name)},
                             "metadata": metadata}, create=True, dtype=dtype).result()
            pending.append(store.write(array))
            written[path] = {"driver": "zarr", "dtype": dtype, "kvstore": {"driver": "file", "path": name},
                             "metadata": metadata}
        for future in pending:
            future.result()
        state = {"step": np.asarray(step, np.int32), "param_states": {}}
        blob = serialization.msgpack_serialize({"version": VERSION, "optimizer": {"target": unflatten(written), "state": state}})
        (tmp / CHECKPOINT_FILE).write_bytes(blob)
        tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final
