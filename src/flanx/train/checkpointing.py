"""Training checkpoints: orbax `CheckpointManager` in `MODEL_DIR/checkpoints`.

A checkpoint is one directory per step, `checkpoints/<step>/`, with items

    params/     the parameter tree (orbax PyTree; what `flanx.checkpoints.load_params` reads)
    opt_state/  the optimizer state
    train/      JSON: step, RNG key, the run's start step
    data/       JSON: each process's data-iterator state, by process index

so a restart continues with the same parameters, optimizer moments, dropout
keys and input batches as a run that never stopped. Saves are asynchronous;
orbax writes into `<step>.orbax-checkpoint-tmp-*` and renames on commit, so a
process killed mid-save leaves a temporary directory that is never listed as a
checkpoint (and is deleted when the next run opens the directory for writing).

Failures are loud and early:
- `Checkpointer(..., create=False)` only reads (no directory is created, no
  leftover removed) until `reopen()`, so a run can check a MODEL_DIR before
  touching it;
- `restore` reads the items one by one and raises `DamagedStep` (step, item,
  file) for an unreadable one; `move_aside(step)` renames a damaged step to
  `<step>.damaged` (never deleted);
- every save first checks that the directory is writable (`check_writable`),
  `raise_if_save_failed()` (called after every training step) and `finish()`
  raise `CheckpointSaveError` with the cause as soon as an asynchronous save
  has failed; `close()` never raises, so it cannot hide the error in flight.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import uuid
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from flanx.checkpoints.damage import DamagedStep, chain_text, file_in, first_line, is_damage
from flanx.errors import FlanxError

logger = logging.getLogger("flanx")
ITEMS = ("params", "opt_state", "train", "data")
_ARRAY_ITEMS = ("params", "opt_state")
class CheckpointSaveError(FlanxError):
    """Saving a checkpoint failed; training stops at once."""


def _cause(exc: BaseException) -> str:
    """The operating system's reason (e.g. "No space left on device") and file, else the first error line."""
    text = chain_text(exc)
    reason = re.search(r"([A-Za-z][\w ,'-]*?) \[os_error_code='?(\d+)", text) or \
        re.search(r"\[Errno (\d+)\] ([^:\n]+)", text)
    if reason is None:
        return first_line(exc)
    strerror = reason.group(1) if not reason.group(1).isdigit() else reason.group(2)
    where = re.search(r'(?:Failed writing|Error writing local file|local file): "([^"]+)"', text) or \
        re.search(r"\[Errno \d+\] [^:\n]+: '([^']+)'", text)
    return strerror.strip() + (f" (writing {where.group(1)})" if where else "")


def _local_value(x) -> np.ndarray:
    """A replicated (possibly multi-host) array's value, read from this process's shard."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        return np.asarray(x.addressable_shards[0].data)
    return np.asarray(x)


def gather_json(obj: Any) -> list:
    """Every process's JSON-able `obj`, in process order (a collective: all processes call it)."""
    if jax.process_count() == 1:
        return [obj]
    from jax.experimental import multihost_utils

    raw = np.frombuffer(json.dumps(obj).encode(), dtype=np.uint8)
    lengths = multihost_utils.process_allgather(np.array([raw.size], np.int32))
    padded = np.zeros(int(np.max(lengths)), np.uint8)
    padded[:raw.size] = raw
    allbytes = multihost_utils.process_allgather(padded)
    return [json.loads(bytes(allbytes[i, :int(lengths[i][0])]).decode()) for i in range(len(lengths))]


def check_writable(directory: str) -> None:
    """Create `directory` if needed, then write and remove a probe in it; CheckpointSaveError if that fails."""
    probe = f".flanx-write-check-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        if "://" in directory:
            from etils import epath
            path = epath.Path(directory)
            path.mkdir(parents=True, exist_ok=True)
            (path / probe).write_text("ok")
            (path / probe).unlink()
            return
        if os.path.exists(directory) and not os.path.isdir(directory):
            raise NotADirectoryError(20, "Not a directory", directory)
        os.makedirs(directory, exist_ok=True)
        os.mkdir(os.path.join(directory, probe))  # orbax's first act of a save: a temporary step directory
        with open(os.path.join(directory, probe, "probe"), "w") as f:
            f.write("ok")
        os.unlink(os.path.join(directory, probe, "probe"))
        os.rmdir(os.path.join(directory, probe))
    except OSError as e:
        raise CheckpointSaveError(
            f"cannot write checkpoints to {directory}: {e.strerror or e} ({e.filename or directory}). "
            "Fix its permissions or free space, or choose another MODEL_DIR.") from e


