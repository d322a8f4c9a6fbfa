"""flanx.io: which process writes, local/remote paths, reading outputs back, publishing finished directories."""
from __future__ import annotations

from flanx import io


def test_remote_paths():
    assert io.is_remote("gs://b/x") and not io.is_remote("/tmp/gs:/x")
    assert io.is_remote("s3+x.y-z://b") and not io.is_remote("relative/path")


def test_primary_helpers_single_process(tmp_path):
    assert io.is_primary()
    assert io.primary_only(lambda x: x + 1)(1) == 2
    io.barrier("noop")  # one process: returns at once
    with io.open_output(str(tmp_path / "a" / "b.txt")) as f:
        f.write("x")
    assert (tmp_path / "a" / "b.txt").read_text() == "x"
    assert io.read_output(str(tmp_path / "a" / "b.txt")) == "x"
    assert io.read_output(str(tmp_path / "a" / "missing.txt")) is None


def test_publish_replaces_only_a_finished_directory(tmp_path):
    final = tmp_path / "ckpt"
    final.mkdir()
    (final / "old.txt").write_text("old")
    tmp = io.staging_path(final)
    assert tmp.parent == final.parent and tmp.name.startswith("ckpt.tmp-") and not tmp.exists()
    tmp.mkdir()
    (tmp / "new.txt").write_text("new")
    io.publish(tmp, final)
    assert sorted(p.name for p in final.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # neither the staging nor the old copy is left

