"""The native flanx checkpoint format: Orbax parameters plus a JSON sidecar.

A flanx parameter checkpoint is a directory:

    OUT/
      flanx.json   {"format": "flanx", "version": 1, "config": {T5Config fields},
                    "step": int | null, "metadata": {...}}
      params/      an Orbax PyTree checkpoint of the plain parameter dict

`save_params` writes it under a temporary name and renames it when complete
(`flanx.io.publish`); `write_sidecar` writes `flanx.json` alone (the trainer
puts one in MODEL_DIR, local or `gs://`).
`load_native` reads it back, and also reads what the trainer's
`orbax.checkpoint.CheckpointManager` writes (`MODEL_DIR/checkpoints/<step>/params/`):
pass the model dir, its `checkpoints/` dir, one `<step>/` dir or the `params/`
item itself. Arrays are restored as host numpy arrays whatever sharding they
were saved with.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import types
import typing
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from flanx import io
from flanx.checkpoints.damage import DamagedStep, chain_text, file_in, first_line, is_damage
from flanx.checkpoints.tree import CheckpointError, to_numpy

logger = logging.getLogger("flanx")

SIDECAR = "flanx.json"
PARAMS_ITEM = "params"
FORMAT_VERSION = 1
_ORBAX_MARKERS = ("_METADATA", "manifest.ocdbt", "_CHECKPOINT_METADATA", "checkpoint")


class NativeCheckpoint(NamedTuple):
    params: dict[str, Any]
    config: Any  # flanx.models.T5Config, or None when the checkpoint carries no config
    step: int | None
    metadata: dict[str, Any]


# ----------------------------------------------------------------------------- config <-> JSON


def config_to_dict(config: Any) -> dict[str, Any]:
    if not dataclasses.is_dataclass(config):
        raise TypeError(f"expected a T5Config dataclass, got {type(config).__name__}")
    return dataclasses.asdict(config)


def _build(cls: Any, value: Any, where: str) -> Any:
    """Rebuild a value of annotated type `cls` from its JSON form (dataclasses, tuples, Optional)."""
    origin, args = typing.get_origin(cls), typing.get_args(cls)
    if value is None:
        return None
    if origin in (typing.Union, types.UnionType):
        options = [a for a in args if a is not type(None)]
        chosen = next((a for a in options if dataclasses.is_dataclass(a) and isinstance(value, dict)), options[0])
        return _build(chosen, value, where)
    if dataclasses.is_dataclass(cls) and isinstance(value, dict):
        hints = typing.get_type_hints(cls)
        unknown = sorted(set(value) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise CheckpointError(f"{where}: unknown {cls.__name__} fields {unknown}; written by a newer flanx?")
        return cls(**{k: _build(hints.get(k, Any), v, f"{where}.{k}") for k, v in value.items()})
    if isinstance(value, list):  # frozen configs keep sequences as tuples
        if origin is tuple and args and args[-1] is not Ellipsis and len(args) == len(value):
            return tuple(_build(a, v, where) for a, v in zip(args, value))
        inner = args[0] if origin in (tuple, list) and args else Any
        items = [_build(inner, v, where) for v in value]
        return items if origin is list else tuple(items)
    return value


def config_from_dict(data: dict[str, Any], source: str = "config") -> Any:
    """Rebuild a `flanx.models.T5Config` from `config_to_dict` output."""
    from flanx.models import T5Config

    return _build(T5Config, data, source)


# ----------------------------------------------------------------------------- save


def _prepare_target(path: Path, overwrite: bool) -> None:
    if path.exists() and (path.is_file() or any(path.iterdir())):
        if not overwrite:
            raise CheckpointError(f"{path} already exists and is not empty; choose another path or pass overwrite=True")


def write_sidecar(directory: str | os.PathLike, config: Any, *, step: int | None = None,
                  metadata: dict[str, Any] | None = None) -> str:
    """Write `directory/flanx.json` (format, version, config, step, metadata), local or `gs://`."""
    sidecar = {"format": "flanx", "version": FORMAT_VERSION, "config": config_to_dict(config),
               "step": None if step is None else int(step), "metadata": dict(metadata or {})}
    path = os.path.join(str(directory), SIDECAR)
    with io.open_output(path) as f:
        f.write(json.dumps(sidecar, indent=2, sort_keys=True, default=_json_default) + "\n")
    return path


def save_params(path: str | os.PathLike, params: dict[str, Any], config: Any, metadata: dict[str, Any] | None = None,
                *, step: int | None = None, overwrite: bool = False) -> Path:
    """Write `params` (+ `config`, `step`, `metadata`) as a flanx checkpoint directory; return its path."""
    import orbax.checkpoint as ocp

    final = Path(path).absolute()
    _prepare_target(final, overwrite)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = io.staging_path(final)
    try:
        tmp.mkdir()
        checkpointer = ocp.PyTreeCheckpointer()
        checkpointer.save(tmp / PARAMS_ITEM, to_numpy(params))
        checkpointer.close()
        write_sidecar(tmp, config, step=step, metadata=metadata)
        io.publish(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"metadata value {value!r} is not JSON serialisable")


# ----------------------------------------------------------------------------- load


def is_orbax_tree(path: Path) -> bool:
    """True for a directory Orbax wrote one PyTree into."""
    return path.is_dir() and any((path / m).is_file() for m in ("_METADATA", "manifest.ocdbt")) \
        and not (path / PARAMS_ITEM).is_dir()


_STEP_MARKERS = (PARAMS_ITEM, "opt_state", "train", "_CHECKPOINT_METADATA")


def _numeric_steps(directory: Path) -> dict[int, Path]:
    """{step: dir} of a CheckpointManager directory's committed steps (`<step>/`, complete or damaged)."""
    return {int(c.name): c for c in directory.iterdir() if c.is_dir() and c.name.isdigit()
            and any((c / m).exists() for m in _STEP_MARKERS)} if directory.is_dir() else {}