def _handlers() -> dict:
    return {"params": ocp.StandardCheckpointHandler(), "opt_state": ocp.StandardCheckpointHandler(),
            "train": ocp.JsonCheckpointHandler(), "data": ocp.JsonCheckpointHandler()}


class Checkpointer:
    """Save and restore `TrainState` plus data-iterator state under `directory`."""

    def __init__(self, directory: str, max_to_keep: int | None = None, async_save: bool = True, create: bool = True):
        self.directory = os.path.abspath(directory) if "://" not in directory else directory
        self._max_to_keep, self._async_save = max_to_keep, async_save
        self._pending: int | None = None  # step of an asynchronous save not yet known to be committed
        self._open(create)

    def _open(self, create: bool) -> None:
        options = ocp.CheckpointManagerOptions(
            max_to_keep=self._max_to_keep, enable_async_checkpointing=self._async_save, create=create,
            cleanup_tmp_directories=create)
        self._mngr = ocp.CheckpointManager(self.directory, options=options, item_handlers=_handlers())

    def reopen(self) -> None:
        """Open for writing (after the read-only checks): creates the directory, removes dead temporaries."""
        self._mngr.close()
        self._open(create=True)

    def latest_step(self) -> int | None:
        """The newest *committed* checkpoint's step (temporary directories never count)."""
        return self._mngr.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self._mngr.all_steps())

    def _item_dir(self, step: int, item: str) -> str:
        return os.path.join(self.directory, str(step), item)

    def _damaged(self, step: int, item: str, exc: BaseException) -> DamagedStep:
        text = chain_text(exc)
        if isinstance(exc, KeyError) and item in str(exc):
            return DamagedStep(step, item, self._item_dir(step, item), "missing")
        default = self._item_dir(step, item) + ("/metadata" if item in ("train", "data") else "")
        return DamagedStep(step, item, file_in(text, default), first_line(exc))

    def array_metadata(self, step: int) -> dict[str, Any]:
        """{"params": tree, "opt_state": tree} of the arrays' stored metadata (shape, dtype) at `step`."""
        from etils import epath

        out = {}
        for item in _ARRAY_ITEMS:
            path = epath.Path(self._item_dir(step, item))
            if not path.exists():
                raise DamagedStep(step, item, str(path), "missing")
            handler = ocp.StandardCheckpointHandler()
            try:
                tree = handler.metadata(path)
            except Exception as e:  # noqa: BLE001 - classified: damaged files vs anything else
                if not is_damage(e):
                    raise
                raise DamagedStep(step, item, file_in(chain_text(e), str(path / "_METADATA")), first_line(e)) from e
            finally:
                handler.close()
            out[item] = getattr(tree, "tree", tree)
        return out

    def save(self, state, data_state: Any = None, extra: dict | None = None) -> None:
        """Start saving `state` at its step (asynchronous; every process must call this)."""
        if self._pending is not None:
            self.finish()  # orbax would wait for it anyway; this way its failure is named
        problems = gather_json(_probe_error(self.directory) or _space_error(self.directory, state))
        if any(problems):
            raise CheckpointSaveError(next(p for p in problems if p))
        step = int(_local_value(state.step))
        train = {"step": step, "rng": _local_value(state.rng).tolist(), **(extra or {})}
        data = {str(i): s for i, s in enumerate(gather_json(data_state))}
        self._mngr.save(step, args=ocp.args.Composite(
            params=ocp.args.StandardSave(state.params),
            opt_state=ocp.args.StandardSave(state.opt_state),
            train=ocp.args.JsonSave(train),
            data=ocp.args.JsonSave(data),
        ), force=True)
        self._pending = step

    def _restore_item(self, step: int, item: str, arg):
        try:
            return self._mngr.restore(step, args=ocp.args.Composite(**{item: arg}))[item]
        except Exception as e:  # noqa: BLE001 - classified: damaged files vs anything else
            if not is_damage(e):
                raise
            raise self._damaged(step, item, e) from e

    def restore(self, step: int, abstract_state) -> tuple[Any, Any, dict]:
        """(state, this process's data state, train metadata) at `step`; `DamagedStep` names a bad item.

        `abstract_state` is a `TrainState` of `jax.ShapeDtypeStruct`s carrying
        the target shardings; arrays are restored directly into that layout.
        """
        train = self._restore_item(step, "train", ocp.args.JsonRestore())
        data = self._restore_item(step, "data", ocp.args.JsonRestore())
        if not isinstance(train, dict) or "step" not in train or "rng" not in train:
            raise DamagedStep(step, "train", self._item_dir(step, "train") + "/metadata", "no step or rng recorded")
        params = self._restore_item(step, "params", ocp.args.StandardRestore(abstract_state.params))
        opt_state = self._restore_item(step, "opt_state", ocp.args.StandardRestore(abstract_state.opt_state))
        rng = np.asarray(train["rng"], dtype=np.uint32)
        state = abstract_state.replace(
            step=_put_like(np.int32(train["step"]), abstract_state.step),
            params=params, opt_state=opt_state, rng=_put_like(rng, abstract_state.rng))
        return state, (data or {}).get(str(jax.process_index())), dict(train)

    def move_aside(self, step: int) -> str:
        """Rename damaged `<step>/` to `<step>.damaged` (or `.damaged-N`) beside it; never deletes it."""
        from etils import epath

        source = epath.Path(self.directory) / str(step)
        target = epath.Path(self.directory) / f"{step}.damaged"
        n = 1
        while target.exists():
            n += 1
            target = epath.Path(self.directory) / f"{step}.damaged-{n}"
        source.rename(target)
        return str(target)

    def raise_if_save_failed(self) -> None:
        """Raise CheckpointSaveError if the last asynchronous save has finished with an error (never blocks)."""
        if self._pending is None or self._mngr.is_saving_in_progress():
            return
        self.finish()

    def finish(self) -> None:
        """Wait for the pending save to commit; CheckpointSaveError with the cause if it failed."""
        step, self._pending = self._pending, None
        try:
            self._mngr.wait_until_finished()
        except Exception as e:  # noqa: BLE001 - orbax raises what its writer threads raised
            good = [s for s in self.all_steps() if s != step]
            raise CheckpointSaveError(
                f"saving the checkpoint of step {step} to {self.directory} failed: {_cause(e)}. Training "
                f"stopped; the last complete checkpoint is {f'step {good[-1]}' if good else 'none'}. Fix the cause "
                "(disk space, permissions) and run the same command again to resume.") from e

    def wait(self) -> None:
        """Block until pending asynchronous saves are committed."""
        self.finish()

    def close(self) -> None:
        """Wait for a pending save and close; never raises (errors surface in `finish` / `raise_if_save_failed`)."""
        for fn in (self._mngr.wait_until_finished, self._mngr.close):
            try:
                fn()
            except Exception as e:  # noqa: BLE001 - already reported, or the run is failing for another reason
                logger.debug("closing the checkpoint manager: %s", e)
        self._pending = None


def _probe_error(directory: str) -> str | None:
    try:
        check_writable(directory)
        return None
    except CheckpointSaveError as e:
        return str(e)


def _space_error(directory: str, state) -> str | None:
    """A message when a local disk has less free space than the checkpoint needs (process 0 checks)."""
    if "://" in directory or jax.process_index() != 0:
        return None
    need = sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize
               for x in jax.tree.leaves((state.params, state.opt_state)))
    need = int(need * 1.03) + (512 << 10)  # orbax's metadata files: ~2% over the raw bytes, ~0.3 MiB at least
    free = shutil.disk_usage(directory).free
    if free >= need:
        return None
    return (f"not enough free space to save the checkpoint of step {int(_local_value(state.step))} in {directory}: "
            f"it needs about {need / 2**20:.1f} MiB, {free / 2**20:.1f} MiB are free. Training stopped before "
            "writing; free disk space (or lower KEEP_CHECKPOINTS) and run the same command again to resume.")


def _put_like(value: np.ndarray, like) -> jax.Array:
    sharding = getattr(like, "sharding", None)
    if sharding is None:
        return jax.numpy.asarray(value)
    return jax.make_array_from_callback(np.shape(value), sharding, lambda idx: value[idx])
