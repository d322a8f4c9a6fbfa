"""What a training run does to MODEL_DIR before its first step: own it, check it, and only then write.

    guard = claim(model_dir)                          # the lock: a second writer stops here
    resume = restore_newest(ckpt, abstract_state, model_config, cfg)   # check, restore, fall back
    open_for_writing(ckpt, resume)                    # the first writes to MODEL_DIR

- `claim`: process 0 takes `MODEL_DIR/flanx.lock` (`flanx.lock.DirLock`); every
  process learns the outcome, so all fail together when another run holds it.
  `guard.release(failed=True)` after a failed start also removes a MODEL_DIR
  the claim created, so a failed start leaves no stub behind.
- `restore_newest`: newest step first, the run's model config and parameter
  shapes are checked against the checkpoint (the recorded `flanx.json` and the
  stored array metadata) before anything is written: a mismatch is an
  `IncompatibleCheckpoint` naming the field or parameter, both values and the
  fix. A step that cannot be read (`DamagedStep`: missing item, truncated array
  or JSON file) is reported with a warning and the previous step is used.
- `open_for_writing`: checks that `checkpoints/` is writable, moves damaged
  steps aside (`<step>.damaged`, never deleted), drops metrics rows beyond the
  step the run continues from, and opens the checkpoint manager for saving.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any, Mapping

import jax

from flanx import io
from flanx.checkpoints.tree import CheckpointError
from flanx.lock import DirLock, LockError
from flanx.train.checkpointing import Checkpointer, CheckpointSaveError, DamagedStep, check_writable, gather_json

logger = logging.getLogger("flanx")
# T5Config fields a resumed run may change: they alter neither parameters nor their meaning.
RUNTIME_FIELDS = ("dropout_rate", "dtype", "remat_policy")
_SHOWN = 5


class IncompatibleCheckpoint(CheckpointError):
    """MODEL_DIR's checkpoints were written by a different model or optimizer than this run's."""


@dataclasses.dataclass
class Resume:
    step: int
    state: Any
    data_state: Any
    meta: dict
    damaged: list                       # DamagedStep of each newer step that could not be read


class Guard:
    """The run's hold on MODEL_DIR (process 0 holds the lock; other processes hold None)."""

    def __init__(self, lock: DirLock | None):
        self.lock = lock

    def check(self) -> None:
        if self.lock is not None:
            self.lock.check()

    def release(self, failed: bool = False) -> None:
        if self.lock is not None:
            self.lock.release(remove_created_dir=failed)
            self.lock = None


def claim(model_dir: str) -> Guard:
    """Lock MODEL_DIR for this run (process 0); LockError on every process when another run holds it."""
    lock, error = None, None
    if jax.process_index() == 0:
        try:
            lock = DirLock(model_dir).acquire()
        except LockError as e:
            error = str(e)
    errors = gather_json(error) if jax.process_count() > 1 else [error]
    if errors[0]:
        raise LockError(errors[0])
    return Guard(lock)


# ------------------------------------------------------------------ compatibility with the checkpoint


def _read_json(path: str) -> dict | None:
    try:
        text = io.read_output(path)
        data = json.loads(text) if text else None
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _flat_shapes(tree, prefix: str = "") -> dict[str, tuple]:
    out = {}
    for key, value in tree.items():
        path = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            out.update(_flat_shapes(value, path))
        else:
            out[path] = tuple(getattr(value, "shape", ()) or ())
    return out


def config_differences(model_dir: str, model_config) -> list[str]:
    """`T5Config.FIELD: A in the checkpoint (flanx.json), B in this run` for each architecture field that differs."""
    path = os.path.join(model_dir, "flanx.json")
    recorded = (_read_json(path) or {}).get("config")
    if not isinstance(recorded, dict):
        return []
    current = json.loads(json.dumps(dataclasses.asdict(model_config)))  # tuples -> lists, as recorded
    diffs = []
    for name in sorted(set(recorded) | set(current)):
        if name in RUNTIME_FIELDS or recorded.get(name) == current.get(name):
            continue
        note = " (the vocabulary size)" if name == "vocab_size" else ""
        diffs.append(f"T5Config.{name}{note}: {recorded.get(name)!r} in the checkpoint ({path}), "
                     f"{current.get(name)!r} in this run")
    return diffs


def _is_array(x) -> bool:
    return hasattr(x, "shape") and hasattr(x, "dtype")


def shape_differences(step: int, stored, expected) -> list[str]:
    """Parameter paths whose stored shape (array metadata) differs from this run's, with both shapes."""
    have, want = _flat_shapes(stored), _flat_shapes(expected)
    diffs = [f"parameter {p}: checkpoint step {step} has shape {have[p]}, this run expects {want[p]}"
             for p in sorted(set(have) & set(want)) if have[p] != want[p]]
    diffs += [f"parameter {p}: in this run, not in checkpoint step {step}" for p in sorted(set(want) - set(have))]
    diffs += [f"parameter {p}: in checkpoint step {step}, not in this run" for p in sorted(set(have) - set(want))]
    return diffs