def candidates(path: str | os.PathLike) -> list[tuple[Path, int | None, list[Path]]]:
    """[(the Orbax params directory, the step if known, directories to look in for flanx.json)], the
    newest first: several only for a CheckpointManager directory (MODEL_DIR or its checkpoints/)."""
    path = Path(path).absolute()
    if not path.exists():
        raise CheckpointError(f"flanx checkpoint {path} does not exist")
    if (path / SIDECAR).is_file() and is_orbax_tree(path / PARAMS_ITEM):
        return [(path / PARAMS_ITEM, None, [path])]
    if is_orbax_tree(path):  # a params item (or any bare Orbax PyTree)
        step = int(path.parent.name) if path.parent.name.isdigit() else None
        return [(path, step, [path, path.parent, path.parent.parent, path.parent.parent.parent])]
    if is_orbax_tree(path / PARAMS_ITEM) or (path.name.isdigit() and (path / "_CHECKPOINT_METADATA").exists()):
        step = int(path.name) if path.name.isdigit() else None  # one CheckpointManager step
        return [(path / PARAMS_ITEM, step, [path, path.parent, path.parent.parent])]
    for manager_dir in (path, path / "checkpoints"):
        steps = _numeric_steps(manager_dir)
        if steps:
            return [(steps[s] / PARAMS_ITEM, s, [steps[s], manager_dir, manager_dir.parent])
                    for s in sorted(steps, reverse=True)]
    raise CheckpointError(
        f"{path} is not a flanx checkpoint: looked for {SIDECAR} + {PARAMS_ITEM}/, an Orbax PyTree "
        f"(_METADATA), a step dir with {PARAMS_ITEM}/, and a CheckpointManager dir (<step>/{PARAMS_ITEM}/, "
        "also under checkpoints/)"
    )


