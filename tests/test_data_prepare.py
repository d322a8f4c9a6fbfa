"""`flanx data prepare`: manifest, failures, manual downloads and offline reuse, with TFDS and HF mocked."""
from __future__ import annotations

import hashlib
import io
import json
import re
import shutil
import sys
import types

import pytest

from flanx import cli, paths
from flanx.data import card_files
from flanx.data import prepare, sources

TEMPLATES = [{"input": f"t{i} {{a}}", "target": "{b}"} for i in range(10)]


def _card(name, source, splits):
    return {"name": name, "source": source, "splits": splits, "fields": {"a": "a", "b": "b"},
            "templates": TEMPLATES, "clusters": ["entailment"]}


@pytest.fixture
def collection(tmp_path, monkeypatch):
    """A tasks/ folder with collection `demo`: four datasets, two cards sharing one builder."""
    import yaml
    tasks_dir = tmp_path / "tasks"
    (tasks_dir / "demo").mkdir(parents=True)
    shutil.copy(paths.tasks_dir() / "clusters.yaml", tasks_dir / "clusters.yaml")
    cards = [
        _card("good_a", {"type": "tfds", "name": "fake_good/a:1.0.0"},
              {"train": {"name": "train[:-2]", "num_examples": 8}, "validation": {"name": "train[-2:]"}}),
        _card("good_b", {"type": "tfds", "name": "fake_good/a:1.0.0"},
              {"train": {"name": "train[:5]", "num_examples": 6}}),  # recorded count disagrees: a note
        _card("offline", {"type": "tfds", "name": "fake_net:2.0.0"}, {"train": {"name": "train"}}),
        _card("manual", {"type": "tfds", "name": "fake_manual:1.0.0"}, {"train": {"name": "train"}}),
        _card("hub", {"type": "hf", "path": "org/hub", "name": "cfg"},
              {"train": {"name": "train[:-1]", "num_examples": 2}, "validation": {"name": "train[-1:]"}}),
    ]
    for card in cards:
        (tasks_dir / "demo" / f"{card['name']}.yaml").write_text(yaml.safe_dump(card), encoding="utf-8")
    monkeypatch.setattr(paths, "tasks_dir", lambda: tasks_dir)
    monkeypatch.delenv(paths.TFDS_DIR_ENV, raising=False)
    return tasks_dir


class FakeSplits(dict):
    def __getitem__(self, key):
        m = re.fullmatch(r"(\w+)(?:\[(-?\d*):(-?\d*)\])?", key)
        n = dict.__getitem__(self, m.group(1)).num_examples
        if m.group(2) is not None:
            a, b = (int(x) if x else None for x in m.group(2, 3))
            n = len(range(n)[a:b])
        return types.SimpleNamespace(num_examples=n)


class FakeBuilder:
    downloads: list = []

    def __init__(self, spec, data_dir):
        self.spec, self.data_dir = spec, data_dir
        self.name, _, version = spec.partition(":")
        self.version = version
        manual = "Register at example.org and download story.zip."
        self.MANUAL_DOWNLOAD_INSTRUCTIONS = manual if "manual" in spec else ""
        self.info = types.SimpleNamespace(splits=FakeSplits(train=types.SimpleNamespace(num_examples=10)))

    def download_and_prepare(self, download_dir):
        FakeBuilder.downloads.append(self.spec)
        if "net" in self.spec:
            raise ConnectionError("Failed to resolve 'data.example.org'")
        if "manual" in self.spec:
            raise AssertionError(f"Manual directory {download_dir}/manual does not exist")
        folder = paths.Path(self.data_dir) / self.name / self.version
        folder.mkdir(parents=True)
        (folder / "dataset_info.json").write_text('{"name": "fake"}', encoding="utf-8")
        (folder / "fake-train.tfrecord-00000-of-00001").write_bytes(b"rows" * 100)


def fake_tfds():
    def builder(spec, data_dir=None, try_gcs=False):
        if spec.startswith("nope"):
            raise ValueError(f"Dataset {spec} not found")
        return FakeBuilder(spec, data_dir)
    return types.SimpleNamespace(builder=builder)


class FakeHubDataset(dict):
    def save_to_disk(self, path):
        out = paths.Path(path)
        out.mkdir(parents=True)
        (out / "train.arrow").write_bytes(json.dumps(self["train"]).encode())


def fake_datasets():
    def load_dataset(path, name=None, cache_dir=None):
        assert (path, name) == ("org/hub", "cfg")
        return FakeHubDataset(train=[{"a": f"x{i}", "b": f"y{i}"} for i in range(3)])

    def load_from_disk(path):
        return {"train": json.loads((paths.Path(path) / "train.arrow").read_bytes())}
    return types.SimpleNamespace(load_dataset=load_dataset, load_from_disk=load_from_disk)