def check_compatible(model_dir: str, step: int, stored: dict, abstract_state, model_config, cfg) -> None:
    """IncompatibleCheckpoint unless the run's model and optimizer state match checkpoint `step`."""
    diffs = config_differences(model_dir, model_config)
    shapes = shape_differences(step, stored["params"], abstract_state.params)
    opt_have = sorted(str(tuple(x.shape)) for x in jax.tree.leaves(stored["opt_state"], is_leaf=_is_array))
    opt_want = sorted(str(tuple(x.shape)) for x in jax.tree.leaves(abstract_state.opt_state, is_leaf=_is_array))
    if opt_have != opt_want and not shapes:
        recorded = (_read_json(os.path.join(model_dir, "train_config.json")) or {}).get("optimizer") or {}
        current = dataclasses.asdict(cfg.optimizer)
        changed = [f"OptimizerConfig.{k}: {recorded[k]!r} in the checkpoint's run, {current[k]!r} in this run"
                   for k in sorted(current) if k in recorded and recorded[k] != current[k]]
        shapes = changed or [f"optimizer state: checkpoint step {step} holds {len(opt_have)} arrays, this run's "
                             f"optimizer has {len(opt_want)}"]
    problems = diffs + shapes
    if problems:
        shown = problems[:_SHOWN] + ([f"... and {len(problems) - _SHOWN} more"] if len(problems) > _SHOWN else [])
        raise IncompatibleCheckpoint(
            f"MODEL_DIR {model_dir} holds checkpoints of a different model or optimizer than this run's, so the "
            f"run cannot resume there: {'; '.join(shown)}. Resume with the settings the checkpoints were written "
            f"with (recorded in {model_dir}/flanx.json, train_config.json and config.gin), or train this "
            "configuration in a new MODEL_DIR. "
            "Nothing in MODEL_DIR was changed.")


# ------------------------------------------------------------------ restore with fallback


def _agree(ok: bool) -> bool:
    """True when every process succeeded (a collective in multi-process runs)."""
    return all(gather_json(bool(ok))) if jax.process_count() > 1 else ok


def restore_newest(ckpt: Checkpointer, abstract_state, model_config, cfg) -> Resume:
    """Restore the newest readable checkpoint, after checking it fits the run; warn about damaged newer steps."""
    damaged: list[DamagedStep] = []
    checked = False
    for step in reversed(ckpt.all_steps()):
        problem = None
        try:
            stored = ckpt.array_metadata(step)
            if not checked:  # the newest step with readable metadata decides compatibility
                check_compatible(os.path.dirname(ckpt.directory), step, stored, abstract_state, model_config, cfg)
                checked = True
            state, data_state, meta = ckpt.restore(step, abstract_state)
        except DamagedStep as e:
            problem = e
        if not _agree(problem is None):
            problem = problem or DamagedStep(step, "?", os.path.join(ckpt.directory, str(step)),
                                             "unreadable on another process")
        if problem is not None:
            logger.warning("%s; trying the previous checkpoint", problem)
            damaged.append(problem)
            continue
        if damaged:
            logger.warning("resuming from checkpoint step %d, not from the damaged newer step(s) %s (moved aside "
                           "to <step>.damaged in %s, not deleted)", step, ", ".join(str(d.step) for d in damaged),
                           ckpt.directory)
        return Resume(step, state, data_state, meta, damaged)
    details = "; ".join(str(d) for d in damaged)
    raise CheckpointError(
        f"{ckpt.directory} holds no readable checkpoint ({details}). Nothing was changed. Restore the files "
        "from a copy, or move the damaged step directories away to start the run from scratch.")


def open_for_writing(ckpt: Checkpointer, resume: Resume | None) -> None:
    """The run's first writes: a writability probe, damaged steps moved aside, the manager reopened.
    Process 0 writes; every process learns whether that worked, so all stop together if not."""
    error = None
    if jax.process_index() == 0:
        try:
            check_writable(ckpt.directory)
            for problem in (resume.damaged if resume else []):
                logger.warning("moved damaged checkpoint step %d to %s", problem.step, ckpt.move_aside(problem.step))
        except (CheckpointSaveError, OSError) as e:
            if jax.process_count() == 1:
                raise
            error = str(e)
    errors = gather_json(error) if jax.process_count() > 1 else [None]
    if errors[0]:
        raise CheckpointSaveError(errors[0])
    ckpt.reopen()
