"""`flanx.lock`: one writer per run directory, on local disks and gs://; stale locks are taken over."""
from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time

import pytest
from helpers import hold_lock_in_child

from flanx import lock as lock_lib
from flanx.lock import DirLock, LockError


def _holder(path) -> dict:
    return json.loads(open(path).read())


def _race(n: int, acquire) -> list:
    """Run `acquire` in `n` threads released at once: each one's lock, or its LockError."""
    barrier, outcomes = threading.Barrier(n), []

    def contend():
        barrier.wait()
        try:
            outcomes.append(acquire())
        except LockError as e:
            outcomes.append(e)

    threads = [threading.Thread(target=contend) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return outcomes


def test_second_writer_fails_naming_host_pid_and_start_time(tmp_path):
    directory = tmp_path / "run"
    child = hold_lock_in_child(directory, heartbeat_s=0.2)
    try:
        started = time.strftime("%Y-%m-%d %H:%M", time.localtime(_holder(directory / "flanx.lock")["started"]))
        with pytest.raises(LockError) as e:
            DirLock(str(directory)).acquire()
        message = str(e.value)
        assert f"host {socket.gethostname()}, pid {child.pid}, started {started}" in message
        assert f"{directory} is in use by another run" in message and "flanx.lock" in message
        assert _holder(directory / "flanx.lock")["pid"] == child.pid  # the holder's lock is untouched
    finally:
        child.kill()
        child.wait()


def test_lock_of_a_killed_run_on_this_host_is_taken_over(tmp_path, caplog):
    directory = tmp_path / "run"
    child = hold_lock_in_child(directory, heartbeat_s=0.2)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert _holder(directory / "flanx.lock")["pid"] == child.pid  # left behind by the killed run
    lock = DirLock(str(directory)).acquire()
    try:
        assert _holder(lock.path)["pid"] == os.getpid()
    finally:
        lock.release()
    assert not (directory / "flanx.lock").exists()


def _foreign_lock(path, heartbeat_age: float):
    now = time.time()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"host": "other-host", "pid": 4242, "pid_ns": "pid:[1]", "pid_start": "1",
                                "started": now - 3600, "heartbeat": now - heartbeat_age, "token": "theirs",
                                "command": "flanx train"}))


def test_lock_from_another_host_counts_until_its_heartbeat_expires(tmp_path):
    path = tmp_path / "run" / "flanx.lock"
    _foreign_lock(path, heartbeat_age=5)
    with pytest.raises(LockError, match=r"host other-host, pid 4242, .*last heartbeat 5 s ago.*heartbeat is 60 s old"):
        DirLock(str(path.parent), stale_after_s=60).acquire()
    _foreign_lock(path, heartbeat_age=61)
    lock = DirLock(str(path.parent), stale_after_s=60).acquire()
    assert _holder(path)["token"] == lock.holder.token
    lock.release()


def test_unreadable_lock_is_stale(tmp_path):
    (tmp_path / "flanx.lock").write_text("{not json")
    DirLock(str(tmp_path)).acquire().release()


def test_of_racing_writers_exactly_one_wins(tmp_path):
    directory, n = str(tmp_path / "run"), 8
    outcomes = _race(n, lambda: DirLock(directory).acquire())
    winners = [o for o in outcomes if isinstance(o, DirLock)]
    assert len(winners) == 1 and len(outcomes) == n
    assert _holder(winners[0].path)["token"] == winners[0].holder.token
    winners[0].release()


def test_heartbeat_refreshes_and_a_taken_over_lock_is_noticed(tmp_path):
    lock = DirLock(str(tmp_path), heartbeat_s=0.05).acquire()
    first = _holder(lock.path)["heartbeat"]
    time.sleep(0.3)
    assert _holder(lock.path)["heartbeat"] > first
    lock.check()
    _foreign_lock(tmp_path / "flanx.lock", heartbeat_age=0)  # another run took it (e.g. judged it stale)
    deadline = time.time() + 5
    while lock.lost is None and time.time() < deadline:
        time.sleep(0.05)
    with pytest.raises(LockError, match=r"taken over by host other-host, pid 4242"):
        lock.check()
    lock.release()
    assert _holder(tmp_path / "flanx.lock")["token"] == "theirs"  # release never removes another run's lock


def test_failed_start_removes_the_directories_the_lock_created(tmp_path):
    directory = tmp_path / "a" / "b" / "run"
    lock = DirLock(str(directory)).acquire()
    assert lock.created_dir and directory.is_dir()
    lock.release(remove_created_dir=True)
    assert not (tmp_path / "a").exists()
    (tmp_path / "kept").mkdir()
    lock = DirLock(str(tmp_path / "kept")).acquire()
    lock.release(remove_created_dir=True)
    assert (tmp_path / "kept").is_dir()  # it existed before


