"""One writer per run directory: the `flanx.lock` file and its heartbeat.

A training run (its MODEL_DIR), a study (its out_dir) and `flanx eval` /
`flanx infer` (their output dirs) take `DirLock(directory).acquire()` before
writing anything there, and `release()` when done. A second writer fails at
start with `LockError` naming the holder's host, pid and start time.

The lock is a small JSON file, `<directory>/flanx.lock`:
`{"host", "pid", "pid_ns", "pid_start", "started", "heartbeat", "token", "command"}`.
A daemon thread rewrites `heartbeat` every `heartbeat_s` seconds. A lock is
*stale*, and is taken over with a warning, when

- it was written on this host (same host name and pid namespace) and its
  process is gone (or the pid now belongs to a newer process), or
- its heartbeat is older than `stale_after_s` (a run killed on another host).

Creating the lock is create-if-absent, so of two runs starting together one
wins: on a local (or NFS) disk by hard-linking a complete file into place; on
`gs://` by an upload with the generation precondition `ifGenerationMatch=0`
(google-cloud-storage), heartbeats and take-overs with preconditions on the
generation read. Other `scheme://` directories, and `gs://` without
google-cloud-storage, are refused with the fix; `FLANX_LOCK=off` runs without
a lock (then you must make sure only one run writes the directory).
Standard library only at import.
"""
from __future__ import annotations

import json
import logging
import os
import re
import socket
import sys
import threading
import time
import uuid
from dataclasses import asdict, dataclass

from flanx.errors import FlanxError

logger = logging.getLogger("flanx")

LOCK_FILE = "flanx.lock"
LOCK_ENV = "FLANX_LOCK"          # "off": no lock (one writer is then the user's job)
HEARTBEAT_S = 30.0
STALE_AFTER_S = 180.0


class LockError(FlanxError):
    """The directory is locked by another live run, or cannot be locked safely."""


@dataclass
class Holder:
    host: str
    pid: int
    pid_ns: str | None
    pid_start: str | None
    started: float
    heartbeat: float
    token: str
    command: str

    @classmethod
    def parse(cls, text: str | None) -> "Holder | None":
        try:
            data = json.loads(text or "")
            return cls(**{k: data.get(k) for k in cls.__dataclass_fields__})
        except (ValueError, TypeError):
            return None

    def describe(self, now: float | None = None) -> str:
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started or 0))
        age = (now or time.time()) - float(self.heartbeat or 0)
        return f"host {self.host}, pid {self.pid}, started {started}, last heartbeat {age:.0f} s ago"


