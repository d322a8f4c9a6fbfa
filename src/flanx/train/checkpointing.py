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
checkpoint (and is deleted when the next manager opens the directory).
"""
from __future__ import annotations

import json
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

ITEMS = ("params", "opt_state", "train", "data")


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


class Checkpointer:
    """Save and restore `TrainState` plus data-iterator state under `directory`."""

    def __init__(self, directory: str, max_to_keep: int | None = None, async_save: bool = True):
        self.directory = os.path.abspath(directory) if "://" not in directory else directory
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, enable_async_checkpointing=async_save, create=True,
            cleanup_tmp_directories=True)
        self._mngr = ocp.CheckpointManager(self.directory, options=options, item_names=ITEMS)

    def latest_step(self) -> int | None:
        """The newest *committed* checkpoint's step (temporary directories never count)."""
        return self._mngr.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self._mngr.all_steps())

    def save(self, state, data_state: Any = None, extra: dict | None = None) -> None:
        """Start saving `state` at its step (asynchronous; every process must call this)."""
        step = int(_local_value(state.step))
        train = {"step": step, "rng": _local_value(state.rng).tolist(), **(extra or {})}
        data = {str(i): s for i, s in enumerate(gather_json(data_state))}
        self._mngr.save(step, args=ocp.args.Composite(
            params=ocp.args.StandardSave(state.params),
            opt_state=ocp.args.StandardSave(state.opt_state),
            train=ocp.args.JsonSave(train),
            data=ocp.args.JsonSave(data),
        ), force=True)

    def restore(self, step: int, abstract_state) -> tuple[Any, Any, dict]:
        """(state, this process's data state, train metadata) at `step`.

        `abstract_state` is a `TrainState` of `jax.ShapeDtypeStruct`s carrying
        the target shardings; arrays are restored directly into that layout.
        """
        out = self._mngr.restore(step, args=ocp.args.Composite(
            params=ocp.args.StandardRestore(abstract_state.params),
            opt_state=ocp.args.StandardRestore(abstract_state.opt_state),
            train=ocp.args.JsonRestore(),
            data=ocp.args.JsonRestore(),
        ))
        train = dict(out["train"])
        rng = np.asarray(train["rng"], dtype=np.uint32)
        state = abstract_state.replace(
            step=_put_like(np.int32(train["step"]), abstract_state.step),
            params=out["params"], opt_state=out["opt_state"],
            rng=_put_like(rng, abstract_state.rng))
        data = (out["data"] or {}).get(str(jax.process_index()))
        return state, data, train

    def wait(self) -> None:
        """Block until pending asynchronous saves are committed."""
        self._mngr.wait_until_finished()

    def close(self) -> None:
        self._mngr.wait_until_finished()
        self._mngr.close()


def _put_like(value: np.ndarray, like) -> jax.Array:
    sharding = getattr(like, "sharding", None)
    if sharding is None:
        return jax.numpy.asarray(value)
    return jax.make_array_from_callback(np.shape(value), sharding, lambda idx: value[idx])