def test_lock_can_be_switched_off(tmp_path, monkeypatch):
    monkeypatch.setenv("FLANX_LOCK", "off")
    lock = DirLock(str(tmp_path / "run")).acquire()
    assert not (tmp_path / "run" / "flanx.lock").exists()
    lock.release()


# ------------------------------------------------------------------ object stores


class PreconditionFailed(Exception):
    pass


class NotFound(Exception):
    pass


class FakeBlob:
    def __init__(self, bucket, name):
        self.bucket, self.name = bucket, name
        self.generation = bucket.objects.get(name, (None, None))[1]

    def upload_from_string(self, text, if_generation_match=None):
        with self.bucket.mutex:
            current = self.bucket.objects.get(self.name, (None, 0))[1]
            if if_generation_match is not None and current != if_generation_match:
                raise PreconditionFailed(self.name)
            self.bucket.generation += 1
            self.bucket.objects[self.name] = (text, self.bucket.generation)

    def download_as_text(self, if_generation_match=None):
        with self.bucket.mutex:
            if self.name not in self.bucket.objects:
                raise NotFound(self.name)
            text, generation = self.bucket.objects[self.name]
            if if_generation_match is not None and generation != if_generation_match:
                raise PreconditionFailed(self.name)
            return text

    def delete(self, if_generation_match=None):
        with self.bucket.mutex:
            if self.name not in self.bucket.objects:
                raise NotFound(self.name)
            if if_generation_match is not None and self.bucket.objects[self.name][1] != if_generation_match:
                raise PreconditionFailed(self.name)
            del self.bucket.objects[self.name]


class FakeBucket:
    """Google Cloud Storage's object generations and preconditions, in memory."""

    def __init__(self):
        self.objects, self.generation, self.mutex = {}, 0, threading.Lock()

    def blob(self, name):
        return FakeBlob(self, name)

    def get_blob(self, name):
        return FakeBlob(self, name) if name in self.objects else None


class FakeClient:
    def __init__(self):
        self.buckets = {}

    def bucket(self, name):
        return self.buckets.setdefault(name, FakeBucket())


def test_gcs_lock_uses_generation_preconditions():
    client = FakeClient()
    first = DirLock("gs://bkt/runs/a", gcs_client=client, heartbeat_s=0.05).acquire()
    objects = client.bucket("bkt").objects
    assert json.loads(objects["runs/a/flanx.lock"][0])["pid"] == os.getpid()
    with pytest.raises(LockError, match=r"gs://bkt/runs/a is in use by another run \(host "):
        DirLock("gs://bkt/runs/a", gcs_client=client).acquire()  # live: same host and pid
    generation = objects["runs/a/flanx.lock"][1]
    time.sleep(0.3)
    assert objects["runs/a/flanx.lock"][1] > generation  # heartbeats are conditional rewrites
    first.release()
    assert "runs/a/flanx.lock" not in objects
    # An expired heartbeat from another host is taken over; the old holder then notices.
    FakeBlob(client.bucket("bkt"), "runs/b/flanx.lock").upload_from_string(json.dumps(
        {"host": "far", "pid": 1, "started": 0, "heartbeat": time.time() - 999, "token": "old"}))
    lock = DirLock("gs://bkt/runs/b", gcs_client=client, stale_after_s=60).acquire()
    assert json.loads(objects["runs/b/flanx.lock"][0])["token"] == lock.holder.token
    lock.release()


def test_gcs_racing_writers_exactly_one_wins():
    client, n = FakeClient(), 6
    outcomes = _race(n, lambda: DirLock("gs://bkt/run", gcs_client=client).acquire())
    winners = [o for o in outcomes if isinstance(o, DirLock)]
    assert len(winners) == 1
    winners[0].release()


def test_directories_that_cannot_be_locked_are_refused_clearly(monkeypatch):
    with pytest.raises(LockError, match=r"cannot lock s3://b/run: .*local disks and gs:// only.*FLANX_LOCK=off"):
        DirLock("s3://b/run").acquire()
    import builtins
    real_import = builtins.__import__

    def no_gcs(name, *args, **kwargs):
        if name.startswith("google.cloud"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)
    monkeypatch.setattr(builtins, "__import__", no_gcs)
    with pytest.raises(LockError, match=r"cannot lock gs://b/run: .*pip install google-cloud-storage.*FLANX_LOCK=off"):
        DirLock("gs://b/run").acquire()


@pytest.mark.skipif(lock_lib._process_start(os.getpid()) is None, reason="no /proc: process start times unknown")
def test_pid_reuse_is_not_mistaken_for_the_holder(tmp_path):
    """A lock whose pid now belongs to a newer process (another start time) is stale."""
    path = tmp_path / "flanx.lock"
    now = time.time()
    path.write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "pid_ns": lock_lib._pid_namespace(),
                                "pid_start": "not-" + str(lock_lib._process_start(os.getpid())),
                                "started": now, "heartbeat": now, "token": "old"}))
    DirLock(str(tmp_path)).acquire().release()