def _pid_namespace() -> str | None:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def _process_start(pid: int) -> str | None:
    """The kernel's start time of `pid` (field 22 of /proc/PID/stat), to tell a reused pid apart."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _pid_alive(pid: int, recorded_start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    start = _process_start(pid)
    return recorded_start is None or start is None or start == recorded_start


# ------------------------------------------------------------------ stores: create-if-absent files


class _LocalStore:
    """The lock file on a POSIX file system (local disk, NFS): link-based exclusive create."""

    def __init__(self, path: str):
        self.path = path

    def create(self, text: str) -> bool:
        tmp = f"{self.path}.{uuid.uuid4().hex}.tmp"
        with open(tmp, "w") as f:
            f.write(text)
        try:
            os.link(tmp, self.path)  # atomic, fails if the lock exists, and the file is complete when it appears
            return True
        except FileExistsError:
            return False
        except OSError:  # a file system without hard links: exclusive create, then write
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "w") as f:
                f.write(text)
            return True
        finally:
            os.unlink(tmp)

    def read(self) -> str | None:
        try:
            with open(self.path) as f:
                return f.read()
        except FileNotFoundError:
            return None

    def replace(self, text: str, token: str) -> bool:
        current = Holder.parse(self.read())
        if current is None or current.token != token:
            return False
        tmp = f"{self.path}.{uuid.uuid4().hex}.tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, self.path)
        return True

    def delete(self, token: str | None) -> bool:
        """Remove the lock if it still holds `token` (None: an unreadable lock)."""
        aside = f"{self.path}.{uuid.uuid4().hex}.breaking"
        try:
            os.rename(self.path, aside)  # atomic: of two removers only one gets the file
        except FileNotFoundError:
            return False
        with open(aside) as f:
            holder = Holder.parse(f.read())
        if (holder.token if holder else None) == token:
            os.unlink(aside)
            return True
        try:  # someone else's fresh lock: put it back
            os.link(aside, self.path)
        except FileExistsError:
            pass
        os.unlink(aside)
        return False


def _status(exc: BaseException) -> str:
    return type(exc).__name__


class _GcsStore:
    """The lock object on Google Cloud Storage: generation preconditions make every change conditional."""

    def __init__(self, url: str, client=None):
        m = re.match(r"^gs://([^/]+)/(.+)$", url)
        if not m:
            raise LockError(f"{url}: not a gs://BUCKET/PATH location")
        if client is None:
            try:
                from google.cloud import storage
            except ImportError:
                raise LockError(
                    f"cannot lock {url.rsplit('/', 1)[0]}: a gs:// run directory is locked with object "
                    f"generation preconditions, which needs google-cloud-storage (pip install "
                    f"google-cloud-storage). Or set {LOCK_ENV}=off to run without a lock (then make sure only "
                    "one run writes this directory).") from None
            client = storage.Client()
        self.path = url
        self.blob_name = m.group(2)
        self.bucket = client.bucket(m.group(1))

    def create(self, text: str) -> bool:
        try:
            self.bucket.blob(self.blob_name).upload_from_string(text, if_generation_match=0)
            return True
        except Exception as e:  # noqa: BLE001 - google.api_core.exceptions.PreconditionFailed
            if _status(e) == "PreconditionFailed":
                return False
            raise

    def _read(self) -> tuple[str | None, int | None]:
        for _ in range(5):
            blob = self.bucket.get_blob(self.blob_name)
            if blob is None:
                return None, None
            try:
                return blob.download_as_text(if_generation_match=blob.generation), blob.generation
            except Exception as e:  # noqa: BLE001 - changed or removed between the two calls: read again
                if _status(e) not in ("PreconditionFailed", "NotFound"):
                    raise
        return None, None

    def read(self) -> str | None:
        return self._read()[0]

    def replace(self, text: str, token: str) -> bool:
        current, generation = self._read()
        holder = Holder.parse(current)
        if holder is None or holder.token != token:
            return False
        try:
            self.bucket.blob(self.blob_name).upload_from_string(text, if_generation_match=generation)
            return True
        except Exception as e:  # noqa: BLE001
            if _status(e) == "PreconditionFailed":
                return False
            raise

    def delete(self, token: str | None) -> bool:
        current, generation = self._read()
        holder = Holder.parse(current)
        if generation is None or (holder.token if holder else None) != token:
            return False
        try:
            self.bucket.blob(self.blob_name).delete(if_generation_match=generation)
            return True
        except Exception as e:  # noqa: BLE001
            if _status(e) in ("PreconditionFailed", "NotFound"):
                return False
            raise


def _store(path: str, gcs_client=None):
    scheme = re.match(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://", path)
    if scheme is None:
        return _LocalStore(path)
    if scheme.group(1) == "gs":
        return _GcsStore(path, gcs_client)
    raise LockError(f"cannot lock {path.rsplit('/', 1)[0]}: flanx locks run directories on local disks and gs:// "
                    f"only ({scheme.group(1)}:// has no create-if-absent that flanx knows). Set {LOCK_ENV}=off to run "
                    "without a lock (then make sure only one run writes this directory).")


# ------------------------------------------------------------------ the lock


class DirLock:
    """`DirLock(directory).acquire()` ... `release()`; also a context manager."""

    def __init__(self, directory: str, *, heartbeat_s: float = HEARTBEAT_S, stale_after_s: float | None = None,
                 gcs_client=None):
        self.directory = str(directory)
        self.path = f"{self.directory.rstrip('/')}/{LOCK_FILE}"
        self.heartbeat_s = heartbeat_s
        env_stale = os.environ.get("FLANX_LOCK_STALE_S")
        self.stale_after_s = stale_after_s if stale_after_s is not None else float(env_stale or STALE_AFTER_S)
        self.disabled = os.environ.get(LOCK_ENV, "").lower() in ("off", "0", "false", "no")
        self._gcs_client = gcs_client
        self._store = None
        self.holder: Holder | None = None
        self._created: list[str] = []
        self.lost: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- staleness
    def stale_reason(self, holder: Holder | None, now: float) -> str | None:
        if holder is None:
            return "the lock file is unreadable"
        if holder.host == socket.gethostname() and holder.pid_ns == _pid_namespace():
            if not _pid_alive(int(holder.pid), holder.pid_start):
                return f"process {holder.pid} on this host has exited"
            return None
        age = now - float(holder.heartbeat or 0)
        if age > self.stale_after_s:
            return f"its heartbeat is {age:.0f} s old (more than {self.stale_after_s:.0f} s)"
        return None

    def _new_holder(self) -> Holder:
        now = time.time()
        return Holder(host=socket.gethostname(), pid=os.getpid(), pid_ns=_pid_namespace(),
                      pid_start=_process_start(os.getpid()), started=now, heartbeat=now,
                      token=uuid.uuid4().hex, command=" ".join(sys.argv)[:300])

    @staticmethod
    def _text(holder: Holder) -> str:
        return json.dumps(asdict(holder), indent=1) + "\n"

    def acquire(self) -> "DirLock":
        if self.disabled:
            logger.warning("%s=off: %s is not locked; make sure no other run writes it", LOCK_ENV, self.directory)
            return self
        self._store = _store(self.path, self._gcs_client)
        if isinstance(self._store, _LocalStore) and not os.path.isdir(self.directory):
            missing, parent = [], os.path.abspath(self.directory)
            while not os.path.exists(parent):
                missing.append(parent)
                parent = os.path.dirname(parent)
            os.makedirs(self.directory, exist_ok=True)  # another starter may create it at the same time
            self._created = missing  # deepest first: what a failed start removes again
        mine = self._new_holder()
        for _ in range(10):
            if self._store.create(self._text(mine)):
                self.holder = mine
                self._start_heartbeat()
                return self
            text = self._store.read()
            if text is None:
                continue  # released meanwhile
            other = Holder.parse(text)
            now = time.time()
            reason = self.stale_reason(other, now)
            if reason is None:
                self._undo_created_dir()
                raise LockError(
                    f"{self.directory} is in use by another run ({other.describe(now)}); two runs writing one "
                    "directory overwrite each other's checkpoints and metrics. Wait for that run to finish or "
                    "stop it, or use another directory. A dead run's lock is taken over by itself (on this host at "
                    f"once, from another host once its heartbeat is {self.stale_after_s:.0f} s old); or delete "
                    f"{self.path}.")
            logger.warning("taking over the stale lock %s (%s): %s", self.path,
                           other.describe(now) if other else "unreadable", reason)
            self._store.delete(other.token if other else None)
        self._undo_created_dir()
        raise LockError(f"could not lock {self.directory}: other runs keep taking {self.path}; start one run at a time")

    @property
    def created_dir(self) -> bool:
        """Whether `acquire` created the directory (a failed start removes it again)."""
        return bool(self._created)

    def _undo_created_dir(self) -> None:
        for path in self._created:
            try:
                os.rmdir(path)  # only if empty
            except OSError:
                break
        self._created = []

    def _start_heartbeat(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name="flanx-lock-heartbeat", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            self.holder.heartbeat = time.time()
            try:
                if not self._store.replace(self._text(self.holder), self.holder.token):
                    other = Holder.parse(self._store.read())
                    self.lost = (f"the lock {self.path} was removed or taken over"
                                 + (f" by {other.describe()}" if other else ""))
                    logger.error("%s; this run must stop writing %s", self.lost, self.directory)
                    return
            except Exception as e:  # noqa: BLE001 - a flaky file system: try again at the next beat
                logger.warning("could not refresh the lock %s (%s); retrying", self.path, e)

    def check(self) -> None:
        """Raise LockError if another run took the lock over (this run must stop writing)."""
        if self.lost:
            raise LockError(f"{self.lost}; stopped so that two runs do not write {self.directory}. "
                            "Find the other run and let only one of them continue.")

    def release(self, remove_created_dir: bool = False) -> None:
        """Remove the lock; with `remove_created_dir`, also the directory `acquire` created, if still empty."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self.holder is not None and self._store is not None:
            try:
                self._store.delete(self.holder.token)
            except Exception as e:  # noqa: BLE001 - never mask the run's own outcome
                logger.warning("could not remove the lock %s (%s); delete it by hand", self.path, e)
            self.holder = None
        if remove_created_dir:
            self._undo_created_dir()

    def __enter__(self) -> "DirLock":
        return self.acquire()

    def __exit__(self, exc_type, exc, tb) -> None:
        self.release()
