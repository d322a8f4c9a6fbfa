"""Run outputs: which process writes them, and files local or `gs://` (any `scheme://` etils understands).

- `is_primary()`, `primary_only(fn)`, `barrier(name)`: process 0 writes a
  run's operative gin, metrics and TensorBoard events; the others wait at a
  barrier where they read what it wrote (orbax checkpoints are the exception:
  every process saves its own shards);
- `is_remote(path)`: a `scheme://` path, which plain `open` cannot handle;
- `open_output(path, mode)`: open a run output (MODEL_DIR/..., an eval or
  inference output dir) for writing, creating parent folders;
- `read_output(path)`: the text of such a file, None when it does not exist;
- `staging_path(final)` and `publish(tmp, final)`: build a directory (or file)
  under a temporary name beside `final`, then move it into place, so an
  interrupted write never leaves something that looks complete.

Standard library only at import (etils, which ships with orbax, for remote
paths and jax for the process questions are imported when used), so the
launchers can use it on a machine with no accelerator stack.
"""
from __future__ import annotations

import functools
import os
import re
import shutil
import time
from pathlib import Path


def is_primary() -> bool:
    """True on process 0, the only process that writes run outputs (operative gin, metrics, TensorBoard)."""
    import jax
    return jax.process_index() == 0


def primary_only(fn):
    """Decorator: run `fn` on process 0; other processes get None."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return fn(*args, **kwargs) if is_primary() else None
    return wrapper


def barrier(name: str) -> None:
    """Wait until every process reaches `name` (e.g. after process 0 wrote a file others read)."""
    import jax
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(name)


def is_remote(path: str) -> bool:
    """`gs://...` and other `scheme://` paths, which plain `open` cannot write."""
    return re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", str(path)) is not None


def open_output(path: str, mode: str = "w"):
    """Open a file under MODEL_DIR for writing, local or `gs://` (parent folders are created)."""
    if is_remote(path):
        from etils import epath  # ships with orbax; gs:// needs gcsfs or TensorFlow's file system
        p = epath.Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        return p.open(mode)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    return open(path, mode)


def read_output(path: str) -> str | None:
    """The text of a file under MODEL_DIR, local or `gs://`; None when it does not exist."""
    if is_remote(path):
        from etils import epath
        p = epath.Path(path)
        return p.read_text() if p.exists() else None
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return f.read()


def staging_path(final: Path) -> Path:
    """A fresh temporary name beside local `final` (same folder, so `publish` is a rename)."""
    return final.with_name(f"{final.name}.tmp-{os.getpid()}-{int(time.time())}")


def publish(tmp: Path, final: Path) -> None:
    """Move the finished local `tmp` to `final`; an old `final` is removed only after that."""
    old = None
    if final.exists():
        old = final.with_name(f"{final.name}.old-{os.getpid()}-{int(time.time())}")
        final.rename(old)
    tmp.rename(final)
    if old is not None:
        shutil.rmtree(old) if old.is_dir() else old.unlink()