def test_prepare_writes_the_manifest_names_failures_and_manual_steps(collection, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(prepare, "_tfds", fake_tfds)
    monkeypatch.setattr(prepare, "_datasets", fake_datasets)
    FakeBuilder.downloads = []
    out_dir = tmp_path / "prepared"
    code = cli.main(["data", "prepare", "--collection", "demo", "--data_dir", str(out_dir)])
    out = capsys.readouterr().out
    assert code == 1  # two datasets could not be prepared
    manifest = json.loads((out_dir / "manifest.json").read_text())
    by_name = {d["name"]: d for d in manifest["datasets"]}
    assert set(by_name) == {"fake_good/a:1.0.0", "fake_net:2.0.0", "fake_manual:1.0.0", "org/hub/cfg"}
    good = by_name["fake_good/a:1.0.0"]
    assert good["status"] == "ok" and good["cards"] == ["good_a", "good_b"] and good["version"] == "1.0.0"
    assert good["splits"] == {"train": 10}
    assert good["card_splits"]["good_a"] == {"train": {"name": "train[:-2]", "rows": 8, "recorded": 8},
                                             "validation": {"name": "train[-2:]", "rows": 2, "recorded": None}}
    data_file = out_dir / "fake_good/a/1.0.0/fake-train.tfrecord-00000-of-00001"
    assert good["files"]["fake_good/a/1.0.0/fake-train.tfrecord-00000-of-00001"] == \
        hashlib.sha256(data_file.read_bytes()).hexdigest()
    assert by_name["fake_net:2.0.0"]["status"] == "failed"
    assert "ConnectionError: Failed to resolve" in by_name["fake_net:2.0.0"]["error"]
    manual = by_name["fake_manual:1.0.0"]
    assert manual["status"] == "manual" and str(out_dir / "downloads" / "manual") in manual["manual_step"]
    assert "story.zip" in manual["manual_step"]
    hub = by_name["org/hub/cfg"]
    assert hub["status"] == "ok" and hub["splits"] == {"train": 3}
    assert hub["card_splits"]["hub"] == {"train": {"name": "train[:-1]", "rows": 2, "recorded": 2},
                                         "validation": {"name": "train[-1:]", "rows": 1, "recorded": None}}
    # The report: what failed and why, the manual step, a recorded count that disagrees, how to read DIR.
    assert "2 of 4 datasets prepared" in out
    assert re.search(r"FAILED fake_net:2.0.0 \(offline\): ConnectionError", out)
    assert re.search(r"MANUAL fake_manual:1.0.0 \(manual\): .*downloads/manual", out)
    assert "note: good_b train (train[:5]) has 5 rows; the card records 6" in out
    assert f"export {paths.TFDS_DIR_ENV}={out_dir}" in out

    # Prepared data is found offline; a second run downloads only what is still missing.
    monkeypatch.setenv(paths.TFDS_DIR_ENV, str(out_dir))
    cards = card_files.load_card_files(card_files.collection_card_files("demo"))
    assert sources.data_available(cards["good_a"]) and sources.data_available(cards["hub"])
    assert not sources.data_available(cards["offline"]) and not sources.data_available(cards["manual"])
    monkeypatch.setitem(sys.modules, "datasets", fake_datasets())  # the saved copy is read, sliced, offline
    assert sources.load_rows(cards["hub"], "validation") == [{"a": "x2", "b": "y2"}]
    assert [r["a"] for r in sources.load_rows(cards["hub"], "train")] == ["x0", "x1"]
    FakeBuilder.downloads = []
    prepare.prepare("demo", out_dir, out=io.StringIO())
    assert sorted(FakeBuilder.downloads) == ["fake_manual:1.0.0", "fake_net:2.0.0"]


def test_prepare_only_some_cards_and_unknown_names(collection, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(prepare, "_tfds", fake_tfds)
    entries = prepare.prepare("demo", tmp_path / "p", only=["good_b"], checksums=False, out=io.StringIO())
    assert [(e.name, e.cards, e.status) for e in entries] == [("fake_good/a:1.0.0", ["good_b"], "ok")]
    assert set(entries[0].files.values()) == {None}
    with pytest.raises(SystemExit, match="has no card.*nope"):
        prepare.prepare("demo", tmp_path / "p", only=["nope"])
    with pytest.raises(SystemExit, match="no task cards in collection 'absent'"):
        prepare.prepare("absent", tmp_path / "p")