def resolve(path: str | os.PathLike) -> tuple[Path, int | None, list[Path]]:
    """-> (the Orbax params directory, the step if known, directories to look in for flanx.json)."""
    return candidates(path)[0]


def _read_sidecar(dirs: list[Path]) -> dict[str, Any] | None:
    for directory in dirs:
        file = directory / SIDECAR
        if file.is_file():
            try:
                data = json.loads(file.read_text())
            except json.JSONDecodeError as e:
                raise CheckpointError(f"{file}: not valid JSON ({e}); the file is corrupt") from e
            if not isinstance(data, dict) or data.get("format") != "flanx":
                raise CheckpointError(f"{file}: not a flanx checkpoint description (missing \"format\": \"flanx\")")
            if data.get("version", 0) > FORMAT_VERSION:
                raise CheckpointError(f"{file}: format version {data['version']} is newer than this flanx supports")
            data["_file"] = str(file)
            return data
    return None


def restore_tree(params_dir: Path, step: int | None = None) -> dict[str, Any]:
    """Restore an Orbax PyTree directory into host numpy arrays (`DamagedStep` when its files are damaged)."""
    import jax
    import orbax.checkpoint as ocp
    from etils import epath

    handler = ocp.PyTreeCheckpointHandler()
    try:
        metadata = handler.metadata(epath.Path(params_dir))
        tree = getattr(metadata, "tree", metadata)
        restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
        restored = handler.restore(epath.Path(params_dir), args=ocp.args.PyTreeRestore(restore_args=restore_args))
    except CheckpointError:
        raise
    except Exception as e:  # Orbax/TensorStore raise many types for damaged files
        if step is not None and is_damage(e):
            raise DamagedStep(step, PARAMS_ITEM, file_in(chain_text(e), str(params_dir)), first_line(e)) from e
        raise CheckpointError(f"{params_dir}: cannot restore the Orbax parameter checkpoint ({type(e).__name__}: {e})") from e
    finally:
        handler.close()
    return to_numpy(restored)


def _restore_step(params_dir: Path, step: int | None) -> dict[str, Any]:
    if step is not None and not is_orbax_tree(params_dir):
        reason = "missing" if not params_dir.exists() else "no Orbax metadata (_METADATA) in it"
        raise DamagedStep(step, PARAMS_ITEM, str(params_dir), reason)
    params = restore_tree(params_dir, step)
    if not params:
        raise CheckpointError(f"{params_dir}: the checkpoint holds no parameters")
    return params


def load_native(path: str | os.PathLike) -> NativeCheckpoint:
    """Read a flanx checkpoint (or a trainer CheckpointManager's `params` item) -> NativeCheckpoint.

    Given a CheckpointManager directory, the newest step is read; a damaged one (`DamagedStep`: params
    missing or unreadable) is reported with a warning and the previous step is used, as the trainer does.
    """
    found = candidates(path)
    damaged = []
    for params_dir, step, sidecar_dirs in found:
        try:
            params = _restore_step(params_dir, step)
        except DamagedStep as e:
            if len(found) == 1:
                raise
            logger.warning("%s; trying the previous checkpoint", e)
            damaged.append(str(e))
            continue
        if damaged:
            logger.warning("loaded checkpoint step %s, not the damaged newer step(s) (%s)", step, "; ".join(damaged))
        break
    else:
        raise CheckpointError(f"{path} holds no readable checkpoint: {'; '.join(damaged)}")
    sidecar = _read_sidecar(sidecar_dirs)
    config = None
    metadata: dict[str, Any] = {}
    if sidecar is not None:
        if isinstance(sidecar.get("config"), dict):
            config = config_from_dict(sidecar["config"], source=sidecar["_file"])
        metadata = dict(sidecar.get("metadata") or {})
        if step is None and sidecar.get("step") is not None:
            step = int(sidecar["step"])
    return NativeCheckpoint(params, config, step, metadata)
